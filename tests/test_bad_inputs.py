"""Hostile inputs at the command line (issue 13: items 16, 20, 23, 24, 26): one line, exit 2."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from kdx.cli import app
from kdx.data.idx import write_idx

runner = CliRunner()
TINY = ["--arch", "resnet8", "--epochs", "1", "--batch-size", "10", "--device", "cpu", "--quiet"]
IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and "Warning" not in text, text
    assert len(text.splitlines()) == 1 and text.startswith("kdx: error:"), text
    assert pattern in text, text


def idx_dir(d, n=40, bad_label=None):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        if bad_label is not None and count:
            labels[3] = bad_label
        write_idx(d / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte", labels)
    return d


# ------------------------------------------------------------------ item 20: data validated on load
def test_train_teacher_label_out_of_range(tmp_path):
    root = idx_dir(tmp_path / "data", bad_label=200)
    result = invoke("train-teacher", *TINY, "--dataset", "mnist", "--data-root", root, "--out", tmp_path / "r")
    assert_one_line_error(result, "train label 200 at index 3 is outside 0..9")
    assert not (tmp_path / "r" / "results.json").exists()


def test_train_teacher_empty_idx(tmp_path):
    root = idx_dir(tmp_path / "data", n=0)
    result = invoke("train-teacher", *TINY, "--dataset", "mnist", "--data-root", root, "--out", tmp_path / "r")
    assert_one_line_error(result, "the train split has no images")
    assert not (tmp_path / "r" / "results.json").exists()
