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


def _read_json(path: Path, what: str = "file"):
    """A small JSON file kdx wrote, or None when it is missing, not a regular file, not UTF-8 or not JSON."""
    from kdx.io import read_text_checked

    try:
        return json.loads(read_text_checked(path, what, limit=16 * 1024 * 1024))
    except (KdxError, ValueError, RecursionError):
        return None


def finished(path: str | Path) -> bool:
    """Whether the command that writes the directory ``path`` completed.

    Every command writes ``results.json`` last (atomically). It names what must exist beside it:
    ``outputs`` (a list of files), else ``final_checkpoint`` (an explainer run), else the model.
    """
    path = Path(path)
    if not (path / RESULTS_FILE).is_file():
        return False
    results = _read_json(path / RESULTS_FILE)
    if not isinstance(results, dict):
        return False
    needed = results.get("outputs") or [results.get("final_checkpoint") or MODEL_FILE]
    if not isinstance(needed, list):
        return False
    return all(isinstance(n, str) and (path / n).is_file() for n in needed)


def mark_finished(path: str | Path, outputs: list[str], **extra) -> None:
    """The last write of a command whose directory holds no model: ``results.json`` naming its outputs."""
    from kdx.io import atomic_write_text

    atomic_write_text(Path(path) / RESULTS_FILE, json.dumps({**extra, "outputs": list(outputs)}, indent=2) + "\n")


def holds_run(path: Path) -> bool:
    return ((path / "config.json").is_file() or (path / MODEL_FILE).is_file() or has_resume(path)
            or (path / MARKER_FILE).is_file() or (path / RESULTS_FILE).is_file())


# ------------------------------------------------------------------ kdx folders: marker and owner

MARKER_FILE = ".kdx-folder.json"
KIND_RUN, KIND_GROUP, KIND_ANALYSIS = "run", "group", "analysis"
"""A run (training), a group of runs (a study, a ``--compare`` folder) or an analysis folder."""


def write_marker(path: Path, command: str, kind: str = KIND_RUN) -> None:
    """``path/.kdx-folder.json``: the command that owns the folder and its kind (every command writes it)."""
    from kdx.io import atomic_write_text

    atomic_write_text(Path(path) / MARKER_FILE, json.dumps({"command": command, "kind": kind}) + "\n")


def folder_owner(path: str | Path) -> tuple[str, str] | None:
    """``(command, kind)`` of the kdx folder ``path``, None when it is no kdx folder. Read from the
    marker, else (folders of older kdx versions) config.json's record, study.json, or results.json."""
    path = Path(path)
    if not path.is_dir():
        return None
    marker = _read_json(path / MARKER_FILE) if (path / MARKER_FILE).is_file() else None
    if isinstance(marker, dict) and isinstance(marker.get("command"), str):
        return marker["command"], str(marker.get("kind") or KIND_RUN)
    command = run_command(path)
    if command is not None:
        saved = _read_json(path / "config.json") or {}
        group = isinstance(saved, dict) and bool(saved.get("compare") or saved.get("seeds"))
        return command, KIND_GROUP if group else KIND_RUN
    if (path / "study.json").is_file():
        return "pipeline", KIND_GROUP
    results = _read_json(path / RESULTS_FILE) if (path / RESULTS_FILE).is_file() else None
    if isinstance(results, dict) and results.get("kind") == "analysis":
        return "analyze-conflicts", KIND_ANALYSIS
    if holds_run(path) or (path / MARKER_FILE).exists():
        return "an unknown kdx command", KIND_RUN
    return None


def check_owner(out: Path, command: str, flag: str = "--out") -> None:
    """Refuse a folder that another command wrote (``--overwrite`` included), naming that command."""
    owner = folder_owner(out)
    if owner is not None and owner[0] != command:
        raise KdxError(f"{flag} {out} holds the {owner[1]} folder of 'kdx {owner[0]}', not of 'kdx {command}'; "
                       f"kdx never replaces another command's folder (not even with --overwrite): choose another "
                       f"{flag}")


def check_not_inside_run(out: Path, flag: str = "--out") -> None:
    """Refuse an output inside another kdx run or analysis (in its ``resume/``, a stage folder...);
    inside a group of runs (a study, a ``--compare`` folder) is where their steps belong."""
    out = Path(os.path.abspath(out))
    for parent in out.parents:
        owner = folder_owner(parent)
        if owner is not None and owner[1] != KIND_GROUP:
            raise KdxError(f"{flag} {out} is inside {parent}, the {owner[1]} folder of 'kdx {owner[0]}'; "
                           f"write outside it")


# names kdx reads back from its folders: never the target of another output
RESERVED_NAMES = {"config.json", MODEL_FILE, "best.safetensors", "metrics.csv", RESULTS_FILE, "routing.csv",
                  "tree.json", "study.json", "summary.csv", "report.md", "comparison.csv",
                  "comparison_summary.csv", "state.json", "state.safetensors", MARKER_FILE}


def check_output_file(path: str | Path, flag: str, own: tuple[str, ...] = ()) -> Path:
    """Check a file output before any work: a regular file or a new name (never a directory,
    device, FIFO or socket), in an existing, writable folder, and never another run's file: in a
    kdx folder only a name matching ``own`` (fnmatch patterns) may be replaced, and no name kdx
    reads back (config.json, the checkpoints, results.json, ...) may be created."""
    import fnmatch

    from kdx.io import file_kind

    path = Path(path)
    if not str(path) or str(path) in (".", ".."):
        raise KdxError(f"{flag} '{path}': name a file")
    check_names(path, flag)
    kind = file_kind(path)
    if kind is not None:
        raise KdxError(f"{flag} {path} is {kind}; name a regular file to write")
    parent = path.parent if str(path.parent) else Path(".")
    _check_parent(parent, path, flag)
    in_kdx = folder_owner(parent) is not None or any(folder_owner(p) and folder_owner(p)[1] != KIND_GROUP
                                                   for p in Path(os.path.abspath(parent)).parents)
    if in_kdx and not any(fnmatch.fnmatch(path.name, pat) for pat in own):
        if path.exists() or path.name in RESERVED_NAMES or path.name.startswith(".kdx"):
            raise KdxError(f"{flag} {path} is a file of the kdx folder {parent}; kdx will not replace another "
                           f"run's file: choose another name")
    return path


def _check_parent(parent: Path, path: Path, flag: str) -> None:
    if not parent.exists():
        raise KdxError(f"{flag} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise KdxError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KdxError(f"{flag} {path}: the folder {parent} is not writable")


# ------------------------------------------------------------------ which command owns a run

def run_command(path: Path) -> str | None:
    """The command recorded in ``path/config.json`` (None: no config.json, or one without a record)."""
    data = _read_json(Path(path) / "config.json") if (Path(path) / "config.json").is_file() else None
    meta = data.get("kdx") if isinstance(data, dict) else None
    return meta.get("command") if isinstance(meta, dict) and isinstance(meta.get("command"), str) else None


def check_command(path: Path, command: str, flag: str = "--resume") -> None:
    """Refuse a run that another command wrote."""
    owner = run_command(path)
    if owner is not None and owner != command:
        raise KdxError(f"{flag} {path}: this run was written by 'kdx {owner}', not 'kdx {command}'; "
                       f"use 'kdx {owner} --resume {path}' or another --out")


NOT_OPTIONS = {"resume", "config", "print_config", "overwrite"}


def _contradictions(cls, saved: dict, cli: dict, path: Path) -> None:
    """Refuse flags given with ``--resume`` that would change the run (only RESUME_OVERRIDABLE may)."""
    from kdx.configfile import options_of
    from kdx.options import coerce

    opts = options_of(cls)
    if cli.get("out") is not None and Path(str(cli["out"])) != path:
        raise KdxError(f"--resume {path} continues the run where it is; --out {cli['out']} cannot move it "
                       f"(leave out --out)")
    if cli.get("overwrite"):
        raise KdxError(f"--resume {path} and --overwrite contradict each other: pick one")
    for key, value in cli.items():
        if value is None or key in RESUME_OVERRIDABLE or key in NOT_OPTIONS or key == "out" or key not in opts:
            continue
        given = coerce(opts[key], value)
        if key not in saved or coerce(opts[key], saved[key]) != given:
            raise KdxError(f"--resume {path}: {opts[key].flag} {value} differs from the run's "
                           f"{saved.get(key)!r}; a resumed run keeps its options (only "
                           f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_OVERRIDABLE))} may change; "
                           f"--epochs may only grow)")


def config_for_resume(cls, run_dir: str, cli: dict):
    """The saved config of ``run_dir``, with the few options that may change on resume; every saved
    value is checked like a flag, and a flag that contradicts the run is refused."""
    path = Path(run_dir)
    if not str(run_dir).strip():
        raise KdxError("--resume '': name a run directory")
    if not (path / "config.json").is_file():
        raise KdxError(f"--resume {run_dir}: no config.json there, so there is no kdx run to resume")
    check_command(path, command_of(cls))
    saved = read_config_file(path / "config.json")
    _contradictions(cls, saved, cli, path)
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
    data = _read_json(path, "lock") if path.is_file() else None
    return data if isinstance(data, dict) else {}


_HELD: set[Path] = set()


def _publish(lock: Path, content: dict) -> bool:
    """Create ``lock`` atomically with ``content`` already in it: written to a temporary file, then
    hard-linked to the lock's name (which fails if it exists). No reader ever sees an empty lock.
    False: the lock exists."""
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.{content['token']}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(content) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, lock)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            try:
                fd2 = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "w") as fh:
                fh.write(json.dumps(content) + "\n")
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _live_holder(held: dict, me: dict) -> bool:
    pid, host = held.get("pid"), held.get("host")
    return isinstance(pid, int) and not isinstance(pid, bool) and (host != me["host"] or _pid_alive(pid))


def _take_over(lock: Path, seen: dict, me: dict) -> None:
    """Remove the dead holder's lock ``seen``, under a guard (``.kdx.lock.takeover``, itself a
    published lock) so that two processes taking over at once cannot remove each other's new lock."""
    guard = lock.with_name(lock.name + ".takeover")
    if not _publish(guard, me):
        if not _live_holder(_read_lock(guard), me):
            guard.unlink(missing_ok=True)  # a guard left by a process that died in these few lines
        return
    try:
        if _read_lock(lock) == seen:  # still the dead holder's: nobody took it meanwhile
            lock.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def acquire_lock(run_dir: Path, name: str = LOCK_FILE) -> None:
    """Take ``run_dir/.kdx.lock`` (or ``run_dir/name``) for this process; refuse while another live
    process holds it."""
    import secrets

    lock = Path(run_dir) / name
    me = {"pid": os.getpid(), "host": socket.gethostname(), "token": secrets.token_hex(8)}
    for _ in range(20):
        if _publish(lock, me):
            _HELD.add(lock)
            return
        held = _read_lock(lock)
        if held.get("pid") == me["pid"] and held.get("host") == me["host"]:
            _HELD.add(lock)
            return  # this process already holds it
        if _live_holder(held, me):
            pid, host = held["pid"], held.get("host")
            where = f"process {pid}" + ("" if host == me["host"] else f" on {host}")
            raise KdxError(f"{run_dir} is in use by {where} (lock {lock}); wait for it to finish, "
                           f"or delete the lock if that process is gone")
        _take_over(lock, held, me)  # the holder is dead (or the lock unreadable)
    raise KdxError(f"{run_dir}: cannot take the lock {lock} (another process keeps taking it)")


def claim_group_dir(out: Path, wipe, command: str | None = None) -> Path:
    """Open a folder that holds several runs (a ``--compare`` group, a study) for this process.

    A file in the way is refused, and so is a folder inside another run and a run or analysis
    folder of another command (``command``; None: any single run or analysis); an existing folder is
    locked against a second writer before anything changes; ``wipe(out)`` (which may raise a refusal)
    says whether to empty it first (its lock kept); then it is created and locked."""
    out = Path(out)
    if not str(out):
        raise KdxError("--out '': name a folder")
    check_names(out)
    if out.exists() and not out.is_dir():
        raise KdxError(f"--out {out} exists and is not a directory")
    check_not_inside_run(out)
    owner = folder_owner(out)
    if owner is not None and owner[1] != KIND_GROUP and owner[0] != command:
        check_owner(out, command or "pipeline")
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


def check_names(out: Path, flag: str = "--out") -> None:
    limit = 255
    for part in Path(out).parts:
        if len(os.fsencode(part)) > limit:
            raise KdxError(f"{flag} {out}: the name '{part[:40]}...' has {len(os.fsencode(part))} bytes; "
                           f"file names may have at most {limit}")
    if len(os.fsencode(str(os.path.abspath(out)))) > 4000:
        raise KdxError(f"{flag} {str(out)[:40]}...: the path is longer than 4000 bytes")


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


def _check_out(out: Path, command: str, cfg) -> None:
    """The checks of ``--out``/``--resume`` before anything is written."""
    check_names(out)
    if cfg.resume:
        if not (out / "config.json").is_file():
            raise KdxError(f"--resume {out}: no kdx run there (config.json is missing)")
        check_command(out, command)
        check_owner(out, command, "--resume")
        # the trainer continues from resume/ state where there is one (every stage of a
        # multi-stage run has its own) and starts a stage afresh where there is none
    elif out.exists() or out.is_symlink():
        if not out.is_dir():
            raise KdxError(f"--out {out} exists and is not a directory")
        check_owner(out, command)
        if holds_run(out) and not cfg.overwrite:
            raise KdxError(f"--out {out} already holds a run; use --resume {out} to continue it or --overwrite to replace it")
    check_not_inside_run(out, "--resume" if cfg.resume else "--out")


def prepare_run_dir(cfg, main_process: bool = True) -> Path:
    """Check ``cfg.out`` (or ``cfg.resume``), create it, lock it, write its marker and ``config.json``.
    Returns the run directory."""
    for flag, value in (("--out", cfg.out), ("--resume", cfg.resume)):
        if value is not None and not str(value).strip():
            raise KdxError(f"{flag} '': name a run directory")
    out = Path(cfg.resume or cfg.out)
    command = command_of(type(cfg))
    if not main_process:  # rank 0 checks and writes; the others wait at a barrier
        return out
    _check_out(out, command, cfg)
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
        write_marker(out, command, KIND_RUN)
        save_config(cfg, out / "config.json")
    except OSError as exc:
        if out not in _OPEN and created:
            shutil.rmtree(created[0], ignore_errors=True)
        rollback()
        raise KdxError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    register_root(out, f"kdx {command} --resume {out}")
    return out


# ------------------------------------------------------------------ a run that vanishes mid-run

def check_intact(run_dir: Path, files: tuple[str, ...] = ()) -> None:
    """Fail loudly (a one-line KdxError) when the run directory, a lock this process holds on it
    (or on a folder above it) or one of ``files`` (written by earlier epochs) vanished while the
    run trained: a run missing its files is never marked finished."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdxError(f"the run directory {run_dir} vanished while training; nothing more is written there")
    for lock in _HELD:
        if lock.parent == run_dir or lock.parent in run_dir.parents:
            held = _read_lock(lock)
            if held.get("pid") != os.getpid():
                raise KdxError(f"the lock {lock} was removed or taken by another process while training; stopped")
    for name in files:
        if not (run_dir / name).is_file():
            raise KdxError(f"{run_dir / name} vanished while training; stopped (resume with --resume after "
                           f"checking the folder)")
