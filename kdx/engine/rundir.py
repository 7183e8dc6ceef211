"""Run directories: create, refuse to clobber, resume, overwrite; the command that owns a run,
a lock against a second writer, and a transaction that leaves nothing behind when a command
fails before its first training step.

* Ownership: config.json records ``{"kdx": {"command": ...}}``; any other command refuses
  the run (``--resume`` included) before writing a byte.
* Lock: ``RUN/.kdx.lock`` holds the writer's pid and host. A second writer is refused; a lock
  whose process is gone (same host) is taken over. It is released when the process exits.
* Transaction: what :func:`prepare_run_dir` creates (the folder, config.json, the lock) and what
  ``--overwrite`` would replace (moved aside into ``.kdx-replaced``) is undone by
  :func:`rollback` unless :func:`commit` ran first (the engine commits before the first step).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path

from kdx.configfile import build_config, command_of, read_config_file, save_config
from kdx.engine.checkpoint import MODEL_FILE, has_resume
from kdx.errors import KdxError

# options that may change when a run is resumed (they do not change the result)
RESUME_OVERRIDABLE = {"device", "quiet", "num_workers", "epochs", "max_steps", "eval_batch_size", "max_bad_steps",
                      "log"}
LOCK_FILE = ".kdx.lock"
REPLACED_DIR = ".kdx-replaced"


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
    from kdx.io import atomic_write_text

    atomic_write_text(Path(path) / RESULTS_FILE, json.dumps({**extra, "outputs": list(outputs)}, indent=2) + "\n")


def holds_run(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / MODEL_FILE).is_file() or has_resume(path)


# ------------------------------------------------------------------ which command owns a run

def run_command(path: Path) -> str | None:
    """The command recorded in ``path/config.json`` (None: no config.json, or one without a record)."""
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    meta = data.get("kdx") if isinstance(data, dict) else None
    return meta.get("command") if isinstance(meta, dict) and isinstance(meta.get("command"), str) else None


def check_command(path: Path, command: str, flag: str = "--resume") -> None:
    """Refuse a run that another command wrote."""
    owner = run_command(path)
    if owner is not None and owner != command:
        raise KdxError(f"{flag} {path}: this run was written by 'kdx {owner}', not 'kdx {command}'; "
                       f"use 'kdx {owner} --resume {path}' or another --out")


def config_for_resume(cls, run_dir: str, cli: dict):
    """The saved config of ``run_dir``, with the few options that may change on resume."""
    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise KdxError(f"--resume {run_dir}: no config.json there, so there is no kdx run to resume")
    check_command(path, command_of(cls))
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


# ------------------------------------------------------------------ lock

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _read_lock(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


_HELD: set[Path] = set()


def acquire_lock(run_dir: Path) -> None:
    """Take ``run_dir/.kdx.lock`` for this process; refuse while another live process holds it."""
    lock = Path(run_dir) / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_lock(lock)
            pid, host = held.get("pid"), held.get("host")
            if pid == me["pid"] and host == me["host"]:
                _HELD.add(lock)
                return  # this process already holds it
            if isinstance(pid, int) and (host != me["host"] or _pid_alive(pid)):
                where = f"process {pid}" + ("" if host == me["host"] else f" on {host}")
                raise KdxError(f"{run_dir} is in use by {where} (lock {lock}); wait for it to finish, "
                               f"or delete the lock if that process is gone")
            try:  # the holder is dead (or the lock unreadable): take it over
                lock.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me) + "\n")
        _HELD.add(lock)
        return
    raise KdxError(f"{run_dir}: cannot take the lock {lock} (another process keeps taking it)")


def claim_group_dir(out: Path, wipe) -> Path:
    """Open a folder that holds several runs (a ``--compare`` group, a study) for this process.

    A file in the way is refused; an existing folder is locked against a second writer before
    anything changes; ``wipe(out)`` (which may raise a refusal) says whether to empty it first
    (its lock kept); then it is created and locked."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KdxError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        acquire_lock(out)
        if wipe(out):
            for child in out.iterdir():
                if child.name == LOCK_FILE:
                    continue
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    acquire_lock(out)
    return out


def release_locks() -> None:
    """Remove the locks this process holds (at exit)."""
    for lock in list(_HELD):
        if _read_lock(lock).get("pid") == os.getpid():
            try:
                lock.unlink()
            except OSError:
                pass
        _HELD.discard(lock)


atexit.register(release_locks)


# ------------------------------------------------------------------ transaction

@dataclasses.dataclass
class _Txn:
    out: Path
    created: list[Path]  # folders this invocation created, outermost first
    before: set = dataclasses.field(default_factory=set)  # names in ``out`` before this invocation wrote
    config_before: bytes | None = None  # config.json as it was (resume), None if there was none
    replaced: Path | None = None  # what --overwrite moved aside


_OPEN: dict[Path, _Txn] = {}
_ROOTS: dict[Path, str] = {}  # run roots of this invocation -> the command that resumes them


def commit(run_dir: Path) -> None:
    """The run has started training: drop what --overwrite replaced; no rollback from now on."""
    for out in [p for p in _OPEN if p == Path(run_dir) or p in Path(run_dir).parents]:
        txn = _OPEN.pop(out)
        if txn.replaced is not None:
            shutil.rmtree(txn.replaced, ignore_errors=True)


def rollback() -> None:
    """Undo every uncommitted preparation of this process (called on a KdxError)."""
    for out, txn in reversed(list(_OPEN.items())):
        try:
            if txn.created:
                shutil.rmtree(txn.created[0], ignore_errors=True)
            else:
                for child in out.iterdir():
                    if child.name not in txn.before | {REPLACED_DIR, LOCK_FILE}:
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
                if txn.replaced is not None:
                    for child in txn.replaced.iterdir():
                        child.rename(out / child.name)
                    txn.replaced.rmdir()
                if txn.config_before is not None:
                    (out / "config.json").write_bytes(txn.config_before)
                (out / LOCK_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        _HELD.discard(out / LOCK_FILE)
        _OPEN.pop(out, None)


def resume_hint(run_dir: Path) -> str:
    """The command that continues the interrupted run in ``run_dir`` (a stage folder belongs to
    the run above it)."""
    run_dir = Path(run_dir)
    roots = [r for r in _ROOTS if r == run_dir or r in run_dir.parents]
    if not roots:
        return f"--resume {run_dir}"
    return _ROOTS[min(roots, key=lambda r: len(r.parts))]


def register_root(path: Path, command_line: str) -> None:
    """Say how to continue the run (or study) in ``path`` if it is interrupted."""
    _ROOTS[Path(path)] = command_line


# ------------------------------------------------------------------ preparation

def _missing_parents(out: Path) -> list[Path]:
    """``out`` and its ancestors that do not exist yet, outermost first; checks that the nearest
    existing ancestor is a folder."""
    missing = []
    p = out
    while not p.exists():
        if p.is_symlink():
            raise KdxError(f"--out {out}: {p} is a broken symbolic link")
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise KdxError(f"--out {out}: {p} is a file, not a folder")
    return missing[::-1]


def _check_names(out: Path) -> None:
    limit = 255
    for part in out.parts:
        if len(os.fsencode(part)) > limit:
            raise KdxError(f"--out {out}: the name '{part[:40]}...' has {len(os.fsencode(part))} bytes; "
                           f"file names may have at most {limit}")


def _move_aside(out: Path) -> Path:
    """--overwrite: move the old run's files into ``out/.kdx-replaced`` (deleted on commit)."""
    trash = out / REPLACED_DIR
    if trash.exists():
        shutil.rmtree(trash)
    trash.mkdir()
    for child in out.iterdir():
        if child.name not in (REPLACED_DIR, LOCK_FILE):
            child.rename(trash / child.name)
    return trash


def prepare_run_dir(cfg, main_process: bool = True) -> Path:
    """Create (or check) ``cfg.out``; lock it; save ``config.json``. Returns the run directory."""
    out = Path(cfg.resume or cfg.out)
    command = command_of(type(cfg))
    if not main_process:  # rank 0 checks and writes; the others wait at a barrier
        return out
    _check_names(out)
    if cfg.resume:
        if not (out / "config.json").is_file():
            raise KdxError(f"--resume {out}: no kdx run there (config.json is missing)")
        check_command(out, command)
        # the trainer continues from resume/ state where there is one (every stage of a
        # multi-stage run has its own) and starts a stage afresh where there is none
    elif out.exists():
        if not out.is_dir():
            raise KdxError(f"--out {out} exists and is not a directory")
        if holds_run(out) and not cfg.overwrite:
            raise KdxError(f"--out {out} already holds a run; use --resume {out} to continue it or --overwrite to replace it")
    created = _missing_parents(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        try:
            acquire_lock(out)
        except KdxError:  # another writer: touch nothing of theirs
            if created:
                shutil.rmtree(created[0], ignore_errors=True)
            raise
        txn = _Txn(out, created)
        _OPEN[out] = txn
        if cfg.resume:
            txn.config_before = (out / "config.json").read_bytes()
        elif not created and holds_run(out):
            txn.replaced = _move_aside(out)
        txn.before = {p.name for p in out.iterdir()} - {LOCK_FILE}
        save_config(cfg, out / "config.json")
    except OSError as exc:
        if out not in _OPEN and created:
            shutil.rmtree(created[0], ignore_errors=True)
        rollback()
        raise KdxError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    register_root(out, f"kdx {command} --resume {out}")
    return out
