"""The engine: configs, schedules, checkpoints, resume, signals, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kdx
from kdx.commands import train_teacher
from kdx.config import TeacherConfig, build_config
from kdx.engine import checkpoint as ckpt
from kdx.engine.schedule import get_schedule
from kdx.engine.task import TrainTask
from kdx.engine.trainer import TrainingInterrupted
from kdx.errors import KdxError

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(out: Path, **kw) -> TeacherConfig:
    """resnet8 on 400 images of the embedded set: a couple of seconds per epoch on CPU."""
    values = dict(out=str(out), arch="resnet8", dataset="fashion-mnist-mini", epochs=2, batch_size=50,
                  max_train_samples=400, val_fraction=0.1, device="cpu", precision="fp32", lr=0.05,
                  schedule="cosine", deterministic=True, quiet=True, seed=3, eval_batch_size=500)
    values.update(kw)
    cfg = build_config(TeacherConfig, cli=values)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------ configs


def test_config_precedence_defaults_preset_file_cli(tmp_path):
    cfg = build_config(TeacherConfig, cli={"out": "x", "preset": "quick"})
    assert cfg.epochs == 15 and cfg.schedule == "cosine" and cfg.momentum == 0.9  # preset over recipe
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "quick"\n[optim]\nepochs = 7\nmilestones = [3, 5]\n')
    cfg = build_config(TeacherConfig, config_file=str(toml), cli={"out": "x", "lr": 0.2})
    assert (cfg.epochs, cfg.milestones, cfg.lr, cfg.batch_size) == (7, [3, 5], 0.2, 128)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"epochs": 3, "milestones": "1,2"}))
    cfg = build_config(TeacherConfig, config_file=str(js), cli={"out": "x", "epochs": 4})
    assert cfg.epochs == 4 and cfg.milestones == [1, 2]


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(KdxError, match="unknown option.*epochz"):
        build_config(TeacherConfig, config_file=str(bad), cli={"out": "x"})
    with pytest.raises(KdxError, match="unknown preset 'fast'.*quick"):
        build_config(TeacherConfig, cli={"out": "x", "preset": "fast"})
    with pytest.raises(KdxError, match="--epochs must be >= 1"):
        build_config(TeacherConfig, cli={"out": "x", "epochs": -1}).validate()
    with pytest.raises(KdxError, match="--lr must be > 0"):
        build_config(TeacherConfig, cli={"out": "x", "lr": 0}).validate()
    with pytest.raises(KdxError, match="--epochs must be an integer"):
        build_config(TeacherConfig, cli={"out": "x", "epochs": 2.5})


def test_schedules():
    class C:
        epochs, milestones, gamma, warmup_epochs, halve_every = 240, [150, 180, 210], 0.1, 0, 30

    ms = get_schedule("multistep")
    assert ms(150, [0.05], C)[0] == pytest.approx(0.05)
    assert ms(151, [0.05], C)[0] == pytest.approx(0.005)
    assert ms(240, [0.05], C)[0] == pytest.approx(0.05e-3)
    cos = get_schedule("cosine")
    assert cos(1, [1.0], C)[0] == pytest.approx(1.0)
    assert cos(240, [1.0], C)[0] < 1e-3
    assert get_schedule("halving")(61, [0.05, 0.1], C) == pytest.approx([0.0125, 0.025])
    # authors' stage 2: halved before epochs 30, 60, ... (their `epoch % 30 == 0`, epochs from 1)
    halving = [get_schedule("halving")(e, [0.05], C)[0] for e in (1, 29, 30, 31, 59, 60, 61)]
    assert halving == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125])
    with pytest.raises(KdxError, match="valid schedules"):
        get_schedule("linear")


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_roundtrip_and_errors(tmp_path):
    from kdx.models import create_model

    model = create_model("resnet8", num_classes=10, in_channels=1)
    meta = {"kind": "classifier", "arch": "resnet8", "num_classes": 10, "input_shape": [1, 28, 28], "epoch": 3}
    path = ckpt.save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), meta)
    loaded, got = kdx.load(path)
    assert got["epoch"] == 3 and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    # a checkpoint whose shapes do not fit the arch
    bad = dict(meta, arch="resnet14")
    ckpt.save_checkpoint(tmp_path / "bad.safetensors", model.state_dict(), bad)
    with pytest.raises(KdxError, match="does not fit arch 'resnet14'"):
        kdx.load(tmp_path / "bad.safetensors")
    wide = create_model("resnet8", num_classes=100, in_channels=1).state_dict()
    ckpt.save_checkpoint(tmp_path / "wide.safetensors", wide, meta)
    with pytest.raises(KdxError, match="'fc.weight' has shape"):
        kdx.load(tmp_path / "wide.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(KdxError, match="cannot read checkpoint"):
        kdx.load(tmp_path / "corrupt.safetensors")
    # no temporary files are left behind by atomic writes
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ training, resume, signals


def test_train_writes_run_directory(tmp_path):
    cfg = tiny_cfg(tmp_path / "run")
    results = train_teacher.run(cfg)
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "best.safetensors", "metrics.csv", "results.json",
                 "resume/state.json", "resume/state.safetensors"):
        assert (run / name).is_file(), name
    import pandas as pd

    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows["epoch"]) == [1, 2]
    for col in ("train_loss", "train_loss_ce", "train_top1", "val_top1", "val_loss", "lr", "seconds", "images_per_s"):
        assert col in rows.columns, col
    model, meta = kdx.load(run)
    assert meta["kind"] == "classifier" and meta["arch"] == "resnet8" and meta["epoch"] == 2
    assert meta["input_shape"] == [1, 28, 28] and meta["dataset"] == "fashion-mnist-mini"
    assert 0 <= meta["metrics"]["test_top1"] <= 1 and "mean" in meta and "kdx_version" in meta
    assert 0 <= results["test_top1_best"] <= 1 and results["best_selected_on"] == "val"
    saved = json.loads((run / "config.json").read_text())
    assert saved["arch"] == "resnet8" and saved["epochs"] == 2


def test_resume_equals_uninterrupted(tmp_path):
    full = tiny_cfg(tmp_path / "full")
    train_teacher.run(full)
    # 400 train samples -> 360 after validation -> 8 steps per epoch; stop mid-epoch 1
    part = tiny_cfg(tmp_path / "part", max_steps=5)
    with pytest.raises(TrainingInterrupted) as info:
        train_teacher.run(part)
    assert (info.value.epoch, info.value.step) == (1, 5)
    assert ckpt.has_resume(tmp_path / "part") and not (tmp_path / "part" / "metrics.csv").exists()
    from kdx.engine.rundir import config_for_resume

    resumed = config_for_resume(TeacherConfig, str(tmp_path / "part"), {"max_steps": 11})
    with pytest.raises(TrainingInterrupted):  # stops again in epoch 2
        train_teacher.run(resumed)
    resumed = config_for_resume(TeacherConfig, str(tmp_path / "part"), {})
    resumed.max_steps = None
    train_teacher.run(resumed)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    import pandas as pd

    ma = pd.read_csv(tmp_path / "full" / "metrics.csv")
    mb = pd.read_csv(tmp_path / "part" / "metrics.csv")
    assert list(mb["epoch"]) == [1, 2]
    assert ma["train_loss"].tolist() == pytest.approx(mb["train_loss"].tolist(), rel=1e-12)
    assert ma["val_top1"].tolist() == mb["val_top1"].tolist()


class SignalAtStep(TrainTask):
    """Sends SIGINT to this process during the given step (as a user's Ctrl-C would)."""

    def __init__(self, model, at_step):
        super().__init__(model)
        self.at_step, self.calls = at_step, 0

    def forward(self, x, y, index=None):
        self.calls += 1
        if self.calls == self.at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x, y)


def test_sigint_finishes_step_and_writes_resumable_checkpoint(tmp_path, monkeypatch):
    from kdx.engine.trainer import Trainer
    from kdx.commands.common import load_bundle
    from kdx.models import create_model

    cfg = tiny_cfg(tmp_path / "sig")
    bundle = load_bundle(cfg)
    task = SignalAtStep(create_model("resnet8", num_classes=10, in_channels=1), at_step=3)
    (tmp_path / "sig").mkdir()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as info:
        Trainer(cfg, task, bundle, tmp_path / "sig").fit()
    assert info.value.signum == signal.SIGINT and info.value.exit_code == 130
    assert (info.value.epoch, info.value.step) == (1, 3)  # the step in flight was finished
    state = json.loads((tmp_path / "sig" / "resume" / "state.json").read_text())
    assert state["progress"]["step"] == 3 and state["progress"]["total_steps"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdx",
           "train-teacher", "--arch", "resnet8", "--epochs", "1", "--batch-size", "32", "--max-train-samples", "256",
           "--device", "cpu", "--precision", "fp32", "--quiet", "--out", str(out), "--lr", "0.05",
           "--schedule", "constant"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP world size 2" in proc.stderr
    import pandas as pd

    rows = pd.read_csv(out / "metrics.csv")
    assert len(rows) == 1  # only rank 0 wrote
    # 256 samples -> 230 train after the validation split; 2 ranks x batch 32 -> 4 steps of 64 images
    model, meta = kdx.load(out)
    assert meta["epoch"] == 1
    state = json.loads((out / "resume" / "state.json").read_text())
    assert state["progress"]["step"] == 4
    assert not list(out.glob(".*.tmp"))


def test_threads_option_sets_and_records_the_cpu_thread_count(tmp_path):
    """--threads N sets torch's intra-op thread count for the run and results.json records it:
    float sums split over another number of threads round differently (docs/reproducing.md)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        results = train_teacher.run(tiny_cfg(tmp_path / "one", threads=1))
        assert torch.get_num_threads() == 1 and results["cpu_threads"] == 1
        assert json.loads((tmp_path / "one" / "results.json").read_text())["cpu_threads"] == 1
        assert json.loads((tmp_path / "one" / "config.json").read_text())["threads"] == 1
        results = train_teacher.run(tiny_cfg(tmp_path / "default"))  # unset: the count is left as it is
        assert results["cpu_threads"] == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
