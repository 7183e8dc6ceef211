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


def test_evaluate_label_out_of_range(tmp_path):
    import torch

    from kdx.models import create_model

    torch.save(create_model("resnet8", num_classes=10, in_channels=1).state_dict(), tmp_path / "w.pth")
    ckpt = tmp_path / "w.safetensors"
    assert invoke("import-checkpoint", tmp_path / "w.pth", "--arch", "resnet8", "--dataset", "mnist",
                  "--out", ckpt).exit_code == 0
    root = idx_dir(tmp_path / "data", bad_label=200)
    result = invoke("evaluate", ckpt, "--dataset", "mnist", "--data-root", root)
    assert_one_line_error(result, "label 200 at index 3 is outside 0..9")


# ------------------------------------------------------------------ items 16, 24, 26: import-checkpoint
@pytest.mark.parametrize("arch,channels", [("MobileNetV2", 1), ("MobileNetV2", 3), ("wrn_16_2", 3), ("resnet8", 1)])
def test_import_sorted_keys_infers_channels_from_the_stem(tmp_path, arch, channels):
    import torch

    from kdx.engine.checkpoint import load_state, read_metadata
    from kdx.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=7, in_channels=channels).eval()
    state = dict(sorted(model.state_dict().items()))  # key order of a safetensors round trip
    torch.save({"model": state}, tmp_path / "sorted.pth")
    out = tmp_path / "m.safetensors"
    result = invoke("import-checkpoint", tmp_path / "sorted.pth", "--arch", arch, "--out", out)
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["num_classes"] == 7 and meta["input_shape"][0] == channels
    loaded = create_model(arch, num_classes=7, in_channels=channels).eval()
    loaded.load_state_dict(load_state(out))
    x = torch.randn(2, channels, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_registry_io_keys_name_stem_and_head():
    from kdx.models import list_models
    from kdx.models.registry import io_keys

    assert io_keys("MobileNetV2") == {"stem": "conv1.0.weight", "head": "classifier.0.weight"}
    assert io_keys("wrn_16_2")["stem"] == "conv1.weight" and io_keys("vgg8")["stem"] == "block0.0.weight"
    assert all(io_keys(a)["stem"] and io_keys(a)["head"] for a in list_models())


@pytest.mark.parametrize("channels,dataset,pattern", [(1, "cifar10", "3-channel images, the weights take 1"),
                                                      (3, "fashion-mnist-mini", "1-channel images, the weights take 3")])
def test_import_refuses_channels_that_do_not_fit_the_dataset(tmp_path, channels, dataset, pattern):
    import torch

    from kdx.models import create_model

    torch.save(create_model("resnet8", num_classes=10, in_channels=channels).state_dict(), tmp_path / "w.pth")
    out = tmp_path / "w.safetensors"
    result = invoke("import-checkpoint", tmp_path / "w.pth", "--arch", "resnet8", "--dataset", dataset, "--out", out)
    assert_one_line_error(result, pattern)
    assert not out.exists()


def test_import_raw_pickle_prints_one_line(tmp_path):
    """A plain pickle (not torch.save) makes torch warn about its protocol: kdx's line must be alone."""
    import pickle
    import subprocess
    import sys

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "raw.pth", "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=4)
    proc = subprocess.run([sys.executable, "-m", "kdx", "import-checkpoint", str(tmp_path / "raw.pth"), "--arch",
                           "resnet8", "--out", str(tmp_path / "o.safetensors")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "pwned" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdx: error: cannot read"), proc.stderr
    assert "weights-only unpickler" in lines[0]


# ------------------------------------------------------------------ item 23: hostile checkpoint metadata
def hostile_checkpoint(path, kdx_text: str):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "kdx", "kdx": kdx_text})
    return path


GOOD = {"kind": "classifier", "arch": "resnet8", "num_classes": 10, "input_shape": [1, 28, 28],
        "dataset": "fashion-mnist-mini", "metrics": {"test_top1": 0.5}, "epoch": 1}


@pytest.mark.parametrize("text,pattern", [
    ("[1, 2, 3]", "must be a JSON object, got a JSON list"),
    ('"hello"', "must be a JSON object, got a JSON string"),
    ("[" * 100000 + "]" * 100000, "nested 100000 levels deep"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "nested 5000 levels deep"),
    ('{"kind": "classifier", "arch": "resnet8", "num_classes": "ten"}', "'num_classes' must be an integer"),
    ('{"kind": "classifier", "arch": "resnet8", "num_classes": 10, "metrics": [1]}', "'metrics' must be an object"),
    ('{"kind": "classifier", "arch": "resnet8", "num_classes": 10, "input_shape": [1, 0, 28]}', "'input_shape'"),
    ('{"kind": "classifier", "arch": "resnet8", "num_classes": 1e400}', "'num_classes'"),
    ('{"kind": "classifier", "arch": "resnet8", "num_classes": 10, "std": [0.0]}', "'std' must be"),
    ('{"kind": "classifier", "arch": "resnet8", "num_classes": 10, "mean": [NaN]}', "'mean' must be"),
    ('{"kind": "classifier", "arch": 8, "num_classes": 10}', "'arch' must be a string"),
    ('{"kind": "classifier", "num_classes": 10}', "lacks field 'arch'"),
    ('{"kind": "classifier", "arch": "resnet8", "num_classes": 2, "class_names": ["a"]}', "1 class names for 2"),
    ('{"kind": "vam-student", "arch": "resnet8", "num_classes": 10, "vam": {"blocks": "x"}}', "vam.blocks"),
    ('{"kind": "explainer", "explainer": {"num_classes": 10, "evil": 1}}', "unknown key 'evil'"),
    ('{"kind": "explainer", "explainer": {"num_classes": 10, "experts": "abc"}}', "explainer.experts"),
    ("{not json", "corrupt kdx metadata"),
])
@pytest.mark.parametrize("command", ["info", "evaluate"])
def test_hostile_metadata_is_one_line(tmp_path, command, text, pattern):
    ckpt = hostile_checkpoint(tmp_path / "h.safetensors", text)
    result = invoke(command, ckpt)
    assert_one_line_error(result, pattern)


def test_metadata_validator_accepts_what_kdx_writes():
    import json

    from kdx.engine.metadata import json_depth, parse_metadata

    assert parse_metadata(json.dumps(GOOD), "x") == GOOD
    assert json_depth('{"a": "[[[[", "b": [[1]]}') == 3  # brackets inside strings do not count
    assert json_depth('{"a": "\\"[[[["}') == 1  # nor after an escaped quote
    meta = dict(GOOD, kind="vam-student", vam={"blocks": 4, "final_tau": 0.5, "routing": "soft"}, teacher=None)
    assert parse_metadata(json.dumps(meta), "x")["vam"]["blocks"] == 4
    meta = {"kind": "explainer", "arch": "kdexplainer", "num_classes": 10, "stage": None, "tree": {"layers": []},
            "explainer": {"num_classes": 10, "in_channels": 1, "image_size": 28, "experts": [2, 4, 8],
                          "widths": None, "head": "ce", "routing": "soft", "tau": 10.0, "dropout": 0.15}}
    assert parse_metadata(json.dumps(meta), "x")["explainer"]["experts"] == [2, 4, 8]
    assert parse_metadata(json.dumps(dict(GOOD, future_field={"any": [1]})), "x")["future_field"] == {"any": [1]}


def test_real_checkpoint_metadata_passes(tmp_path):
    """A checkpoint kdx itself wrote (import-checkpoint) reads back through the validator."""
    import torch

    from kdx.engine.checkpoint import read_metadata
    from kdx.models import create_model

    torch.save(create_model("resnet8", num_classes=10, in_channels=1).state_dict(), tmp_path / "w.pth")
    out = tmp_path / "w.safetensors"
    assert invoke("import-checkpoint", tmp_path / "w.pth", "--arch", "resnet8", "--dataset", "fashion-mnist-mini",
                  "--out", out).exit_code == 0
    meta = read_metadata(out)
    assert meta["class_names"][0] == "T-shirt/top" and meta["input_shape"] == [1, 28, 28]
    result = invoke("info", out)
    assert result.exit_code == 0 and "resnet8" in result.output
