"""Config files and the configs built from them, for any dataclass of declared options.

:func:`build_config` fills a config, lowest precedence first, from the declared defaults, the
dataset's recipe (``cls.recipe_preset(dataset)`` names one of ``cls.presets``), a ``--preset``, a
``--config`` file (JSON, TOML or YAML; tables are flattened) and the command line; every value
is checked by :func:`kdx.options.coerce`. :func:`save_config` writes ``config.json`` with the
command that owns the run (``cls.command``). The command configs themselves live in
:mod:`kdx.config`; this module knows none of them, so the engine can read and write any run's
config without importing the layers above it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kdx.errors import KdxError
from kdx.io import atomic_write_text
from kdx.options import coerce, field_options

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore


def command_of(cls) -> str:
    return getattr(cls, "command", "train-teacher")


def options_of(cls) -> dict:
    """``{name: Option}`` of every declared field of ``cls``."""
    return {o.name: o for o in field_options(cls)}


MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000  # values in a config file, aliases expanded (kdx's own config.json has ~100)
MAX_ALIASES = 100
MAX_DEPTH = 32
RUN_PLACE_KEYS = ("resume", "out", "overwrite")
"""Where a run is written or resumed: only ever from the command line, never from a config file."""


def _yaml_load(text: str):
    """``yaml.safe_load`` with alias expansion bounded: a document may use at most MAX_ALIASES
    aliases (a "billion laughs" bomb uses a few per level and is refused before it expands)."""
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_ALIASES:
                    raise ValueError(f"more than {MAX_ALIASES} YAML aliases (a bomb?)")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def _check_size(data, path: Path) -> None:
    """Count the values of ``data`` (shared ones once per use), iteratively: refuse more than
    MAX_NODES or a nesting deeper than MAX_DEPTH (no recursion, whatever the input)."""
    stack, nodes = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise KdxError(f"config file {path} is too large or too deeply nested "
                           f"(limits: {MAX_NODES:,} values, {MAX_DEPTH} levels)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def load_table_file(path: str | Path, default_name: str = "config.json") -> dict:
    """Parse a JSON, TOML or YAML file (or ``DIR/default_name``) into a dict, with one-line errors.
    A FIFO or device is refused before it is opened; size, nesting and YAML aliases are bounded."""
    from kdx.io import file_kind, read_text_checked

    path = Path(path)
    if path.is_dir():
        path = path / default_name
    kind = file_kind(path)
    if kind is not None:
        raise KdxError(f"config file {path} is {kind}, not a regular file")
    if not path.is_file():
        raise KdxError(f"config file not found: {path}")
    text = read_text_checked(path, "config file", MAX_CONFIG_BYTES)
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # every parser's own error type (RecursionError too): one line naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdxError(f"cannot parse config file {path}: {first}") from None
    if not isinstance(data, dict):
        raise KdxError(f"config file {path} must hold a table/mapping of options")
    _check_size(data, path)
    return data


def read_config_file(path: str | Path) -> dict:
    """Read a config file; tables/sections are flattened (``[optim] lr = 0.1`` -> ``lr``), and a key that
    two tables both set is refused."""
    return _flatten(load_table_file(path), path)


def _flatten(data: dict, path) -> dict:
    flat: dict = {}
    where: dict = {}

    def put(key, value, table):
        key = str(key).replace("-", "_")
        if key in flat:
            raise KdxError(f"{path}: option '{key}' is set twice ({where[key]} and {table})")
        flat[key], where[key] = value, table

    for key, value in data.items():
        if key == "kdx":
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                put(k, v, f"[{key}]")
        else:
            put(key, value, "the top level")
    return flat


def _file_values(cls, config_file) -> dict:
    """The options of a ``--config`` file for ``cls``. Where the run goes (``resume``, ``out``,
    ``overwrite``) never comes from a file: a config.json kdx wrote records them (dropped), any
    other file that sets them is refused."""
    data = load_table_file(config_file)
    values = _flatten(data, config_file)
    own = {f.name for f in dataclasses.fields(cls)}
    for key in RUN_PLACE_KEYS:
        if key not in own or key not in values:
            continue
        if isinstance(data.get("kdx"), dict) or values[key] in (None, False):
            values.pop(key)
        else:
            raise KdxError(f"config file {config_file} sets '{key}'; where a run is written or resumed comes only "
                           f"from the command line (--{key}), never from a file")
    return values


def build_config(cls, *, presets: dict[str, dict] | None = None, config_file: str | None = None,
                 cli: dict | None = None, recipe_for_dataset=None):
    """Build a config of dataclass ``cls`` from defaults < dataset recipe < preset < file < CLI.

    ``presets`` defaults to the command's presets; ``recipe_for_dataset`` (dataset -> dict)
    to ``cls.recipe_preset`` (a preset name per dataset). Unknown keys and invalid values are refused with one line.
    A class without ``presets`` (and none given) has none: its ``preset`` option, if any, is an ordinary value.
    """
    has_presets = presets is not None or hasattr(cls, "presets")
    presets = getattr(cls, "presets", {}) if presets is None else presets
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    file_values = _file_values(cls, config_file) if config_file else {}
    upgrade = getattr(cls, "upgrade_values", None)
    if upgrade is not None:  # older config files, same meaning
        file_values, cli = upgrade(file_values), upgrade(cli)
    opts = options_of(cls)
    for source, values in ((config_file, file_values), ("the command line", cli)):
        unknown = sorted(set(values) - set(opts))
        if unknown:
            raise KdxError(f"unknown option(s) in {source}: {', '.join(unknown)}")
    dataset = cli.get("dataset", file_values.get("dataset", opts["dataset"].default if "dataset" in opts else None))
    values: dict = {}
    if recipe_for_dataset is not None:
        values.update(recipe_for_dataset(dataset))
    else:
        recipe = getattr(cls, "recipe_preset", None)
        values.update(presets.get(recipe(dataset), {}) if recipe is not None else {})
    preset = cli.get("preset", file_values.get("preset")) if has_presets else None
    if preset is not None:
        if preset not in presets:
            raise KdxError(f"unknown preset '{preset}'; valid presets: {', '.join(sorted(presets))}")
        values.update(presets[preset])
    values.update(file_values)
    values.update(cli)
    return cls(**{k: coerce(opts[k], v) for k, v in values.items() if k in opts})


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: Path) -> None:
    data = {"kdx": {"command": command_of(type(cfg))}}
    data.update(config_to_dict(cfg))
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
