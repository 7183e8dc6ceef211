"""``--log tensorboard`` for real (issue 21, item 6): tensorboard comes with the test extras, so the
documented flag is exercised end to end and its scalars are read back with tensorboard's own reader."""

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from kdx.cli import app
from kdx.engine.metric_log import scalar_tag


def test_test_extras_install_tensorboard():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("tensorboard") for r in project["optional-dependencies"]["test"])


def test_log_tensorboard_writes_every_epoch_scalar(tmp_path):
    pytest.importorskip("tensorboard", reason="installed by the test extras: pip install -e '.[test]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "t"
    r = CliRunner().invoke(app, ["train-teacher", "--arch", "resnet8", "--epochs", "2", "--max-train-samples", "150",
                                 "--batch-size", "50", "--device", "cpu", "--quiet", "--log", "tensorboard",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    metrics = pd.read_csv(out / "metrics.csv")
    for column in ("train_loss", "train_top1", "val_top1", "lr"):
        tag = scalar_tag(column)
        assert tag in tags, (tag, sorted(tags))
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expect = [(int(row.epoch), float(getattr(row, column))) for row in metrics.itertuples()]
        assert [s for s, _ in logged] == [s for s, _ in expect]
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(logged, expect))


def test_log_mlflow_params_are_the_config_and_metrics_read_back(tmp_path):
    """--log mlflow into the default store (sqlite:///RUN/mlflow.db), read back with MLflow's client;
    a run stopped by --max-steps and resumed logs on into the same MLflow run."""
    pytest.importorskip("mlflow", reason="pip install 'kdx[mlflow]'")
    import json

    from mlflow.tracking import MlflowClient

    out = tmp_path / "t"
    args = ["train-teacher", "--arch", "resnet8", "--epochs", "2", "--max-train-samples", "150", "--batch-size", "50",
            "--device", "cpu", "--quiet", "--log", "mlflow", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--max-steps", "3"])  # epoch 1 (3 steps), then stop
    assert r.exit_code == 0, r.output
    first = json.loads((out / "mlflow.json").read_text())
    r = CliRunner().invoke(app, ["train-teacher", "--resume", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads((out / "mlflow.json").read_text())
    assert record == first and record["tracking_uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    config = json.loads((out / "config.json").read_text())
    config.pop("kdx")
    session = {"resume", "max_steps"}  # the first session's: --max-steps 3, no --resume
    assert run.data.params["max_steps"] == "3" and run.data.params["resume"] == ""
    assert {k: v for k, v in run.data.params.items() if k not in session} == {
        k: "" if v is None else str(v) for k, v in config.items() if k not in session}
    metrics = pd.read_csv(out / "metrics.csv")
    for column in ("train_loss", "val_top1", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, scalar_tag(column)))
        expect = [(int(row.epoch), float(getattr(row, column))) for row in metrics.itertuples()]
        assert [s for s, _ in history] == [1, 2] == [s for s, _ in expect]
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(history, expect))


def test_mlflow_uri_option_and_environment(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from kdx.engine.metric_log import mlflow_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(SimpleNamespace(mlflow_uri=None), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert mlflow_uri(SimpleNamespace(mlflow_uri=None), tmp_path) == "http://example:5000"
    assert mlflow_uri(SimpleNamespace(mlflow_uri="sqlite:///x.db"), tmp_path) == "sqlite:///x.db"


def test_log_mlflow_without_the_package_is_one_line(tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    from kdx.engine.metric_log import open_logger
    from kdx.errors import KdxError

    for name in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(KdxError, match=r"pip install 'kdx\[mlflow\]'"):
        open_logger(SimpleNamespace(log="mlflow", mlflow_uri=None), tmp_path)
