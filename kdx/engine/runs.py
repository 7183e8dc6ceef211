"""Where a run's files live: its stages, checkpoints and config (the one module that knows).

A run directory holds ``config.json`` (the resolved config of the command that wrote it).
A single-stage run (train-teacher, train-vam-student) keeps its checkpoints beside it:
``model.safetensors`` (last epoch) and ``best.safetensors`` (best epoch on validation).
A multi-stage run (distill-explainer) keeps every stage in ``stage<N>/``, an ordinary
single-stage layout without config.json; the run's final checkpoints are those of its last
stage that holds any. ``--which model|best`` picks one of the two checkpoints.

Everything that needs one of these paths (evaluate, info, analyze-conflicts, the start of
stage 2, checkpoint loading) asks this module. It imports no training code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kdx.errors import KdxError
from kdx.io import check_regular_input, read_text_checked

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
CHECKPOINTS = {"model": MODEL_FILE, "best": BEST_FILE}
"""``--which``: model = the last epoch, best = the best epoch on validation."""

_STAGE = re.compile(r"^stage(\d+)$")


def checkpoint_name(which: str) -> str:
    """``model`` -> model.safetensors, ``best`` -> best.safetensors; KdxError otherwise."""
    if which not in CHECKPOINTS:
        raise KdxError(f"--which must be one of {', '.join(CHECKPOINTS)}; got '{which}'")
    return CHECKPOINTS[which]


def stage_dir(run_dir: str | Path, stage: int) -> Path:
    """``RUN/stage<N>``: where stage ``stage`` of a multi-stage run keeps its files."""
    return Path(run_dir) / f"stage{int(stage)}"


def stages(run_dir: str | Path) -> list[int]:
    """Stage numbers of ``run_dir`` whose folder holds a checkpoint, in order (empty: single-stage run)."""
    found = []
    for child in Path(run_dir).iterdir() if Path(run_dir).is_dir() else ():
        m = _STAGE.match(child.name)
        if m and child.is_dir() and any((child / name).is_file() for name in CHECKPOINTS.values()):
            found.append(int(m.group(1)))
    return sorted(found)


def checkpoint_file(path: str | Path, which: str = "model") -> Path:
    """A run directory (or a stage folder, or a file) -> the safetensors file ``which`` names.

    In a run directory: its own checkpoint if it has one (single-stage run), else that of its
    last stage holding a checkpoint. A file is returned as it is (``which`` does not apply)."""
    path = Path(path)
    name = checkpoint_name(which)
    if path.is_dir():
        if any((path / n).is_file() for n in CHECKPOINTS.values()):
            home = path
        else:
            found = stages(path)
            if not found:
                raise KdxError(f"no checkpoint in run directory {path} (expected {MODEL_FILE})")
            home = stage_dir(path, found[-1])
        if not (home / name).is_file():
            raise KdxError(f"no {name} in {home} (--which {which})")
        return home / name
    if not path.exists():
        raise KdxError(f"checkpoint not found: {path}")
    return check_regular_input(path, "checkpoint")  # a FIFO would block the reader forever


def run_root(file: str | Path) -> Path | None:
    """The run directory (holding config.json) a checkpoint file belongs to, or None for a loose file."""
    parent = Path(file).parent
    if (parent / CONFIG_FILE).is_file():
        return parent
    if _STAGE.match(parent.name) and (parent.parent / CONFIG_FILE).is_file():
        return parent.parent
    return None


def stage_of(file: str | Path) -> int | None:
    """The stage a checkpoint file belongs to (``RUN/stage<N>/...``), None outside a stage folder."""
    m = _STAGE.match(Path(file).parent.name)
    return int(m.group(1)) if m and run_root(file) is not None else None


def run_config(file: str | Path) -> dict:
    """config.json of the run a checkpoint file (or run directory) belongs to; {} for a loose file."""
    path = Path(file)
    root = path if path.is_dir() and (path / CONFIG_FILE).is_file() else run_root(path)
    if root is None:
        return {}
    try:
        cfg = json.loads(read_text_checked(root / CONFIG_FILE, "run config", 16 * 1024 * 1024))
    except (ValueError, RecursionError):
        raise KdxError(f"{root / CONFIG_FILE}: not valid JSON") from None
    if not isinstance(cfg, dict):
        raise KdxError(f"{root / CONFIG_FILE}: not a JSON object")
    return cfg


SEED_LIMIT = 2**32 - 1  # kdx.config.SEED_MAX (the layer above); tests/test_nothing_lost.py holds them equal


def _spec_value(cfg: dict, key: str, ok, want: str, source):
    value = cfg.get(key)
    if value is not None and not ok(value):
        raise KdxError(f"{source}: '{key}' must be {want}, got {json.dumps(value)[:40]}")
    return value


def split_spec(file: str | Path, meta: dict | None = None) -> dict:
    """What re-creates the run's data splits: ``dataset``, ``data_root``, ``seed``, ``val_fraction``.

    From the run's config.json, else the checkpoint metadata (dataset, seed), else the defaults
    (val_fraction 0.1, seed 0) for a checkpoint that records none."""
    cfg, meta = run_config(file), meta or {}
    root = run_root(file) if not Path(file).is_dir() else Path(file)
    source = (root / CONFIG_FILE) if root is not None else file
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    seed = _spec_value(cfg, "seed", lambda v: is_int(v) and 0 <= v <= SEED_LIMIT, f"an integer in [0, {SEED_LIMIT}]",
                       source)
    if seed is None:
        seed = _spec_value(meta, "seed", lambda v: is_int(v) and 0 <= v <= SEED_LIMIT,
                           f"an integer in [0, {SEED_LIMIT}]", f"{file} (metadata)")
    vf = _spec_value(cfg, "val_fraction", lambda v: (is_int(v) or isinstance(v, float)) and 0 <= v < 1,
                     "a number in [0, 1)", source)
    text = lambda v: isinstance(v, str) and 0 < len(v) <= 4096  # noqa: E731
    data_root = _spec_value(cfg, "data_root", text, "a folder name (a string)", source)
    dataset = meta.get("dataset") or _spec_value(cfg, "dataset", text, "a dataset name (a string)", source)
    return {"dataset": dataset, "data_root": data_root,
            "seed": int(seed) if seed is not None else 0, "val_fraction": float(vf) if vf is not None else 0.1}


def stage_start(source: str | Path, stage: int, which: str = "best") -> Path:
    """The checkpoint a later stage starts from: ``which`` (best | model) of stage ``stage`` of the
    run ``source`` (or of the stage folder ``source``); a file is taken as it is."""
    path = Path(source)
    name = checkpoint_name(which)
    if path.is_dir():
        for home in (stage_dir(path, stage), path):
            if (home / name).is_file():
                return home / name
        raise KdxError(f"--from {source}: no stage{stage}/{name} there")
    if not path.is_file():
        raise KdxError(f"--from {source}: not found")
    return path
