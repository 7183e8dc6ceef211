"""Per-epoch scalar logging beside metrics.csv (``--log``): ``csv`` (metrics.csv only, the
default) or ``tensorboard`` (event files in ``RUN/tensorboard``; the optional extra
``pip install 'kdx[tensorboard]'``).

The scalars are the engine's metrics row of each epoch (losses, accuracies, lr, tau, routing
entropy, ...), written under tags grouped by prefix: ``train/loss_kd``, ``val/top1``, ``lr/lr``,
``routing/routing_entropy_l1``, ``run/tau``.
"""

from __future__ import annotations

import math
from pathlib import Path

from kdx.errors import KdxError

LOGGERS = ("csv", "tensorboard")
_SKIP = {"epoch", "seconds", "images_per_s"}


def scalar_tag(column: str) -> str:
    """metrics.csv column -> TensorBoard tag (``train_loss_ce`` -> ``train/loss_ce``)."""
    for prefix in ("train", "val", "test"):
        if column.startswith(prefix + "_"):
            return f"{prefix}/{column[len(prefix) + 1:]}"
    if column == "lr" or column.startswith("lr_"):
        return f"lr/{column}"
    if column.startswith(("routing_", "entropy")):
        return f"routing/{column}"
    return f"run/{column}"


def epoch_scalars(row: dict) -> dict[str, float]:
    """The finite numeric values of a metrics row, by tag (epoch and timings left out)."""
    out = {}
    for k, v in row.items():
        if k in _SKIP or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[scalar_tag(k)] = float(v)
    return out


class TensorBoardLogger:
    """Scalars of every epoch into ``run_dir/tensorboard`` (one event file per session; a
    resumed run appends a new file and TensorBoard merges them by step)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise KdxError("--log tensorboard needs the tensorboard package: pip install 'kdx[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log_epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for tag, value in epoch_scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_logger(cfg, run_dir: Path, is_main: bool = True):
    """The logger ``cfg.log`` asks for (None for ``csv``: metrics.csv is always written)."""
    kind = getattr(cfg, "log", "csv") or "csv"
    if kind not in LOGGERS:
        raise KdxError(f"--log must be one of {', '.join(LOGGERS)}; got '{kind}'")
    if kind == "csv" or not is_main:
        return None
    return TensorBoardLogger(run_dir)


def summary_writer(log_dir: Path | None = None):
    """A TensorBoard ``SummaryWriter`` on ``log_dir`` (one-line error without the package; with
    ``log_dir`` None only the check)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise KdxError("--log tensorboard needs the tensorboard package: pip install 'kdx[tensorboard]'") from None
    return None if log_dir is None else SummaryWriter(log_dir=str(log_dir))


def log_figures(log: str, out: Path, plots: dict, scalars: dict[str, float]) -> None:
    """``--log tensorboard`` of an analysis: each written PNG (``plots``: {label: [(caption, rel path)]})
    as an HWC uint8 image under ``<label>/<file stem>``, plus ``scalars``, into ``out/tensorboard``."""
    if log not in LOGGERS:
        raise KdxError(f"--log must be one of {', '.join(LOGGERS)}; got '{log}'")
    if log == "csv":
        return
    import numpy as np
    from PIL import Image

    writer = summary_writer(Path(out) / "tensorboard")
    for label, items in plots.items():
        for _, rel in items:
            png = (Path(out) / rel).with_suffix(".png")
            if png.is_file():
                arr = np.asarray(Image.open(png).convert("RGB"), dtype=np.uint8)
                writer.add_image(f"{label or 'all'}/{png.stem}", arr, 0, dataformats="HWC")
    for tag, v in scalars.items():
        writer.add_scalar(tag, v, 0)
    writer.close()
