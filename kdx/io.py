"""Atomic file writes (temporary file in the same folder, fsync, rename, fsync of the folder) and
strict JSON (no NaN or Infinity, which are not JSON)."""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from kdx.errors import KdxError

MAX_READ = 64 * 1024 * 1024  # bytes of a JSON/CSV/YAML file kdx reads whole (its own are a few MB at most)
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(path: str | Path, follow: bool = True) -> str | None:
    """What ``path`` is when it is not a regular file (``"a named pipe (FIFO)"``, ...); None for a
    regular file or a path that does not exist (``follow=False``: a symbolic link is not followed)."""
    try:
        mode = os.stat(path).st_mode if follow else os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else "not a regular file"


def check_regular_input(path: str | Path, what: str = "file") -> Path:
    """Refuse an input that is not a regular file (a FIFO would block forever, a device never ends)
    before it is opened; one-line :class:`KdxError`."""
    path = Path(path)
    kind = file_kind(path)
    if kind is not None:
        raise KdxError(f"{what} {path} is {kind}, not a regular file")
    return path


def read_bytes_checked(path: str | Path, what: str = "file", limit: int = MAX_READ) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, opened without blocking (a FIFO
    swapped in after the check does not hang); one-line :class:`KdxError` otherwise."""
    path = check_regular_input(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise KdxError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise KdxError(f"{what} {path} is not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise KdxError(f"{what} {path} is larger than {limit:,} bytes; not a file kdx wrote")
    return data


def read_text_checked(path: str | Path, what: str = "file", limit: int = MAX_READ) -> str:
    """:func:`read_bytes_checked` decoded as UTF-8 (a one-line error naming the byte otherwise)."""
    data = read_bytes_checked(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KdxError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def check_replaceable(path: str | Path) -> None:
    """An atomic write renames over ``path``: refuse when it is a directory, device, FIFO or socket
    (a rename would replace ``/dev/null`` with a regular file). A symbolic link is replaced itself."""
    kind = file_kind(path, follow=False)
    if kind is not None:
        raise KdxError(f"{path} is {kind}; kdx writes only regular files and will not replace it")


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
    check_replaceable(path)
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
