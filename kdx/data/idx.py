"""Reader/writer for the IDX format used by MNIST and Fashion-MNIST (optionally gzipped).

Layout: two zero bytes, a dtype code, the number of dims ``d``, then ``d`` big-endian
uint32 sizes, then the data (big-endian, C order).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kdx.errors import KdxError

_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KdxError(f"cannot read {path}: {e.strerror or e}") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise KdxError(f"{path} is not a valid gzip file (truncated or corrupt: {e})") from None


def read_idx(path) -> torch.Tensor:
    """Parse an IDX file (``.gz`` is decompressed) into a tensor of its stored dtype."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise KdxError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise KdxError(f"{path} is truncated: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims) * dtype.itemsize  # exact (np.prod would wrap on hostile dims)
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "corrupt (trailing bytes)"
        raise KdxError(f"{path} is {what}: dims {list(dims)} need {expected} data bytes, "
                       f"found {len(data) - header}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path, array, compresslevel: int = 9) -> None:
    """Write a uint8/int8 array as IDX; gzipped (reproducibly, mtime=0) if ``path`` ends in .gz."""
    arr = np.ascontiguousarray(np.asarray(array))
    head = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=compresslevel, mtime=0)
    path.write_bytes(data)


def read_idx_pair(images_path, labels_path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,1,H,W uint8) and labels (N int64) from an IDX image/label file pair."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise KdxError(f"{images_path}: expected a 3-d uint8 image array, got {images.dim()}-d {images.dtype}")
    if labels.dim() != 1:
        raise KdxError(f"{labels_path}: expected a 1-d label array, got {labels.dim()}-d")
    if labels.is_floating_point():
        raise KdxError(f"{labels_path}: labels must be integers, got {labels.dtype}")
    if len(labels) != len(images):
        raise KdxError(f"label count {len(labels)} in {labels_path} != image count {len(images)} "
                       f"in {images_path}")
    return images.unsqueeze(1).contiguous(), labels.long()
