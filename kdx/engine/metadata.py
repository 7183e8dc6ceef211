"""The schema of a checkpoint's kdx metadata, checked on read.

A checkpoint is data from anywhere: its ``kdx`` metadata string may be a JSON list, nested
100 000 deep (Python's json recursion would blow up) or carry ``num_classes: "ten"``.
:func:`parse_metadata` bounds the raw text's size and bracket depth *before* json parsing,
then :func:`validate_metadata` checks the type (and sane range) of every field kdx reads.
Unknown fields pass (a newer kdx may write more); known ones must have their type.
"""

from __future__ import annotations

import json
import math
import re

from kdx.errors import KdxError

MAX_TEXT = 8 * 1024 * 1024  # characters of metadata JSON (kdx writes a few KB; trees of 200 classes ~100 KB)
MAX_DEPTH = 32  # kdx writes at most ~5 levels
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 4096
MAX_SIDE = 16384
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """Maximum nesting of ``[``/``{`` in JSON ``text``, ignoring brackets inside strings
    (linear scan, no recursion; unbalanced closers count as depth 0)."""
    depth = deepest = 0
    for ch in _BRACKET.findall(_STRING.sub('""', text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def parse_metadata(text, source) -> dict:
    """The raw ``kdx`` metadata string -> a validated dict, or one-line :class:`KdxError`."""
    if not isinstance(text, str):
        raise KdxError(f"{source}: kdx metadata is not text")
    if len(text) > MAX_TEXT:
        raise KdxError(f"{source}: kdx metadata is {len(text):,} characters (limit {MAX_TEXT:,}); not a kdx checkpoint")
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise KdxError(f"{source}: kdx metadata is nested {depth} levels deep (limit {MAX_DEPTH}); not a kdx checkpoint")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        raise KdxError(f"{source}: corrupt kdx metadata (not JSON)") from None
    return validate_metadata(meta, source)


# ---------------------------------------------------------------- field checks: value -> problem or None
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    """A finite JSON number (huge integers count as not finite: math.isfinite would overflow)."""
    return isinstance(v, float) and math.isfinite(v) or _is_int(v) and abs(v) < 10 ** 300


def _text(v):
    return None if isinstance(v, str) else "a string"


def _opt_text(v):
    return None if v is None or isinstance(v, str) else "a string or null"


def _count(lo, hi):
    def check(v):
        return None if _is_int(v) and lo <= v <= hi else f"an integer in [{lo}, {hi}]"
    return check


def _opt_int(v):
    return None if v is None or _is_int(v) else "an integer or null"


def _opt_int_in(lo, hi):
    def check(v):
        return None if v is None or _is_int(v) and lo <= v <= hi else f"an integer in [{lo}, {hi}] or null"
    return check


def _shape(v):
    ok = (isinstance(v, list) and len(v) == 3 and all(_is_int(x) for x in v)
          and 1 <= v[0] <= MAX_CHANNELS and all(1 <= x <= MAX_SIDE for x in v[1:]))
    return None if ok else f"[channels, height, width] with channels in [1, {MAX_CHANNELS}] and sides in [1, {MAX_SIDE}]"


def _names(v):
    return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else "a list of strings"


def _finite_list(positive: bool):
    def check(v):
        ok = isinstance(v, list) and v and all(_finite(x) and (x > 0 or not positive) for x in v)
        return None if ok else f"a non-empty list of finite{' positive' if positive else ''} numbers"
    return check


def _object(v):
    return None if isinstance(v, dict) else "an object"


def _opt_object(v):
    return None if v is None or isinstance(v, dict) else "an object or null"


def _scalars(v):
    ok = isinstance(v, dict) and all(v_ is None or isinstance(v_, (str, bool)) or _is_number(v_) for v_ in v.values())
    return None if ok else "an object of numbers and strings"


def _method(v):
    ok = isinstance(v, str) or (isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) and x for x in v))
    return None if ok else "a list of method names"


def method_names(meta: dict) -> list[str]:
    """The training methods a checkpoint records: the list ``method``, or what older kdx versions
    wrote (the joined string ``"kd+at"``, or ``objective``); [] when it records none."""
    v = meta.get("method") or meta.get("objective")
    if isinstance(v, list):
        return [str(x) for x in v]
    return [n for n in str(v).split("+") if n] if v else []


def method_label(meta: dict) -> str:
    """The recorded methods as one display label (``kd+at``); the checkpoint kind when none."""
    return "+".join(method_names(meta)) or str(meta.get("kind") or "classifier")


FIELDS = {
    "kind": _text, "arch": _text, "dataset": _text, "kdx_version": _text, "torch_version": _text,
    "imported_from": _opt_text, "precision": _opt_text,
    "num_classes": _count(1, MAX_CLASSES), "input_shape": _shape, "class_names": _names,
    "mean": _finite_list(False), "std": _finite_list(True),
    "epoch": _opt_int_in(0, 10**7), "seed": _opt_int_in(0, 2**32 - 1), "metrics": _scalars,
    "explainer": _object, "vam": _object, "tree": _opt_object, "teacher": _opt_object, "method": _method,
}
REQUIRED = {"classifier": ("arch", "num_classes"), "vam-student": ("arch", "num_classes", "vam"),
            "explainer": ("explainer",)}


def _check_vam(vam: dict) -> str | None:
    if not (_is_int(vam.get("blocks")) and 1 <= vam["blocks"] <= 4096):
        return "vam.blocks must be an integer in [1, 4096]"
    for key in ("final_tau", "tau"):
        if key in vam and not (_finite(vam[key]) and vam[key] > 0):
            return f"vam.{key} must be a finite positive number"
    if "routing" in vam and vam["routing"] not in ("soft", "hard"):
        return "vam.routing must be soft or hard"
    return None


def _check_explainer(cfg: dict) -> str | None:
    """Keys must be KDExplainer's parameters, with JSON-scalar or (nested) integer-list values."""
    import inspect

    from kdx.models.routed.explainer import KDExplainer

    params = set(inspect.signature(KDExplainer.__init__).parameters) - {"self"}
    unknown = sorted(set(cfg) - params)
    if unknown:
        return f"explainer config has unknown key '{unknown[0]}'"
    for key, value in cfg.items():
        if key in ("num_classes", "in_channels", "image_size", "hidden", "pool") and not (
                _is_int(value) and 1 <= value <= MAX_CLASSES):
            return f"explainer.{key} must be a positive integer"
        if key in ("tau", "dropout") and not _finite(value):
            return f"explainer.{key} must be a finite number"
        if key in ("head", "routing") and not isinstance(value, str):
            return f"explainer.{key} must be a string"
        if key == "experts" and not (value is None or _int_list(value)):
            return "explainer.experts must be a list of positive integers"
        if key == "widths" and not (value is None or isinstance(value, list) and all(_int_list(w) for w in value)):
            return "explainer.widths must be a list of lists of positive integers"
    return None


def _int_list(v) -> bool:
    return isinstance(v, list) and all(_is_int(x) and 1 <= x <= 65536 for x in v)


def validate_metadata(meta, source) -> dict:
    """Check the type (and sane range) of every known field; return ``meta`` unchanged."""
    if not isinstance(meta, dict):
        raise KdxError(f"{source}: kdx metadata must be a JSON object, got a JSON {_json_type(meta)}")
    for key, check in FIELDS.items():
        if key in meta:
            problem = check(meta[key])
            if problem:
                raise KdxError(f"{source}: kdx metadata field '{key}' must be {problem}, got {_short(meta[key])}")
    kind = meta.get("kind", "classifier")
    missing = [k for k in REQUIRED.get(kind, ()) if k not in meta]
    if missing:
        raise KdxError(f"{source}: kdx metadata of a {kind} checkpoint lacks field '{missing[0]}'")
    names, n = meta.get("class_names"), meta.get("num_classes")
    if names is not None and n is not None and len(names) != n:
        raise KdxError(f"{source}: kdx metadata lists {len(names)} class names for {n} classes")
    problem = (_check_vam(meta["vam"]) if kind == "vam-student" else
               _check_explainer(meta["explainer"]) if kind == "explainer" else None)
    if problem:
        raise KdxError(f"{source}: kdx metadata: {problem}")
    return meta


def _json_type(v) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number" if _is_number(v) else type(v).__name__)


def _short(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
