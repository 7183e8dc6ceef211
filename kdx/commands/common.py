"""Pieces several commands share: loading the dataset of a config, printing results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table

from kdx.engine.progress import table_console


def load_bundle(cfg, dataset: str | None = None):
    from kdx.data import load_dataset

    bundle = load_dataset(dataset or cfg.dataset, root=cfg.data_root, download=cfg.download,
                          val_fraction=cfg.val_fraction, seed=cfg.seed)
    limit = getattr(cfg, "max_train_samples", None)
    if limit is not None and limit < len(bundle.train):
        from kdx.data import stratified_split

        _, keep = stratified_split(bundle.train.labels, limit / len(bundle.train), cfg.seed)
        bundle.train = bundle.train.subset(keep)
    return bundle


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_results(title: str, run_dir: Path, results: dict) -> None:
    table = Table(title=title)
    table.add_column("checkpoint")
    table.add_column("epoch", justify="right")
    table.add_column("val top-1", justify="right")
    table.add_column("test top-1", justify="right")
    table.add_column("test top-5", justify="right")
    table.add_row("last (model.safetensors)", str(results["last_epoch"]), _pct(results.get("val_top1_last")),
                  _pct(results["test_top1_last"]), _pct(results["test_top5_last"]))
    table.add_row(f"best on {results['best_selected_on']} (best.safetensors)", str(results["best_epoch"]),
                  _pct(results.get("val_top1_best")), _pct(results["test_top1_best"]), _pct(results["test_top5_best"]))
    console = table_console()
    console.print(table)
    console.print(f"run directory: {run_dir}")


def paired_delta(frame: pd.DataFrame, method: str, reference: str, col: str) -> pd.Series:
    """Per seed, ``method`` minus ``reference`` (same seed = same initialisation and data order):
    the paired differences whose spread says whether a gap is outside the seed noise."""
    a = frame[frame["method"] == method].set_index("seed")[col]
    b = frame[frame["method"] == reference].set_index("seed")[col]
    both = a.index.intersection(b.index)
    return (pd.to_numeric(a[both]) - pd.to_numeric(b[both])).dropna()


def format_delta(mean, std=None) -> str:
    """A difference of fractions in points: ``+0.25 ± 0.10`` (no std where it is missing or NaN)."""
    if mean is None or mean != mean:
        return "-"
    return f"{100 * mean:+.2f}" + ("" if std is None or std != std else f" ± {100 * std:.2f}")
