"""Build kdx's embedded default dataset ``fashion-mnist-mini`` from the full Fashion-MNIST.

A seeded (seed 0), stratified subset: exactly 600 train and 100 test images per class, kept in
their original order, written as gzipped IDX files (gzip level 9, mtime 0, so the output is
byte-reproducible) plus the Fashion-MNIST LICENSE, into kdx/data/embedded/.

    python scripts/make_mini_dataset.py /path/to/fashion-mnist [--out kdx/data/embedded]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from kdx.data.datasets import IDX_FILES, _find_idx_dir, _load_idx_dir
from kdx.data.idx import write_idx

PER_CLASS = {"train": 600, "t10k": 100}
MAX_BYTES = 4 * 1024 * 1024


def stratified_subset(labels: torch.Tensor, per_class: int, g: torch.Generator) -> torch.Tensor:
    picks = []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has only {len(idx)} images, need {per_class}")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="folder with the four Fashion-MNIST IDX files (.gz or not) and LICENSE")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "kdx" / "data" / "embedded")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    src = _find_idx_dir([args.source])
    if src is None:
        raise SystemExit(f"{args.source}: expected {', '.join(IDX_FILES)} (optionally .gz)")
    g = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in zip(("train", "t10k"), _load_idx_dir(src)):
        keep = stratified_subset(labels, PER_CLASS[prefix], g)
        write_idx(args.out / f"{prefix}-images-idx3-ubyte.gz", images[keep, 0].numpy(), compresslevel=9)
        write_idx(args.out / f"{prefix}-labels-idx1-ubyte.gz", labels[keep].to(torch.uint8).numpy(), compresslevel=9)
        print(f"{prefix}: {len(keep)} images, {torch.bincount(labels[keep]).tolist()} per class")

    license_text = (args.source / "LICENSE").read_text()
    (args.out / "LICENSE").write_text(
        "This is a subset of Fashion-MNIST made by kdx (scripts/make_mini_dataset.py, seed "
        f"{args.seed}): 600 training and 100 test images per class, as gzipped IDX files.\n"
        "The original license follows.\n\n" + license_text)
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"total size of {args.out}: {total} bytes")
    if total > MAX_BYTES:
        raise SystemExit(f"embedded dataset is {total} bytes, over the {MAX_BYTES}-byte budget")


if __name__ == "__main__":
    main()
