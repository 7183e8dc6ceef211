"""The one training loop every kdx training command uses.

Devices and precision (autocast, fp16 grad scaling), channels_last, seeds,
pure-function lr schedules, per-epoch validation, rich progress, metrics.csv,
atomic safetensors checkpoints (last + best on validation), exact resume (also
mid-epoch), SIGINT/SIGTERM handling and DistributedDataParallel under torchrun.
Methods plug in through a :class:`kdx.engine.task.TrainTask`; nothing here is
method-specific.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import kdx
from kdx.engine import checkpoint as ckpt
from kdx.engine.device import resolve_channels_last, resolve_device, resolve_precision, seed_everything
from kdx.engine.distributed import DistInfo, all_reduce_sum, any_rank, barrier, init_distributed
from kdx.engine.evaluate import evaluate
from kdx.engine.io import atomic_write_csv, atomic_write_text
from kdx.engine.progress import EpochProgress
from kdx.engine.schedule import get_schedule
from kdx.engine.task import TrainTask


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
        # seed before the command builds its models, so initial weights follow --seed
        seed_everything(cfg.seed, cfg.deterministic)
        return cls(device, precision, channels_last, dist)

    def describe(self) -> str:
        text = f"device {self.device}, precision {self.precision.name}, channels_last {'on' if self.channels_last else 'off'}"
        if self.dist.enabled:
            text += f", DDP world size {self.dist.world_size}"
        return text


class Trainer:
    """Train ``task`` on ``bundle`` according to ``cfg``, writing everything into ``run_dir``.

    ``stage``: optional sub-folder name (explainer stages); the run's files then go to
    ``run_dir/stage`` and the progress labels carry the stage name.
    """

    def __init__(self, cfg, task: TrainTask, bundle, run_dir: Path, runtime: Runtime | None = None,
                 schedule: str | None = None, label: str = "train"):
        self.cfg = cfg
        self.task = task
        self.bundle = bundle
        self.run_dir = Path(run_dir)
        self.rt = runtime or Runtime.from_config(cfg)
        self.schedule = get_schedule(schedule or cfg.schedule)
        self.label = label
        self.is_main = self.rt.dist.is_main
        self.progress = EpochProgress(quiet=cfg.quiet, enabled=self.is_main)
        self._stop_signal = 0
        self._old_handlers: dict = {}
        self._records: list[str] = []  # names of the per-epoch long-format reports written so far

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
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=cfg.nesterov)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

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

    # ------------------------------------------------------------------ metadata
    def metadata(self, epoch: int, metrics: dict) -> dict:
        meta = dict(self.task.checkpoint_metadata())
        meta.update(self.bundle.meta())
        meta.update({
            "kdx_version": kdx.__version__,
            "torch_version": torch.__version__,
            "epoch": epoch,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v))},
            "precision": self.rt.precision.name,
            "seed": self.cfg.seed,
        })
        return meta

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        cfg, rt, task = self.cfg, self.rt, self.task
        seed_everything(cfg.seed + rt.dist.rank, cfg.deterministic)
        train_loader, val_loader, test_loader = self._loaders()
        task.to(rt.device)
        if rt.channels_last:
            to_channels_last(task)
        groups = task.param_groups(cfg)
        base_lrs = [g["lr"] for g in groups]
        optimizer = self._optimizer(groups)
        scaler = rt.precision.grad_scaler()
        model_for_step = task
        if rt.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [rt.device.index] if rt.device.type == "cuda" else None
            model_for_step = DDP(task, device_ids=ids)

        out = self.run_dir
        metrics_path = out / "metrics.csv"
        rows: list[dict] = []
        records: dict[str, list[dict]] = {}
        start_epoch, start_step, total_steps = 1, 0, 0
        sums = {"n": 0.0, "correct": 0.0, "loss": 0.0}
        best = {"epoch": 0, "val_top1": -1.0}
        if ckpt.has_resume(out):
            progress, _ = ckpt.load_resume(out, model=task, optimizer=optimizer, scaler=scaler)
            start_epoch, start_step = progress["epoch"], progress["step"]
            total_steps = progress["total_steps"]
            sums = progress["sums"]
            best = progress["best"]
            if start_step >= len(train_loader):  # the epoch had finished
                start_epoch, start_step = start_epoch + 1, 0
                sums = {"n": 0.0, "correct": 0.0, "loss": 0.0}
            if metrics_path.is_file():
                rows = [r for r in pd.read_csv(metrics_path).to_dict("records") if r["epoch"] < start_epoch]
            for name in progress.get("records", []):
                if (out / f"{name}.csv").is_file():
                    frame = pd.read_csv(out / f"{name}.csv")
                    records[name] = frame[frame["epoch"] < start_epoch].to_dict("records")
            self._records = sorted(progress.get("records", []))
            self.progress.log(f"resuming {out} at epoch {start_epoch}, step {start_step}")
        self.progress.log(f"{self.label}: {rt.describe()}, {len(train_loader)} steps/epoch, {cfg.epochs} epochs")

        self._install_signal_handlers()
        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                lrs = self.schedule(epoch, base_lrs, cfg)
                for group, lr in zip(optimizer.param_groups, lrs):
                    group["lr"] = lr
                task.on_epoch_start(epoch)
                task.train()
                loss_names: list[str] = []
                dev_sums: dict[str, torch.Tensor] = {}
                t0 = time.perf_counter()
                images = 0
                self.progress.start_epoch(f"{self.label} {epoch}/{cfg.epochs}", len(train_loader), start_step)
                step = start_step
                for x, y in train_loader.batches(epoch, start_step):
                    with rt.precision.autocast():
                        logits, losses = model_for_step(x, y)
                        loss = sum(losses.values())
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    total_steps += 1
                    images += y.numel()
                    with torch.no_grad():
                        bs = y.numel()
                        for name, value in losses.items():
                            if name not in dev_sums:
                                dev_sums[name] = torch.zeros((), dtype=torch.float64, device=y.device)
                                loss_names.append(name)
                            dev_sums[name] += value.detach().double() * bs
                        dev_sums.setdefault("_loss", torch.zeros((), dtype=torch.float64, device=y.device))
                        dev_sums["_loss"] += loss.detach().double() * bs
                        dev_sums.setdefault("_correct", torch.zeros((), dtype=torch.float64, device=y.device))
                        dev_sums["_correct"] += (logits.argmax(1) == y).sum()
                        dev_sums.setdefault("_n", torch.zeros((), dtype=torch.float64, device=y.device))
                        dev_sums["_n"] += bs
                    if step % 10 == 0 or step == len(train_loader):
                        n = sums["n"] + dev_sums["_n"].item()
                        elapsed = max(time.perf_counter() - t0, 1e-9)
                        self.progress.update(step, (sums["loss"] + dev_sums["_loss"].item()) / max(n, 1),
                                             (sums["correct"] + dev_sums["_correct"].item()) / max(n, 1),
                                             images * rt.dist.world_size / elapsed)
                    reached_max = cfg.max_steps is not None and total_steps >= cfg.max_steps
                    stop = any_rank(bool(self._stop_signal), rt.dist, rt.device) if rt.dist.enabled else bool(self._stop_signal)
                    if stop or (reached_max and step < len(train_loader)):
                        self._fold(sums, dev_sums, loss_names)
                        self._save_resume(task, optimizer, scaler, epoch, step, total_steps, sums, best)
                        self.progress.close()
                        raise TrainingInterrupted(self._stop_signal, out, epoch, step)
                train_seconds = time.perf_counter() - t0
                self._fold(sums, dev_sums, loss_names)
                # ---- end of epoch: reduce train sums over ranks, validate, log, checkpoint
                keys = sorted(k for k in sums if k.startswith("loss_"))
                red = all_reduce_sum([sums["n"], sums["correct"], sums["loss"]] + [sums[k] for k in keys], rt.dist, rt.device)
                n = max(red[0], 1.0)
                row = {"epoch": epoch, "lr": lrs[0]}
                for g, lr in zip(optimizer.param_groups[1:], lrs[1:]):
                    row[f"lr_{g.get('name', 'group')}"] = lr
                row["train_loss"] = red[2] / n
                for k, v in zip(keys, red[3:]):
                    row[f"train_{k}"] = v / n
                row["train_top1"] = red[1] / n
                task.eval()
                predict = task.predict
                if val_loader is not None:
                    vres = evaluate(predict, val_loader, self.bundle.num_classes, rt.precision, rt.dist, rt.device)
                    row.update({"val_loss": vres.loss, "val_top1": vres.top1, "val_top5": vres.top5})
                row.update(task.epoch_metrics(epoch))
                for name, new_rows in task.epoch_records(epoch).items():
                    records.setdefault(name, []).extend(dict(r, epoch=epoch) for r in new_rows)
                row["seconds"] = train_seconds
                row["images_per_s"] = images * rt.dist.world_size / max(train_seconds, 1e-9)
                rows.append(row)
                val_score = row.get("val_top1", None)
                improved = val_score is None or val_score > best["val_top1"]
                if improved:
                    best = {"epoch": epoch, "val_top1": -1.0 if val_score is None else val_score}
                if self.is_main:
                    atomic_write_csv(metrics_path, pd.DataFrame(rows))
                    for name, recs in records.items():
                        frame = pd.DataFrame(recs)
                        atomic_write_csv(out / f"{name}.csv", frame[["epoch"] + [c for c in frame.columns if c != "epoch"]])
                    if improved:
                        ckpt.save_checkpoint(out / ckpt.BEST_FILE, task.model.state_dict(), self.metadata(epoch, row))
                    if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
                        ckpt.save_checkpoint(out / ckpt.MODEL_FILE, task.model.state_dict(), self.metadata(epoch, row))
                sums = {"n": 0.0, "correct": 0.0, "loss": 0.0}
                self._records = sorted(records)
                self._save_resume(task, optimizer, scaler, epoch, len(train_loader), total_steps, sums, best)
                self.progress.end_epoch(self._epoch_line(row))
                start_step = 0
                if self._stop_signal:
                    raise TrainingInterrupted(self._stop_signal, out, epoch, len(train_loader))
                if cfg.max_steps is not None and total_steps >= cfg.max_steps and epoch < cfg.epochs:
                    raise TrainingInterrupted(0, out, epoch, len(train_loader))
        finally:
            self._restore_signal_handlers()
            self.progress.close()

        return self._finish(task, test_loader, val_loader, rows, best)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _fold(sums: dict, dev_sums: dict, loss_names: list[str]) -> None:
        if not dev_sums:
            return
        sums["n"] += dev_sums["_n"].item()
        sums["correct"] += dev_sums["_correct"].item()
        sums["loss"] += dev_sums["_loss"].item()
        for name in loss_names:
            sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + dev_sums[name].item()
        dev_sums.clear()

    def _save_resume(self, task, optimizer, scaler, epoch, step, total_steps, sums, best):
        if self.is_main:
            ckpt.save_resume(self.run_dir, model=task, optimizer=optimizer, scaler=scaler,
                             progress={"epoch": epoch, "step": step, "total_steps": total_steps,
                                       "sums": dict(sums), "best": dict(best),
                                       "records": list(self._records)})
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

    def _finish(self, task, test_loader, val_loader, rows, best) -> dict:
        """Test accuracy of the last and the best (on validation) epoch; results.json."""
        rt, out = self.rt, self.run_dir
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
        }
        last_state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
        if val_loader is not None and (out / ckpt.BEST_FILE).is_file() and best["epoch"] != last_epoch:
            best_state = ckpt.load_state(out / ckpt.BEST_FILE, map_location=rt.device)
            task.model.load_state_dict(best_state)
            test_best = evaluate(task.predict, test_loader, self.bundle.num_classes, rt.precision, rt.dist, rt.device)
            task.model.load_state_dict(last_state)
        else:
            test_best = test_last
        results.update({"test_top1_best": test_best.top1, "test_top5_best": test_best.top5,
                        "val_top1_best": best["val_top1"] if val_loader is not None else None})
        if self.is_main:
            final_row = dict(rows[-1]) if rows else {}
            final_row.update({"test_top1": test_last.top1, "test_top5": test_last.top5})
            ckpt.save_checkpoint(out / ckpt.MODEL_FILE, task.model.state_dict(), self.metadata(last_epoch, final_row))
            if (out / ckpt.BEST_FILE).is_file():
                best_meta = ckpt.read_metadata(out / ckpt.BEST_FILE)
                best_meta["metrics"].update({"test_top1": test_best.top1, "test_top5": test_best.top5})
                state = ckpt.load_state(out / ckpt.BEST_FILE)
                ckpt.save_checkpoint(out / ckpt.BEST_FILE, state, best_meta)
            atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
        barrier(rt.dist)
        return results

