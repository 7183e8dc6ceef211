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


def load_table_file(path: str | Path, default_name: str = "config.json") -> dict:
    """Parse a JSON, TOML or YAML file (or ``DIR/default_name``) into a dict, with one-line errors."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise KdxError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KdxError(f"cannot read config file {path}: {exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # every parser's own error type: one line naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdxError(f"cannot parse config file {path}: {first}") from None
    if not isinstance(data, dict):
        raise KdxError(f"config file {path} must hold a table/mapping of options")
    return data


def read_config_file(path: str | Path) -> dict:
    """Read a config file; tables/sections are flattened (``[optim] lr = 0.1`` -> ``lr``), and a key that
    two tables both set is refused."""
    data = load_table_file(path)
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
    file_values = read_config_file(config_file) if config_file else {}
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
