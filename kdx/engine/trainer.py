"""The one training loop every kdx training command uses.

Devices and precision (autocast, fp16 grad scaling), channels_last, seeds,
pure-function lr schedules, per-epoch validation, rich progress, metrics.csv,
atomic safetensors checkpoints (last + best on validation), exact resume (also
mid-epoch), SIGINT/SIGTERM handling and DistributedDataParallel under torchrun.
Methods plug in through a :class:`kdx.engine.task.TrainTask`; nothing here is
method-specific.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from kdx.version import __version__
from kdx.engine import checkpoint as ckpt
from kdx.engine import rundir
from kdx.engine.device import (fused_optimizer_kwargs, resolve_channels_last, resolve_device, resolve_precision,
                               seed_everything)
from kdx.engine.distributed import DistInfo, all_reduce_sum, any_rank, barrier, init_distributed
from kdx.engine.evaluate import evaluate
from kdx.io import atomic_write_csv, atomic_write_text, json_dumps, with_reasons
from kdx.engine.metric_log import open_logger
from kdx.engine.progress import EpochProgress
from kdx.engine.schedule import get_schedule
from kdx.engine.task import TrainTask
from kdx.errors import KdxError


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """channels_last for every 4-D parameter/buffer (stacked 5-D expert weights stay as they are)."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module


class TrainingInterrupted(Exception):
    """Raised after a resumable checkpoint was written because of SIGINT/SIGTERM."""

    def __init__(self, signum: int, run_dir: Path, epoch: int, step: int):
        self.signum, self.run_dir, self.epoch, self.step = signum, run_dir, epoch, step
        name = signal.Signals(signum).name if signum else "stop"
        super().__init__(f"{name}: stopped at epoch {epoch}, step {step}; resumable checkpoint written in {run_dir}/resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 1


@dataclass
class Runtime:
    """Resolved device, precision, memory format and process group of a run."""

    device: torch.device
    precision: object
    channels_last: bool
    dist: DistInfo

    @classmethod
    def from_config(cls, cfg) -> "Runtime":
        device_type = "cuda" if str(cfg.device).startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        dist = init_distributed(device_type)
        device = resolve_device(cfg.device, local_rank=dist.local_rank if dist.enabled else None)
        precision = resolve_precision(cfg.precision, device)
        channels_last = resolve_channels_last(cfg.channels_last, device, precision)
        if getattr(cfg, "threads", None):
            # float sums are split over the threads: another count rounds differently, and a
            # short, noisy run can end points apart (docs/reproducing.md)
            torch.set_num_threads(int(cfg.threads))
        # seed before the command builds its models, so initial weights follow --seed
        seed_everything(cfg.seed, cfg.deterministic)
        return cls(device, precision, channels_last, dist)

    def describe(self) -> str:
        text = f"device {self.device}, precision {self.precision.name}, channels_last {'on' if self.channels_last else 'off'}"
        if self.device.type == "cpu":
            text += f", {torch.get_num_threads()} threads"
        if self.dist.enabled:
            text += f", DDP world size {self.dist.world_size}"
        return text


class Trainer:
    """Train ``task`` on ``bundle`` according to ``cfg``, writing everything into ``run_dir``.

    ``cfg`` supplies the optimiser (``optimizer``, ``lr``, ``momentum``, ...), the lr schedule
    (``schedule`` by name), ``epochs``, the stops (``max_steps``, ``max_bad_steps``) and the
    run-time options; ``label`` prefixes the progress lines (e.g. ``explainer stage 1 (kd)``).
    A multi-stage command runs one Trainer per stage, each in its own ``run_dir``.

    :meth:`fit` is split into parts with one job each: :meth:`_build` (loaders, optimiser),
    :meth:`_resume` (the state of an interrupted run), :meth:`_epoch` (the training steps of
    one epoch), :meth:`_step` (one optimiser step), :meth:`_epoch_row` (reduction over ranks,
    validation, the metrics row), :meth:`_write_epoch` (metrics.csv, records, checkpoints) and
    :meth:`_finish` (test accuracy, results.json).
    """

    def __init__(self, cfg, task: TrainTask, bundle, run_dir: Path, runtime: Runtime | None = None,
                 label: str = "train"):
        self.cfg = cfg
        self.task = task
        self.bundle = bundle
        self.run_dir = Path(run_dir)
        self.rt = runtime or Runtime.from_config(cfg)
        self.schedule = get_schedule(cfg.schedule)
        self.label = label
        self.is_main = self.rt.dist.is_main
        self.progress = EpochProgress(quiet=cfg.quiet, enabled=self.is_main)
        self.logger = None  # per-epoch scalar logger (--log), opened by fit()
        self._stop_signal = 0
        self._old_handlers: dict = {}

    # ------------------------------------------------------------------ set-up
    def _loaders(self):
        from kdx.data import make_loader

        rt, cfg, b = self.rt, self.cfg, self.bundle
        common = dict(device=rt.device, seed=cfg.seed, mean=b.mean, std=b.std, rank=rt.dist.rank,
                      world_size=rt.dist.world_size, num_workers=cfg.num_workers, channels_last=rt.channels_last)
        train = make_loader(b.train, cfg.batch_size, train=True, augment=None if cfg.augment else {}, **common)
        val = make_loader(b.val, cfg.eval_batch_size, train=False, **common) if b.val is not None else None
        test = make_loader(b.test, cfg.eval_batch_size, train=False, **common)
        return train, val, test

    def _optimizer(self, groups):
        cfg = self.cfg
        groups = list(groups)
        fused = fused_optimizer_kwargs(groups)  # one kernel per group where torch has it (CPU, CUDA)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=cfg.nesterov, **fused)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)

    def _install_signal_handlers(self):
        def handler(signum, frame):
            if self._stop_signal:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            self.progress.log(f"[yellow]{signal.Signals(signum).name} received: finishing this step, then writing a resumable checkpoint[/]")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass

    def _restore_signal_handlers(self):
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    def _build(self) -> None:
        """Seed, loaders, device placement, the initialisation phase of a fresh run, optimiser, DDP."""
        cfg, rt, task = self.cfg, self.rt, self.task
        seed_everything(cfg.seed + rt.dist.rank, cfg.deterministic)
        self.train_loader, self.val_loader, self.test_loader = self._loaders()
        task.to(rt.device)
        if rt.channels_last:
            to_channels_last(task)
        if not ckpt.has_resume(self.run_dir):
            # a fresh run: the task's initialisation phase (a resumed run had it before its first
            # resume state was written; a run killed during it has no resume state and reruns it)
            task.initialise(self.train_loader, rt)
        groups = task.param_groups(cfg)
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = self._optimizer(groups)
        self.scaler = rt.precision.grad_scaler()
        self.model_for_step = task
        if rt.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.model_for_step = DDP(task, device_ids=ids)

    # ------------------------------------------------------------------ metadata
    def metadata(self, epoch: int, metrics: dict) -> dict:
        meta = dict(self.task.checkpoint_metadata())
        meta.update(self.bundle.meta())
        meta.update({
            "kdx_version": __version__,
            "torch_version": torch.__version__,
            "epoch": epoch,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not (isinstance(v, float) and not math.isfinite(v))},
            "precision": self.rt.precision.name,
            "seed": self.cfg.seed,
        })
        return meta

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train (or continue) the run; returns the contents of results.json."""
        self._build()
        st = self._resume() if ckpt.has_resume(self.run_dir) else LoopState()
        self.progress.log(f"{self.label}: {self.rt.describe()}, {len(self.train_loader)} steps/epoch, {self.cfg.epochs} epochs")
        for message in self.task.warnings() + few_steps_warnings(self.cfg, len(self.train_loader)):
            self.progress.warn(message)
        self.logger = open_logger(self.cfg, self.run_dir, self.is_main)
        rundir.commit(self.run_dir)  # from here on a failure leaves a resumable run, not a rollback
        self._install_signal_handlers()
        try:
            for epoch in range(st.epoch, self.cfg.epochs + 1):
                st.epoch = epoch
                self._run_epoch(st)
        finally:
            self._restore_signal_handlers()
            self.progress.close()
            if self.logger is not None:
                self.logger.close()
        return self._finish(st)

    def _resume(self) -> "LoopState":
        """The loop state of an interrupted run (model, optimiser, scaler and RNG are restored in place)."""
        out, n_steps = self.run_dir, len(self.train_loader)
        progress = ckpt.load_resume(out, model=self.task, optimizer=self.optimizer, scaler=self.scaler)
        ckpt.check_progress_fits(progress, out / ckpt.RESUME_DIR, self.cfg.epochs, n_steps)
        st = LoopState(epoch=progress["epoch"], step=progress["step"], total_steps=progress["total_steps"],
                       sums=progress["sums"], best=progress["best"], bad_steps=progress.get("bad_steps", 0))
        if st.step >= n_steps:  # the epoch had finished
            st.epoch, st.step, st.sums = st.epoch + 1, 0, new_sums()
        st.rows = ckpt.read_epoch_rows(out / "metrics.csv", st.epoch)  # checked: UTF-8, CSV, integer epochs
        for name in progress.get("records", []):
            st.records[name] = ckpt.read_epoch_rows(out / f"{name}.csv", st.epoch)
        self.progress.log(f"resuming {out} at epoch {st.epoch}, step {st.step}")
        return st

    def _run_epoch(self, st: "LoopState") -> None:
        """Train one epoch from ``st.step``, then validate, log and checkpoint it."""
        cfg, epoch, n_steps = self.cfg, st.epoch, len(self.train_loader)
        lrs = self.schedule(epoch, self.base_lrs, cfg)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.task.on_epoch_start(epoch)
        self.task.train()
        train_seconds, images = self._train_steps(st)
        row = self._epoch_row(st, lrs, train_seconds, images)
        self._write_epoch(st, row)
        st.step = 0
        if self._stop_signal:
            raise TrainingInterrupted(self._stop_signal, self.run_dir, epoch, n_steps)
        if cfg.max_steps is not None and st.total_steps >= cfg.max_steps and epoch < cfg.epochs:
            raise TrainingInterrupted(0, self.run_dir, epoch, n_steps)

    def _train_steps(self, st: "LoopState") -> tuple[float, int]:
        """The optimiser steps of epoch ``st.epoch`` from ``st.step``; folds the loss sums into
        ``st.sums``. Returns (seconds, images). A stop request (signal, --max-steps) writes the
        resume state and raises :class:`TrainingInterrupted`."""
        cfg, rt, n_steps = self.cfg, self.rt, len(self.train_loader)
        acc = StepSums()
        t0 = time.perf_counter()
        images = 0
        self.progress.start_epoch(f"{self.label} {st.epoch}/{cfg.epochs}", n_steps, st.step,
                                  later_steps=(cfg.epochs - st.epoch) * n_steps)
        for x, y, index in self.train_loader.batches(st.epoch, st.step, with_index=True):
            self._step(st, acc, x, y, index)
            st.step += 1
            st.total_steps += 1
            images += y.numel()
            if self.progress.due(st.step == n_steps):  # by time, from the first step (a host sync each)
                n = st.sums["n"] + acc.get("_n")
                elapsed = max(time.perf_counter() - t0, 1e-9)
                self.progress.update(st.step, (st.sums["loss"] + acc.get("_loss")) / max(n, 1),
                                     (st.sums["correct"] + acc.get("_correct")) / max(n, 1),
                                     images * rt.dist.world_size / elapsed)
            reached_max = cfg.max_steps is not None and st.total_steps >= cfg.max_steps
            stop = any_rank(bool(self._stop_signal), rt.dist, rt.device) if rt.dist.enabled else bool(self._stop_signal)
            if stop or (reached_max and st.step < n_steps):
                acc.fold_into(st.sums)
                self._save_resume(st)
                self.progress.close()
                raise TrainingInterrupted(self._stop_signal, self.run_dir, st.epoch, st.step)
        acc.fold_into(st.sums)
        return time.perf_counter() - t0, images

    def _step(self, st: "LoopState", acc: "StepSums", x, y, index) -> None:
        """One optimiser step on ``(x, y, index)``; a non-finite loss skips the update (see
        :meth:`_bad_step`)."""
        rt = self.rt
        with rt.precision.autocast():
            logits, losses = self.model_for_step(x, y, index)
            loss = sum(losses.values())
        bad = not bool(torch.isfinite(loss.detach()))
        if rt.dist.enabled:
            bad = any_rank(bad, rt.dist, rt.device)
        if bad:
            self._bad_step(st, losses, loss)
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        acc.add(losses, loss, logits, y)

    def _bad_step(self, st: "LoopState", losses: dict, loss) -> None:
        """A non-finite loss: skip the step; stop once more than ``max_bad_steps`` were seen. The
        run's files stay those of the last good epoch (nothing is written here)."""
        st.bad_steps += 1
        names = [k for k, v in losses.items() if not bool(torch.isfinite(v.detach()).all())]
        what = ", ".join(f"{k} = {float(losses[k].detach().float())}" for k in names) or f"total = {float(loss.detach().float())}"
        where = f"epoch {st.epoch}, step {st.step + 1} (optimizer step {st.total_steps + 1})"
        allowed = int(getattr(self.cfg, "max_bad_steps", 0) or 0)
        if st.bad_steps > allowed:
            self.progress.close()
            raise KdxError(f"non-finite loss at {where}: {what}; stopped after {st.bad_steps} such step(s) "
                           f"(--max-bad-steps {allowed}); the last good checkpoint stays in {self.run_dir}")
        self.progress.log(f"[yellow]non-finite loss at {where}: {what}; step skipped ({st.bad_steps}/{allowed})[/]")

    # ------------------------------------------------------------------ end of an epoch
    def _epoch_row(self, st: "LoopState", lrs: list, train_seconds: float, images: int) -> dict:
        """The epoch's metrics row: train sums reduced over ranks, validation, the task's columns."""
        rt, task, sums = self.rt, self.task, st.sums
        keys = sorted(k for k in sums if k.startswith("loss_"))
        red = all_reduce_sum([sums["n"], sums["correct"], sums["loss"]] + [sums[k] for k in keys], rt.dist, rt.device)
        n = max(red[0], 1.0)
        row = {"epoch": st.epoch, "lr": lrs[0]}
        for g, lr in zip(self.optimizer.param_groups[1:], lrs[1:]):
            row[f"lr_{g.get('name', 'group')}"] = lr
        row["train_loss"] = red[2] / n
        for k, v in zip(keys, red[3:]):
            row[f"train_{k}"] = v / n
        row["train_top1"] = red[1] / n
        task.eval()
        if self.val_loader is not None:
            vres = evaluate(task.predict, self.val_loader, self.bundle.num_classes, rt.precision, rt.dist, rt.device)
            row.update({"val_loss": vres.loss, "val_top1": vres.top1, "val_top5": vres.top5})
        row.update(task.epoch_metrics(st.epoch))
        for name, new_rows in task.epoch_records(st.epoch).items():
            st.records.setdefault(name, []).extend(dict(r, epoch=st.epoch) for r in new_rows)
        row["seconds"] = train_seconds
        row["images_per_s"] = images * rt.dist.world_size / max(train_seconds, 1e-9)
        return row

    def _write_epoch(self, st: "LoopState", row: dict) -> None:
        """Bookkeeping of a finished epoch: best epoch, metrics.csv, records, checkpoints, resume state."""
        cfg, out, epoch, task = self.cfg, self.run_dir, st.epoch, self.task
        if self.is_main:  # the folder or an earlier epoch's metrics.csv deleted mid-run: stop, never "finish"
            rundir.check_intact(out, ("metrics.csv",) if st.rows else ())
        st.rows.append(row)
        val_score = row.get("val_top1", None)
        improved = val_score is None or val_score > st.best["val_top1"]
        if improved:
            st.best = {"epoch": epoch, "val_top1": -1.0 if val_score is None else val_score}
        if self.is_main:
            atomic_write_csv(out / "metrics.csv", pd.DataFrame(st.rows))
            for name, recs in st.records.items():
                frame = pd.DataFrame(recs)
                atomic_write_csv(out / f"{name}.csv", frame[["epoch"] + [c for c in frame.columns if c != "epoch"]])
            if improved:
                ckpt.save_checkpoint(out / ckpt.BEST_FILE, task.model.state_dict(), self.metadata(epoch, row))
            if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
                ckpt.save_checkpoint(out / ckpt.MODEL_FILE, task.model.state_dict(), self.metadata(epoch, row))
            if self.logger is not None:
                self.logger.log_epoch(row)
        st.sums = new_sums()
        st.step = len(self.train_loader)
        self._save_resume(st)
        self.progress.end_epoch(self._epoch_line(row))

    def _save_resume(self, st: "LoopState") -> None:
        if self.is_main:
            ckpt.save_resume(self.run_dir, model=self.task, optimizer=self.optimizer, scaler=self.scaler,
                             progress={"epoch": st.epoch, "step": st.step, "total_steps": st.total_steps,
                                       "sums": dict(st.sums), "best": dict(st.best), "bad_steps": st.bad_steps,
                                       "records": sorted(st.records)})
        barrier(self.rt.dist)

    @staticmethod
    def _epoch_line(row: dict) -> str:
        parts = [f"epoch {row['epoch']:>3}", f"loss {row['train_loss']:.4f}", f"train {row['train_top1']:.2%}"]
        if "val_top1" in row:
            parts.append(f"val {row['val_top1']:.2%}")
        if "tau" in row:
            parts.append(f"tau {row['tau']:.3g}")
        parts.append(f"lr {row['lr']:.3g}")
        parts.append(f"{row['seconds']:.1f}s, {row['images_per_s']:.0f} img/s")
        return "  ".join(parts)

    # ------------------------------------------------------------------ the end of the run
    def _finish(self, st: "LoopState") -> dict:
        """Test accuracy of the last and the best (on validation) epoch; results.json."""
        rt, out, task, rows, best = self.rt, self.run_dir, self.task, st.rows, st.best
        test_loader, val_loader = self.test_loader, self.val_loader
        task.eval()
        last_epoch = rows[-1]["epoch"] if rows else self.cfg.epochs
        test_last = evaluate(task.predict, test_loader, self.bundle.num_classes, rt.precision, rt.dist, rt.device)
        results = {
            "last_epoch": last_epoch,
            "test_top1_last": test_last.top1,
            "test_top5_last": test_last.top5,
            "val_top1_last": rows[-1].get("val_top1") if rows else None,
            "best_epoch": best["epoch"],
            "best_selected_on": "val" if val_loader is not None else "last epoch (no validation split)",
            "cpu_threads": torch.get_num_threads(),
        }
        if val_loader is not None and (out / ckpt.BEST_FILE).is_file() and best["epoch"] != last_epoch:
            last_state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
            task.model.load_state_dict(ckpt.load_state(out / ckpt.BEST_FILE, map_location=rt.device))
            test_best = evaluate(task.predict, test_loader, self.bundle.num_classes, rt.precision, rt.dist, rt.device)
            task.model.load_state_dict(last_state)
        else:
            test_best = test_last
        results.update({"test_top1_best": test_best.top1, "test_top5_best": test_best.top5,
                        "val_top1_best": best["val_top1"] if val_loader is not None else None})
        if self.is_main:
            rundir.check_intact(out, ("metrics.csv",) if rows else ())
            self._write_final(rows, last_epoch, test_last, test_best)
            atomic_write_text(out / "results.json", json_dumps(with_reasons(results), indent=2) + "\n")
        barrier(rt.dist)
        return results

    def _write_final(self, rows: list, last_epoch: int, test_last, test_best) -> None:
        """The last and best checkpoints again, with their test accuracy in the metadata."""
        out, task = self.run_dir, self.task
        final_row = dict(rows[-1]) if rows else {}
        final_row.update({"test_top1": test_last.top1, "test_top5": test_last.top5})
        ckpt.save_checkpoint(out / ckpt.MODEL_FILE, task.model.state_dict(), self.metadata(last_epoch, final_row))
        if (out / ckpt.BEST_FILE).is_file():
            best_meta = ckpt.read_metadata(out / ckpt.BEST_FILE)
            best_meta["metrics"].update({"test_top1": test_best.top1, "test_top5": test_best.top5})
            state = ckpt.load_state(out / ckpt.BEST_FILE)
            ckpt.save_checkpoint(out / ckpt.BEST_FILE, state, best_meta)


MIN_STEPS_PER_EPOCH = 3  # fewer batches an epoch: the schedule, the statistics and the epoch lines mean little


def few_steps_warnings(cfg, steps_per_epoch: int) -> list[str]:
    """A training split of fewer than MIN_STEPS_PER_EPOCH batches (``--max-train-samples`` below
    the batch size times 3, or a tiny dataset), named with the flag that fixes it."""
    if steps_per_epoch >= MIN_STEPS_PER_EPOCH:
        return []
    cause = (f"--max-train-samples {cfg.max_train_samples} with --batch-size {cfg.batch_size}"
             if getattr(cfg, "max_train_samples", None) else f"the training split with --batch-size {cfg.batch_size}")
    return [f"{cause} gives {steps_per_epoch} step{'s' if steps_per_epoch != 1 else ''} per epoch: the learning-rate "
            f"schedule, batch statistics and epoch results mean little; give --max-train-samples at least "
            f"{MIN_STEPS_PER_EPOCH * cfg.batch_size} (or a smaller --batch-size)"]


def new_sums() -> dict:
    return {"n": 0.0, "correct": 0.0, "loss": 0.0}


@dataclass
class LoopState:
    """Where the loop stands: the state a resume restores (``resume/state.json``'s progress)."""

    epoch: int = 1
    step: int = 0  # steps done in ``epoch``
    total_steps: int = 0
    sums: dict = field(default_factory=new_sums)  # host-side train sums of the epoch so far
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_top1": -1.0})
    bad_steps: int = 0
    rows: list = field(default_factory=list)  # metrics.csv rows
    records: dict = field(default_factory=dict)  # long-format records per name


class StepSums:
    """Per-step sums kept on the device (float64; no host sync per step) until folded into the
    host-side sums: ``loss_<name>`` and ``loss`` weighted by batch size, ``correct``, ``n``."""

    def __init__(self):
        self.dev: dict[str, torch.Tensor] = {}
        self.names: list[str] = []

    def _acc(self, key: str, value, like: torch.Tensor) -> None:
        if key not in self.dev:
            self.dev[key] = torch.zeros((), dtype=torch.float64, device=like.device)
        self.dev[key] += value

    @torch.no_grad()
    def add(self, losses: dict, loss, logits, y) -> None:
        bs = y.numel()
        for name, value in losses.items():
            if name not in self.dev:
                self.names.append(name)
            self._acc(name, value.detach().double() * bs, y)
        self._acc("_loss", loss.detach().double() * bs, y)
        self._acc("_correct", (logits.argmax(1) == y).sum(), y)
        self._acc("_n", bs, y)

    def get(self, key: str) -> float:
        return self.dev[key].item() if key in self.dev else 0.0

    def fold_into(self, sums: dict) -> None:
        if not self.dev:
            return
        sums["n"] += self.dev["_n"].item()
        sums["correct"] += self.dev["_correct"].item()
        sums["loss"] += self.dev["_loss"].item()
        for name in self.names:
            sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + self.dev[name].item()
        self.dev.clear()
        self.names.clear()
