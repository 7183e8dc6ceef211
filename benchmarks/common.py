"""What the benchmark scripts share (they run as ``python benchmarks/NAME.py``, so this folder is on sys.path)."""

from __future__ import annotations

import csv


def write_csv(path: str, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV file with a header; nothing for no rows."""
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
