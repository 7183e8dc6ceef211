"""Run directories: create, refuse to clobber, resume, overwrite."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from kdx.config import build_config, read_config_file, save_config
from kdx.engine.checkpoint import MODEL_FILE, has_resume
from kdx.errors import KdxError

# options that may change when a run is resumed (they do not change the result)
RESUME_OVERRIDABLE = {"device", "quiet", "num_workers", "epochs", "max_steps", "eval_batch_size"}


RESULTS_FILE = "results.json"


def finished(path: str | Path) -> bool:
    """Whether the command that writes the directory ``path`` completed.

    Every command writes ``results.json`` last (atomically). It names what must exist beside it:
    ``outputs`` (a list of files), else ``final_checkpoint`` (an explainer run), else the model.
    """
    path = Path(path)
    try:
        results = json.loads((path / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(results, dict):
        return False
    needed = results.get("outputs") or [results.get("final_checkpoint") or MODEL_FILE]
    return all(isinstance(n, str) and (path / n).is_file() for n in needed)


def mark_finished(path: str | Path, outputs: list[str], **extra) -> None:
    """The last write of a command whose directory holds no model: ``results.json`` naming its outputs."""
    from kdx.engine.io import atomic_write_text

    atomic_write_text(Path(path) / RESULTS_FILE, json.dumps({**extra, "outputs": list(outputs)}, indent=2) + "\n")


def holds_run(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / MODEL_FILE).is_file() or has_resume(path)


def config_for_resume(cls, run_dir: str, cli: dict):
    """The saved config of ``run_dir``, with the few options that may change on resume."""
    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise KdxError(f"--resume {run_dir}: no config.json there, so there is no kdx run to resume")
    saved = read_config_file(path / "config.json")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in saved.items() if k in names}
    values["max_steps"] = None  # a stop request of the earlier session, not part of the run
    for key, value in cli.items():
        if value is not None and key in RESUME_OVERRIDABLE:
            values[key] = value
    values["out"] = str(path)
    values["resume"] = str(path)
    values["overwrite"] = False
    preset = values.pop("preset", None)  # already applied in the saved values
    cfg = build_config(cls, cli=values)
    cfg.preset = preset
    return cfg


def prepare_run_dir(cfg, main_process: bool = True) -> Path:
    """Create (or check) ``cfg.out``; save ``config.json``. Returns the run directory."""
    out = Path(cfg.resume or cfg.out)
    if not main_process:  # rank 0 checks and writes; the others wait at a barrier
        return out
    if cfg.resume:
        if not (out / "config.json").is_file():
            raise KdxError(f"--resume {out}: no kdx run there (config.json is missing)")
        # the trainer continues from resume/ state where there is one (every stage of a
        # multi-stage run has its own) and starts a stage afresh where there is none
    elif out.exists():
        if not out.is_dir():
            raise KdxError(f"--out {out} exists and is not a directory")
        if holds_run(out):
            if not cfg.overwrite:
                raise KdxError(f"--out {out} already holds a run; use --resume {out} to continue it or --overwrite to replace it")
            for child in out.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    return out
