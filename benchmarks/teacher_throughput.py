"""Training throughput of the kdx engine against a plain PyTorch loop, in one process.

Baseline: the loop most CIFAR/Fashion-MNIST code uses: a torchvision-style Dataset that
turns each image into a PIL image and applies per-image transforms (RandomCrop with
padding, RandomHorizontalFlip, ToTensor, Normalize), a DataLoader with workers, fp32,
NCHW. kdx: the real :class:`kdx.engine.trainer.Trainer` (on-device batch augmentation,
bf16 autocast where the CPU has it, channels_last), reading images/s of a timed epoch
from its metrics.csv. Same model, same data, same batch size; the ratio is printed.

    python benchmarks/teacher_throughput.py [--arch resnet20] [--images 8192] [--data DIR]

``--data`` is a folder with the four Fashion-MNIST IDX files (default
../shared/data/fashion-mnist when present, else the embedded mini set).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from kdx.commands import train_teacher
from kdx.config import TeacherConfig, build_config
from kdx.data import load_dataset
from kdx.models import create_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


class PerImageDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.FashionMNIST does: uint8 -> PIL -> per-image transforms."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i, 0].numpy(), mode="L")
        return self.transform(img), int(self.labels[i])


def baseline_images_per_s(arch, images, labels, mean, std, batch_size, workers, epochs=2) -> float:
    tf = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(PerImageDataset(images, labels, tf), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    rate = 0.0
    for epoch in range(epochs):  # the first epoch warms up; the last is timed
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += y.numel()
        rate = n / (time.perf_counter() - t0)
    return rate


def kdx_images_per_s(arch, data_root, dataset, n_images, batch_size, precision="auto", channels_last="auto") -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(TeacherConfig, cli=dict(
            out=str(Path(tmp) / "run"), arch=arch, dataset=dataset, data_root=data_root, epochs=2,
            batch_size=batch_size, max_train_samples=n_images, val_fraction=0.1, device="cpu", precision=precision,
            channels_last=channels_last, quiet=True, schedule="constant", lr=0.05))
        train_teacher.run(cfg)
        rows = pd.read_csv(Path(tmp) / "run" / "metrics.csv")
        return float(rows["images_per_s"].iloc[-1])  # epoch 2: warmed up


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--images", type=int, default=8192, help="training images per timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_dir() else None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = "fashion-mnist" if args.data else "fashion-mnist-mini"
    bundle = load_dataset(dataset, root=args.data, val_fraction=0.1, seed=1029)
    n = min(args.images, len(bundle.train))
    images, labels = bundle.train.images[:n], bundle.train.labels[:n]
    print(f"{args.arch}, {dataset}, {n} training images per epoch, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")

    base = baseline_images_per_s(args.arch, images, labels, bundle.mean, bundle.std, args.batch_size, args.workers)
    print(f"plain loop: {base:.1f} images/s", flush=True)
    best = kdx_images_per_s(args.arch, args.data, dataset, n, args.batch_size)
    print(f"kdx engine (auto precision/memory format): {best:.1f} images/s, ratio {best / base:.2f}x", flush=True)
    fp32 = kdx_images_per_s(args.arch, args.data, dataset, n, args.batch_size, precision="fp32",
                            channels_last="off")
    print(f"kdx engine (fp32, NCHW): {fp32:.1f} images/s, ratio {fp32 / base:.2f}x", flush=True)
    table = pd.DataFrame([
        {"loop": "plain (per-image transforms, DataLoader, fp32)", "images/s": base, "ratio": 1.0},
        {"loop": "kdx engine, fp32, NCHW", "images/s": fp32, "ratio": fp32 / base},
        {"loop": "kdx engine, auto (bf16 + channels_last here)", "images/s": best, "ratio": best / base},
    ])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"ratio kdx/plain: {best / base:.2f}x")


if __name__ == "__main__":
    main()
