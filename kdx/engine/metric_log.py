"""Per-epoch scalar logging beside metrics.csv (``--log``): ``csv`` (metrics.csv only, the
default), ``tensorboard`` (event files in ``RUN/tensorboard``; the optional extra
``pip install 'kdx[tensorboard]'``) or ``mlflow`` (an MLflow run: params = the resolved config,
metrics per epoch; ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///RUN/mlflow.db``;
``pip install 'kdx[mlflow]'``).

The scalars are the engine's metrics row of each epoch (losses, accuracies, lr, tau, routing
entropy, ...), written under tags grouped by prefix: ``train/loss_kd``, ``val/top1``, ``lr/lr``,
``routing/routing_entropy_l1``, ``run/tau``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from kdx.errors import KdxError

LOGGERS = ("csv", "tensorboard")  # analyze-conflicts' --log
TRAINING_LOGGERS = LOGGERS + ("mlflow",)  # the training commands' --log
MLFLOW_EXPERIMENT = "kdx"
MLFLOW_RECORD = "mlflow.json"  # RUN/mlflow.json: the MLflow run a resumed run goes on logging into
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


class MLflowLogger:
    """The run as an MLflow run: params = the resolved config (``config.json``'s values), the
    metrics of every epoch by tag and step (as TensorBoard's). The run id is kept in
    ``RUN/mlflow.json``, so a resumed run logs on into the same MLflow run."""

    def __init__(self, run_dir: Path, cfg):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise KdxError("--log mlflow needs the mlflow package: pip install 'kdx[mlflow]'") from None
        run_dir = Path(run_dir)
        self.uri = mlflow_uri(cfg, run_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        record = run_dir / MLFLOW_RECORD
        known = json.loads(record.read_text()) if record.is_file() else {}
        if known.get("tracking_uri") == self.uri:
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(MLFLOW_EXPERIMENT)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name,
                                             tags={"kdx.run_dir": str(run_dir.resolve())}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(mlflow_params(cfg).items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        from kdx.io import atomic_write_text

        atomic_write_text(record, json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}, indent=2) + "\n")

    def log_epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        step, now = int(row["epoch"]), int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value in epoch_scalars(row).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def mlflow_uri(cfg, run_dir: Path) -> str:
    """``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else an SQLite store in the run folder."""
    return (getattr(cfg, "mlflow_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}")


def mlflow_params(cfg) -> dict:
    """The resolved config as MLflow params (``config.json``'s values, None as an empty string)."""
    from kdx.configfile import config_to_dict

    return {k: ("" if v is None else v) for k, v in config_to_dict(cfg).items()}


def open_logger(cfg, run_dir: Path, is_main: bool = True):
    """The logger ``cfg.log`` asks for (None for ``csv``: metrics.csv is always written)."""
    kind = getattr(cfg, "log", "csv") or "csv"
    if kind not in TRAINING_LOGGERS:
        raise KdxError(f"--log must be one of {', '.join(TRAINING_LOGGERS)}; got '{kind}'")
    if kind == "csv" or not is_main:
        return None
    return MLflowLogger(run_dir, cfg) if kind == "mlflow" else TensorBoardLogger(run_dir)


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
