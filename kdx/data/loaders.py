"""Deterministic, resumable, shardable batch loaders.

* Shuffle order of epoch ``e`` = ``randperm`` seeded by (seed, e): identical on every rank.
* Augmentation draws of step ``s`` come from a CPU generator seeded by (seed, e, s, rank)
  (rank 0 in single-process runs), so ``batches(e, start_step=k)`` reproduces the tail of
  ``batches(e)`` exactly. The global RNG is never used.
* Training with ``world_size > 1``: the permutation is padded by wrapping (like
  DistributedSampler) to a multiple of world_size and rank r takes every world_size-th
  element starting at r, so shards are disjoint (apart from the padding) and equal in size.
* Evaluation (``train=False``): sequential order, no augmentation, no dropped batches; with
  world_size > 1 each rank takes a contiguous, non-overlapping chunk WITHOUT padding, so the
  per-rank sample counts (and step counts) may differ by one: reduce sums, not per-step values.
"""

from __future__ import annotations

import math

import torch

from kdx.data.augment import AUG_KEYS, Normalizer, augment_batch
from kdx.data.splits import FolderSplit, TensorSplit
from kdx.errors import KdxError
from kdx.seeding import generator


class _Loader:
    def __init__(self, split, batch_size, *, train, device, seed, augment, mean, std, rank, world_size,
                 drop_last, channels_last):
        if batch_size < 1:
            raise KdxError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise KdxError(f"rank {rank} out of range for world size {world_size}")
        if augment is None:
            augment = dict(split.default_augment) if train else {}
        unknown = set(augment or {}) - AUG_KEYS
        if unknown:
            raise KdxError(f"unknown augmentation option(s) {sorted(unknown)}; valid: {sorted(AUG_KEYS)}")
        mean = split.mean if mean is None else mean
        std = split.std if std is None else std
        if mean is None or std is None:
            raise ValueError("make_loader needs mean and std (e.g. bundle.mean, bundle.std)")
        channels = split.images.shape[1] if isinstance(split, TensorSplit) else 3
        if not len(mean) == len(std) == channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {channels}-channel images")
        self.split, self.batch_size, self.train, self.seed = split, batch_size, train, seed
        self.device = torch.device(device)
        self.augment, self.rank, self.world_size = augment or {}, rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.normalize = Normalizer(mean, std, self.device)
        n = len(split)
        if train:  # shuffled + padded to equal shards
            per_rank = math.ceil(n / world_size)
        else:  # contiguous chunk [start, end)
            self._start, self._end = n * rank // world_size, n * (rank + 1) // world_size
            per_rank = self._end - self._start
        self._per_rank = per_rank
        self.steps = per_rank // batch_size if self.drop_last else math.ceil(per_rank / batch_size)
        if self.drop_last and self.steps == 0 and per_rank > 0:
            raise KdxError(f"batch size {batch_size} exceeds the {per_rank} samples per epoch"
                           f"{' per rank' if world_size > 1 else ''}; use a smaller batch size")
        self.num_samples = self.steps * batch_size if self.drop_last else per_rank

    def __len__(self) -> int:
        return self.steps

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """The sample indices this rank visits in ``epoch``, in order (before dropping the last batch)."""
        n = len(self.split)
        if not self.train:
            return torch.arange(self._start, self._end)
        perm = torch.randperm(n, generator=generator(self.seed, epoch))
        if self.world_size > 1 and n:
            total = self._per_rank * self.world_size
            perm = perm.repeat(math.ceil(total / n))[:total][self.rank::self.world_size]
        return perm

    def _finish(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int):
        """uint8 batch on device -> augmented, normalised float batch (the shared tail of both loaders)."""
        if self.augment:
            g = generator(self.seed, epoch, step, self.rank)
            x = augment_batch(x, self.augment, g)
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _check_start(self, start_step: int):
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} out of range [0, {self.steps}]")

    def __iter__(self):
        return self.batches(0)


class TensorLoader(_Loader):
    """Fast path: the whole uint8 split lives on ``device``; batches are gathered there."""

    def __init__(self, split: TensorSplit, batch_size, **kw):
        super().__init__(split, batch_size, **kw)
        self.images, self.labels = split.to_device(self.device)

    def batches(self, epoch: int, start_step: int = 0, with_index: bool = False):
        """``(x, y)`` per step from ``start_step``; ``with_index``: ``(x, y, index)`` with the
        split-relative dataset indices of the batch (int64, on the loader's device)."""
        self._check_start(start_step)
        order = self.epoch_indices(epoch).to(self.device)
        bs = self.batch_size
        for step in range(start_step, self.steps):
            idx = order[step * bs:(step + 1) * bs]
            x, y = self._finish(self.images.index_select(0, idx), self.labels.index_select(0, idx), epoch, step)
            yield (x, y, idx) if with_index else (x, y)


class FolderLoader(_Loader):
    """Images decoded by a torch DataLoader (PIL, ``num_workers`` processes) in the loader's seeded
    order; the uint8 batches then get the same on-device augmentation as the tensor path."""

    def __init__(self, split: FolderSplit, batch_size, *, num_workers=2, **kw):
        super().__init__(split, batch_size, **kw)
        self.num_workers = num_workers

    def batches(self, epoch: int, start_step: int = 0, with_index: bool = False):
        """As :meth:`TensorLoader.batches`."""
        self._check_start(start_step)
        bs = self.batch_size
        order = self.epoch_indices(epoch)[start_step * bs:self.steps * bs if self.drop_last else None]
        if len(order) == 0:
            return
        dl = torch.utils.data.DataLoader(
            self.split, batch_size=bs, sampler=order.tolist(), num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=False)
        try:
            for step, (x, y) in enumerate(dl, start=start_step):
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                x, y = self._finish(x, y, epoch, step)
                if with_index:
                    lo = (step - start_step) * bs
                    yield x, y, order[lo:lo + len(y)].to(self.device)
                else:
                    yield x, y
        except KdxError as e:  # re-raised from a worker with a traceback: keep the last line
            raise KdxError(str(e).strip().splitlines()[-1].split("KdxError: ", 1)[-1]) from None


def make_loader(split, batch_size: int, *, train: bool, device, seed: int = 0, augment: dict | None = None,
                mean=None, std=None, rank: int = 0, world_size: int = 1, drop_last: bool | None = None,
                num_workers: int = 2, channels_last: bool = False):
    """A loader over ``split`` yielding ``(x float32 normalised N×C×H×W, y int64)`` on ``device``
    (``batches(epoch, start_step, with_index=True)`` adds the batch's dataset indices).

    ``augment=None`` -> the split's dataset defaults when ``train`` else none; ``{}`` disables.
    ``mean``/``std`` default to the dataset's constants. ``num_workers`` only matters for
    file-backed splits (folder datasets, tiny-imagenet).
    """
    kw = dict(train=train, device=device, seed=seed, augment=augment, mean=mean, std=std, rank=rank,
              world_size=world_size, drop_last=drop_last, channels_last=channels_last)
    if isinstance(split, TensorSplit):
        return TensorLoader(split, batch_size, **kw)
    if isinstance(split, FolderSplit):
        return FolderLoader(split, batch_size, num_workers=num_workers, **kw)
    raise TypeError(f"make_loader needs a TensorSplit or FolderSplit, got {type(split).__name__}")
