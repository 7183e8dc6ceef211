"""Atomic file writes (temporary file in the same folder, fsync, rename, fsync of the folder) and
strict JSON (no NaN or Infinity, which are not JSON)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """fsync a directory so that a rename in it survives a crash (a no-op where unsupported)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The file gets the mode an ordinary ``open()`` would give it (0666 less the umask: 0644 under
    umask 022; ``mkstemp`` alone makes it 0600), and the folder is fsynced after the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def json_dumps(obj, **kw) -> str:
    """``json.dumps`` that refuses NaN and Infinity (``allow_nan=False``): pass data through
    :func:`with_reasons` first."""
    return json.dumps(obj, allow_nan=False, **kw)


def _not_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def with_reasons(obj, reason: str = "not a finite number ({value}): nothing was evaluated "
                                    "(an empty split) or the model diverged"):
    """A copy of ``obj`` (nested dicts and lists) with every NaN/Inf float replaced by ``None``;
    each dict that had one gains ``null_reasons``: ``{key: why}`` (a reason already given there is kept)."""
    if isinstance(obj, dict):
        out, why = {}, {}
        for k, v in obj.items():
            if _not_finite(v):
                out[k] = None
                why[k] = reason.format(value=v)
            else:
                out[k] = with_reasons(v, reason)
        if why:
            out["null_reasons"] = {**why, **(obj.get("null_reasons") or {})}
        return out
    if isinstance(obj, (list, tuple)):
        return [None if _not_finite(v) else with_reasons(v, reason) for v in obj]
    return obj
