"""The engine under abuse (issue 13): file modes, strict JSON, run ownership, locks, transactional
run directories, output paths, non-finite losses, resume hints; and the engine's interfaces for
methods (batch indices, the initialisation phase, task state in resume/), --log tensorboard."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from kdx.commands.common import load_bundle
from kdx.config import TeacherConfig, build_config, config_class
from kdx.engine import checkpoint as ckpt
from kdx import io
from kdx.engine import rundir
from kdx.engine.task import TrainTask
from kdx.engine.trainer import Trainer, TrainingInterrupted
from kdx.errors import KdxError
from test_engine import tiny_cfg  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def cfg_for(out, **kw) -> TeacherConfig:
    """test_engine's tiny resnet8 run, smaller still (100 images, batches of 20, constant lr)."""
    return tiny_cfg(out, **{"batch_size": 20, "max_train_samples": 100, "schedule": "constant", **kw})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(cfg_for(tmp_path_factory.mktemp("b") / "x"))


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def cli(args, capsys) -> tuple[int, str]:
    from kdx.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code, capsys.readouterr().err


# ------------------------------------------------------------------ item 1: file modes


def test_atomic_writes_get_the_umask_mode_and_fsync_the_folder(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(io, "fsync_dir", lambda folder: synced.append(Path(folder)))
    old = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        io.atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    assert synced == [tmp_path, tmp_path]


# ------------------------------------------------------------------ item 27: strict JSON


def test_strict_json_writes_null_and_a_reason():
    with pytest.raises(ValueError):
        io.json_dumps({"top1": float("nan")})
    clean = io.with_reasons({"top1": float("nan"), "top5": 0.5, "stages": {"1": {"loss": float("inf")}}})
    text = io.json_dumps(clean)
    back = json.loads(text)
    assert back["top1"] is None and back["top5"] == 0.5 and "nan" in back["null_reasons"]["top1"]
    assert back["stages"]["1"]["loss"] is None and "inf" in back["stages"]["1"]["null_reasons"]["loss"]


def test_results_json_has_no_nan(tmp_path, bundle, monkeypatch):
    import kdx.engine.trainer as trainer_mod

    real = trainer_mod.evaluate

    def nan_test(predict, loader, *a, **k):  # an empty test split scores NaN
        res = real(predict, loader, *a, **k)
        if loader is trainer.test_loader:
            res.top1 = float("nan")
        return res

    monkeypatch.setattr(trainer_mod, "evaluate", nan_test)
    trainer = Trainer(cfg_for(tmp_path, epochs=1), TrainTask(linear()), bundle, tmp_path)
    trainer.fit()
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["test_top1_last"] is None and "test_top1_last" in data["null_reasons"]


# ------------------------------------------------------------------ item 28: non-finite losses


class NanAt(TrainTask):
    """A task whose loss 'kd' is NaN at the given global steps (counted from 1)."""

    def __init__(self, model, bad_steps):
        super().__init__(model)
        self.bad, self.calls = set(bad_steps), 0

    def forward(self, x, y, index=None):
        self.calls += 1
        logits, losses = super().forward(x, y)
        kd = torch.zeros((), device=x.device)
        losses["kd"] = kd + float("nan") if self.calls in self.bad else kd
        return logits, losses


def test_nan_loss_stops_the_run_naming_step_and_loss_and_keeps_the_last_good_checkpoint(tmp_path, bundle):
    # 100 train samples, batch 20 -> 5 steps per epoch; step 7 = epoch 2, step 2
    task = NanAt(linear(), {7})
    with pytest.raises(KdxError, match=r"epoch 2, step 2 .*kd = nan.*--max-bad-steps 0"):
        Trainer(cfg_for(tmp_path), task, bundle, tmp_path).fit()
    state = load_file(str(tmp_path / ckpt.MODEL_FILE))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert ckpt.read_metadata(tmp_path / ckpt.MODEL_FILE)["epoch"] == 1
    assert json.loads((tmp_path / "resume" / "state.json").read_text())["progress"]["epoch"] == 1
    assert list(pd.read_csv(tmp_path / "metrics.csv")["epoch"]) == [1]


def test_max_bad_steps_tolerates_and_skips(tmp_path, bundle):
    task = NanAt(linear(), {2, 7})
    Trainer(cfg_for(tmp_path, max_bad_steps=2), task, bundle, tmp_path).fit()
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows[["train_loss", "train_loss_kd"]].notna().all().all()
    assert math.isfinite(json.loads((tmp_path / "results.json").read_text())["test_top1_last"])


# ------------------------------------------------------------------ interfaces for methods


class Probe(TrainTask):
    """Records batch indices and initialisation calls; owns a connector (a submodule)."""

    def __init__(self, model, labels):
        super().__init__(model)
        self.connector = nn.Linear(3, 3)
        self.labels, self.seen, self.initialised = labels, [], 0

    def forward(self, x, y, index=None):
        assert index is not None and torch.equal(self.labels[index.cpu()], y.cpu())
        self.seen.append(index.cpu())
        logits, losses = super().forward(x, y)
        losses["conn"] = 1e-3 * self.connector(torch.ones(1, 3)).pow(2).sum()
        return logits, losses

    def param_groups(self, cfg):
        return [{"params": list(self.model.parameters()) + list(self.connector.parameters()), "lr": cfg.lr}]

    def initialise(self, train_loader, runtime):
        self.initialised += 1
        self.steps_seen = len(list(train_loader.batches(1, with_index=True)))


def test_indices_reach_the_task_and_initialise_runs_once_before_a_fresh_run(tmp_path, bundle):
    labels = bundle.train.labels
    task = Probe(linear(), labels)
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg_for(tmp_path, max_steps=7), task, bundle, tmp_path).fit()
    assert task.initialised == 1 and task.steps_seen == 5
    first_epoch = torch.cat(task.seen[:5])
    assert sorted(first_epoch.tolist()) == list(range(100))  # every sample once
    saved = load_file(str(tmp_path / "resume" / "state.safetensors"))
    assert torch.equal(saved["model.connector.weight"], task.connector.weight.detach())
    # resume: no second initialisation; the connector comes back from resume/
    again = Probe(linear(), labels)
    torch.nn.init.zeros_(again.connector.weight)
    Trainer(cfg_for(tmp_path), again, bundle, tmp_path).fit()
    assert again.initialised == 0
    assert not torch.equal(again.connector.weight.detach(), torch.zeros(3, 3))


def test_the_trainer_takes_no_schedule_or_stage():
    """The schedule and the stage belong to the task and the config, not to the loop (function
    lengths are held for the whole package by tests/test_architecture.py)."""
    import inspect

    params = inspect.signature(Trainer).parameters
    assert "cfg" in params and "task" in params  # the signature is the one read
    assert "schedule" not in params and "stage" not in params


# ------------------------------------------------------------------ item 17: the command that owns a run


def test_another_commands_run_is_refused_before_writing(tmp_path, capsys):
    run = tmp_path / "expl"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kdx": {"command": "distill-explainer"}, "out": str(run)}))
    (run / "metrics.csv").write_text("epoch\n1\n")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, err = cli(["train-teacher", "--resume", run], capsys)
    assert code == 2 and err.count("\n") == 1 and "written by 'kdx distill-explainer'" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    with pytest.raises(KdxError, match="written by"):
        rundir.prepare_run_dir(cfg_for(tmp_path / "other", resume=str(run)))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# ------------------------------------------------------------------ item 18: lock


def test_a_second_writer_is_refused_and_a_dead_lock_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / rundir.LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename}))
        code, err = cli(["train-teacher", "--out", run, "--epochs", "1"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"in use by process {live.pid}" in err
        assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK_FILE]  # nothing written
    finally:
        live.kill()
        live.wait()
    # the holder is dead now: the lock is taken over
    rundir.prepare_run_dir(cfg_for(run))
    assert json.loads((run / rundir.LOCK_FILE).read_text())["pid"] == os.getpid()
    rundir.commit(run)
    rundir.release_locks()
    assert not (run / rundir.LOCK_FILE).exists()


# ------------------------------------------------------------------ item 3: failed validation writes nothing


def test_a_command_that_fails_before_training_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "new" / "X"
    code, err = cli(["train-teacher", "--schedule", "cosin", "--out", out], capsys)
    assert code == 2 and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = cli(["train-teacher", "--dataset", "cifar10", "--data-root", empty, "--out", out], capsys)
    assert code == 2 and err.startswith("kdx: error:") and not (tmp_path / "new").exists()
    # the corrected retry is not refused as "already holds a run"
    assert not rundir.holds_run(out)
    # --overwrite of a run that then fails: the old run is back
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"kdx": {"command": "train-teacher"}, "epochs": 3}))
    (old / "metrics.csv").write_text("epoch\n1\n")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    code, err = cli(["train-teacher", "--dataset", "cifar10", "--data-root", empty, "--out", old, "--overwrite"],
                    capsys)
    assert code == 2 and {p.name: p.read_bytes() for p in old.iterdir()} == before


# ------------------------------------------------------------------ item 22: output paths


def test_bad_output_paths_are_one_line_errors(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = {
        "under a file": afile / "run",
        "naming a file": afile,
        "300-char name": tmp_path / ("r" * 300),
        "under /proc": Path("/proc/kdx-test-run"),
    }
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases["unwritable folder"] = locked / "run"
    for what, out in cases.items():
        code, err = cli(["train-teacher", "--out", out, "--epochs", "1"], capsys)
        assert code == 2 and err.startswith("kdx: error: --out") and err.count("\n") == 1, (what, err)
    assert afile.read_text() == "x"


def test_unwritable_output_folder_is_one_line_even_as_root(tmp_path, capsys, monkeypatch):
    """Permissions do not stop root, so the refusal of the file system is simulated: the error path
    is the same one an unwritable or read-only folder takes."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, err = cli(["train-teacher", "--out", locked / "run", "--epochs", "1"], capsys)
    assert code == 2 and err.startswith("kdx: error: --out") and "Permission denied" in err and err.count("\n") == 1
    assert list(locked.iterdir()) == []


# ------------------------------------------------------------------ item 25: the resume command that works


def test_interrupted_explainer_and_pipeline_name_the_resume_that_works(tmp_path, capsys):
    from kdx.cli import handle_errors

    cls = config_class("distill-explainer")
    run = tmp_path / "expl"
    rundir.prepare_run_dir(build_config(cls, cli={"out": str(run)}))
    rundir.commit(run)

    @handle_errors
    def stopped():
        raise TrainingInterrupted(15, run / "stage1", 1, 3)

    with pytest.raises(Exception):
        stopped()
    err = capsys.readouterr().err
    assert f"resume with kdx distill-explainer --resume {run}" in err and "stage1" not in err.split("resume with")[1]
    study = tmp_path / "study"
    rundir.register_root(study, f"kdx pipeline --config {study / 'study.json'} --out {study}")
    assert rundir.resume_hint(study / "seed0" / "explainer-kd" / "stage1") == \
        f"kdx pipeline --config {study / 'study.json'} --out {study}"


# ------------------------------------------------------------------ item 13: --log tensorboard


def test_log_tensorboard_writes_the_epoch_scalars(tmp_path, bundle, monkeypatch):
    added = []

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            added.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    stub = types.ModuleType("torch.utils.tensorboard")
    stub.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", stub)
    Trainer(cfg_for(tmp_path, log="tensorboard"), TrainTask(linear()), bundle, tmp_path).fit()
    tags = {(t, s) for t, _, s in added}
    for tag in ("train/loss", "train/loss_ce", "train/top1", "val/top1", "val/loss", "lr/lr"):
        assert (tag, 1) in tags and (tag, 2) in tags, tag
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert dict((t, v) for t, v, s in added if s == 2)["val/top1"] == rows["val_top1"].iloc[1]


def test_log_tensorboard_without_the_package_is_one_line(tmp_path, bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(KdxError, match=r"pip install 'kdx\[tensorboard\]'"):
        Trainer(cfg_for(tmp_path, log="tensorboard"), TrainTask(linear()), bundle, tmp_path).fit()


# ------------------------------------------------------------------ item 29: kill -9 (slow)


@pytest.mark.slow
def test_kill9_trials(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "kill9_trials.py"), "--trials", "2",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all trials passed" in proc.stdout
