"""Option declarations: the one place each option's type, default, help, choices and range live.

A config field is declared with :func:`option`::

    lr: float = option(0.05, "Base learning rate.", panel="Optimisation", low=0, low_open=True)

and a KD method declares its own options as :class:`Option` objects (``kdx.distill.methods``).
From these declarations kdx derives the command-line flags (``--lr``), the help text (the
default is computed, never typed), the check of ``--config`` files, presets and study tables,
``config.json`` and the validation of every value (:func:`coerce`): type, finiteness, range
and choices, each failure one line naming the option.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Optional

from kdx.errors import KdxError

INT_MAX = 2**63 - 1


@dataclass(frozen=True)
class Option:
    """One option: ``name`` is the config key (``kd_temperature``) and the flag (``--kd-temperature``).

    ``type`` is one of ``int``, ``float``, ``str``, ``bool``, ``list[int]``, ``list[str]``, ``Path``
    (paths are kept as ``str`` in configs); ``nullable`` allows ``None`` (unset). ``low``/``high``
    bound numbers (inclusive unless ``low_open``/``high_open``); ``choices`` lists the valid
    strings (for lists: of every item). ``panel`` groups the flag in ``--help``; ``flags`` adds
    short forms (``-o``); ``cli=False`` keeps an option out of the command line (config only).

    ``argument``: a positional command-line argument (``RUN...`` for a list) instead of a flag;
    ``required``: the value must be given (an argument on the command line; an option on the
    command line or in a ``--config`` file, checked by :func:`check_required`); ``comma``
    (lists): items may be comma-separated as well as repeated (False: repeated only, for values
    that hold commas, such as paths or ``--set`` expressions).
    """

    name: str
    type: Any
    default: Any
    help: str
    choices: Optional[tuple] = None
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    panel: str = "Options"
    flags: tuple = ()
    cli: bool = True
    metavar: Optional[str] = None
    argument: bool = False
    required: bool = False
    comma: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def replace(self, **changes) -> "Option":
        return dataclasses.replace(self, **changes)


def option(default, help: str, **spec) -> dataclasses.Field:
    """A dataclass field carrying its :class:`Option` (name and type are filled from the field)."""
    meta = {"kdx": dict(help=help, **spec)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def as_field(opt: Option) -> tuple[str, Any, dataclasses.Field]:
    """``(name, type, field)`` for ``dataclasses.make_dataclass``: a method's option as a config field."""
    spec = {f.name: getattr(opt, f.name) for f in dataclasses.fields(Option)
            if f.name not in ("name", "type", "default", "help")}
    return opt.name, Optional[opt.type] if opt.nullable else opt.type, option(opt.default, opt.help, **spec)


def _resolve_type(tp) -> tuple[Any, bool]:
    """``Optional[X]`` -> (X, True); ``X`` -> (X, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def field_options(cls) -> list[Option]:
    """The :class:`Option` of every declared field of dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("kdx")
        if spec is None:
            continue
        tp, nullable = _resolve_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(Option(name=f.name, type=tp, default=default,
                          **dict(spec, nullable=nullable or spec.get("nullable", False))))
    return out


def type_name(opt: Option) -> str:
    tp = opt.type
    if typing.get_origin(tp) is list:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _bad(opt: Option, value, expected: str) -> KdxError:
    return KdxError(f"{opt.flag} must be {expected}; got {value!r}")


def _scalar(opt: Option, tp, value):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise _bad(opt, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(opt, value, "an integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise _bad(opt, value, "an integer") from None
        if not isinstance(value, int):
            raise _bad(opt, value, "an integer")
        if abs(value) > INT_MAX:
            raise _bad(opt, value, f"an integer of at most {INT_MAX}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise _bad(opt, value, "a number")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise _bad(opt, value, "a number") from None
        if not math.isfinite(value):
            raise _bad(opt, value, "a finite number")
        return value
    if isinstance(value, (dict, list, bool)) or value is None:
        raise _bad(opt, value, "a string")
    return str(value)


def _check_range(opt: Option, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo_ok = opt.low is None or (value > opt.low if opt.low_open else value >= opt.low)
    hi_ok = opt.high is None or (value < opt.high if opt.high_open else value <= opt.high)
    if not (lo_ok and hi_ok):
        if opt.low is not None and opt.high is not None:
            text = f"in {'(' if opt.low_open else '['}{opt.low:g}, {opt.high:g}{')' if opt.high_open else ']'}"
        elif opt.low is not None:
            text = f"{'>' if opt.low_open else '>='} {opt.low:g}"
        else:
            text = f"{'<' if opt.high_open else '<='} {opt.high:g}"
        raise _bad(opt, value, text)


def _check_choice(opt: Option, value) -> None:
    if opt.choices is not None and value not in opt.choices:
        raise KdxError(f"{opt.flag} must be one of {', '.join(map(str, opt.choices))}; got {value!r}")


def split_list(value) -> list:
    """``"a,b"``, ``["a", "b,c"]`` (repeated flags, each possibly comma-separated) -> ``["a", "b", "c"]``."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return [value]
    out = []
    for item in value:
        if isinstance(item, str):
            out.extend(p.strip() for p in item.split(",") if p.strip())
        else:
            out.append(item)
    return out


def coerce(opt: Option, value):
    """Check and convert ``value`` for ``opt``: one-line :class:`KdxError` naming the flag if it is invalid."""
    if value is None:
        if opt.nullable:
            return None
        raise _bad(opt, value, f"set (a {type_name(opt)})")
    tp = opt.type
    if typing.get_origin(tp) is list:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, dict):
            raise _bad(opt, value, f"a {type_name(opt)}")
        given = split_list(value) if opt.comma else list(value) if isinstance(value, (list, tuple)) else [value]
        items = [_scalar(opt, item_tp, v) for v in given]
        for v in items:
            _check_range(opt, v)
            _check_choice(opt, v)
        return items
    if tp not in (int, float, bool, str):
        tp = str  # paths and other string-like values
    value = _scalar(opt, tp, value)
    _check_range(opt, value)
    _check_choice(opt, value)
    return value


def check_required(cfg) -> None:
    """Refuse a config of declared options whose ``required`` ones are unset (one line naming the first)."""
    for opt in field_options(type(cfg)):
        if opt.required and getattr(cfg, opt.name) in (None, [], ""):
            if opt.argument:
                raise KdxError(f"missing argument {opt.metavar or opt.name.upper()}")
            raise KdxError(f"{opt.flag} is required")


def show_default(opt: Option) -> str:
    """The default as ``--help`` shows it."""
    v = opt.default
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, list):
        return ",".join(map(str, v)) if v else "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
