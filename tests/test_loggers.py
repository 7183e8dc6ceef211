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
