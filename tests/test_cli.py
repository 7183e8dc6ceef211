"""The command line: help, version, evaluate/info/import, and one test per user error."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import kdx
from kdx.cli import app

runner = CliRunner()
TINY = ["--arch", "resnet8", "--epochs", "1", "--max-train-samples", "200", "--batch-size", "50",
        "--device", "cpu", "--quiet"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("kdx: error:")]
    assert len(lines) == 1, text
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    result = invoke("train-teacher", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_help_lists_commands_and_version():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("train-teacher", "distill-explainer", "analyze-conflicts", "train-vam-student", "evaluate",
                 "info", "import-checkpoint"):
        assert name in result.output
    result = invoke("--version")
    assert result.exit_code == 0 and kdx.__version__ in result.output
    result = invoke("train-teacher", "--help")
    assert result.exit_code == 0 and "--weight-decay" in result.output and "--resume" in result.output


def test_evaluate_json_info_and_per_class_csv(teacher_run):
    result = invoke("evaluate", teacher_run, "--dataset", "fashion-mnist-mini", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert 0 <= data["top1"] <= data["top5"] <= 1 and data["count"] == 1000
    import pandas as pd

    per_class = pd.read_csv(data["per_class_csv"])
    assert len(per_class) == 10 and per_class["total"].sum() == 1000
    assert per_class["correct"].sum() / 1000 == pytest.approx(data["top1"])
    # the metadata's test accuracy is the same number
    assert kdx.load(teacher_run)[1]["metrics"]["test_top1"] == pytest.approx(data["top1"], abs=0.02)
    result = invoke("evaluate", teacher_run, "--split", "val", "--json")
    assert result.exit_code == 0 and json.loads(result.output.strip().splitlines()[-1])["count"] == 600
    result = invoke("info", teacher_run)
    assert result.exit_code == 0 and "resnet8" in result.output and "fashion-mnist-mini" in result.output


def test_import_repdistiller_checkpoint_roundtrip(tmp_path):
    from kdx.models import create_model

    model = create_model("resnet8", num_classes=10, in_channels=1).eval()
    pth = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": model.state_dict(), "epoch": 240}, pth)
    out = tmp_path / "imported.safetensors"
    result = invoke("import-checkpoint", pth, "--arch", "resnet8", "--out", out, "--dataset", "fashion-mnist-mini")
    assert result.exit_code == 0, result.output
    loaded, meta = kdx.load(out)
    assert meta["num_classes"] == 10 and meta["input_shape"] == [1, 28, 28] and meta["dataset"] == "fashion-mnist-mini"
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    # a bare state dict works too; a file with code in it is refused by weights_only
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert invoke("import-checkpoint", tmp_path / "bare.pth", "--arch", "resnet8", "--out",
                  tmp_path / "b.safetensors").exit_code == 0

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    result = invoke("import-checkpoint", tmp_path / "evil.pth", "--arch", "resnet8", "--out", tmp_path / "e.safetensors")
    assert_one_line_error(result, "weights_only")
    assert "pwned" not in result.output


# ------------------------------------------------------------------ one test per user error


def test_error_unknown_arch(tmp_path):
    assert_one_line_error(invoke("train-teacher", "--arch", "resnet9", "--out", tmp_path / "x"), "valid archs: MobileNetV2")


def test_error_unknown_dataset(tmp_path):
    assert_one_line_error(invoke("train-teacher", *TINY, "--dataset", "imagenet22k", "--out", tmp_path / "x"),
                          "valid datasets")


def test_error_missing_dataset_files(tmp_path):
    result = invoke("train-teacher", *TINY, "--dataset", "fashion-mnist", "--data-root", tmp_path, "--out", tmp_path / "x")
    assert_one_line_error(result, "train-images-idx3-ubyte")


def test_error_corrupt_dataset_files(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    result = invoke("train-teacher", *TINY, "--dataset", "fashion-mnist", "--data-root", root, "--out", tmp_path / "x")
    assert_one_line_error(result, "idx")


def test_error_checkpoint_does_not_fit_arch(tmp_path):
    from kdx.models import create_model

    torch.save({"model": create_model("resnet14", num_classes=10).state_dict()}, tmp_path / "r14.pth")
    result = invoke("import-checkpoint", tmp_path / "r14.pth", "--arch", "resnet8", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(result, "does not fit arch 'resnet8'")


def test_error_out_holds_a_run(teacher_run):
    result = invoke("train-teacher", *TINY, "--out", teacher_run)
    assert_one_line_error(result, "already holds a run")
    assert "--resume" in result.output and "--overwrite" in result.output


def test_error_cuda_absent(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("train-teacher", "--arch", "resnet8", "--device", "cuda", "--out", tmp_path / "x")
    assert_one_line_error(result, "CUDA is not available")
    result = invoke("train-teacher", "--arch", "resnet8", "--device", "cuda:1", "--out", tmp_path / "y")
    assert_one_line_error(result, "--device cuda:1 was asked for")  # the device as given, not "cuda"


@pytest.mark.parametrize("flag,value,pattern", [("--epochs", "-3", "epochs must be >= 1"),
                                                 ("--lr", "0", "lr must be > 0"),
                                                 ("--lr", "-0.1", "lr must be > 0"),
                                                 ("--batch-size", "0", "batch-size must be >= 1"),
                                                 ("--val-fraction", "1.5", "val-fraction")])
def test_error_invalid_numbers(tmp_path, flag, value, pattern):
    assert_one_line_error(invoke("train-teacher", "--arch", "resnet8", flag, value, "--out", tmp_path / "x"), pattern)


def test_error_missing_checkpoint(tmp_path):
    assert_one_line_error(invoke("evaluate", tmp_path / "nope.safetensors"), "not found")
    assert_one_line_error(invoke("info", tmp_path), "no checkpoint in run directory")


def test_error_evaluate_wrong_dataset(teacher_run, tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (28, 28), (i * 40, 0, 0)).save(d / f"{i}.png")
    result = invoke("evaluate", teacher_run, "--dataset", f"folder:{tmp_path / 'imgs'}")
    assert_one_line_error(result, "predicts 10 classes but dataset")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdx", "train-teacher", "--arch", "nope", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("kdx: error: unknown arch 'nope'")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_kdx_without_arguments_prints_help_and_no_empty_error(capsys):
    from kdx.cli import main

    with pytest.raises(SystemExit) as exc:
        main([])
    captured = capsys.readouterr()
    assert exc.value.code == 0 and "Usage: kdx" in captured.out
    assert "kdx: error" not in captured.err
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2 and "kdx: error: No such command" in capsys.readouterr().err
