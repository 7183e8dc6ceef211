"""The model zoo: RepDistiller state-dict layout, forward/backward, feature hooks, registry."""

import csv
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdx.errors import KdxError
from kdx.models import FeatureHooks, create_model, extract_features, get_model_meta, list_models

LAYOUT_TSV = Path(__file__).parent / "data" / "zoo_state_dict_layout.tsv"


def _load_layout() -> dict[str, dict[str, tuple]]:
    layout: dict[str, dict[str, tuple]] = defaultdict(dict)
    with LAYOUT_TSV.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            assert row["num_classes"] == "100"
            shape = () if row["shape"] == "scalar" else tuple(int(s) for s in row["shape"].split("x"))
            layout[row["arch"]][row["key"]] = shape
    return dict(layout)


LAYOUT = _load_layout()
ARCHS = sorted(LAYOUT)


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _hooks_empty(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- registry

def test_the_26_repdistiller_archs_are_registered():
    """The layout TSV holds RepDistiller's 26 architectures, and all are registered. Other
    registered architectures (a new family) are not in it: tests/test_contracts.py covers them."""
    assert len(ARCHS) == 26
    assert set(ARCHS) <= set(list_models()) and list_models() == sorted(list_models())


def test_unknown_arch_raises_kdx_error_listing_valid_names():
    with pytest.raises(KdxError) as info:
        create_model("resnet9000")
    msg = str(info.value)
    assert "resnet9000" in msg
    assert all(name in msg for name in ARCHS)


def test_bad_sizes_raise():
    with pytest.raises(KdxError):
        create_model("resnet8", num_classes=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_meta(arch):
    meta = get_model_meta(arch)
    assert meta["family"] and meta["description"] and "\n" not in meta["description"]
    assert meta["stage_names"] and len(meta["stage_names"]) == len(meta["stage_channels"])
    assert meta["num_params"] == sum(prod for prod in (torch.Size(s).numel() for k, s in LAYOUT[arch].items()
                                                       if not k.endswith(("running_mean", "running_var",
                                                                          "num_batches_tracked"))))


def test_model_meta_unknown():
    with pytest.raises(KdxError):
        get_model_meta("vgg7")


# ---------------------------------------------------------------- state-dict layout (RepDistiller)

@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_layout_matches_repdistiller(arch):
    with torch.device("meta"):  # shapes only: instant even for ResNet152
        model = create_model(arch, num_classes=100, in_channels=3)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = LAYOUT[arch]
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad
    assert list(got) == list(want)  # same order as the original modules, too


def test_real_model_layout_and_init():
    model = create_model("vgg8")
    sd = model.state_dict()
    assert sd["block0.1.num_batches_tracked"].shape == () and sd["block0.1.num_batches_tracked"].dtype == torch.long
    assert torch.all(sd["block0.1.weight"] == 1) and torch.all(sd["block0.1.bias"] == 0)
    assert torch.all(sd["block0.0.bias"] == 0)
    assert torch.all(sd["classifier.bias"] == 0) and sd["classifier.weight"].std() < 0.02


def test_in_channels_changes_only_the_first_conv():
    for arch in ("resnet8", "vgg8", "MobileNetV2", "ShuffleV2"):
        with torch.device("meta"):
            a = create_model(arch, num_classes=100, in_channels=3).state_dict()
            b = create_model(arch, num_classes=100, in_channels=1).state_dict()
        diff = [k for k in a if a[k].shape != b[k].shape]
        assert len(diff) == 1 and b[diff[0]].shape[1] == 1, (arch, diff)


# ---------------------------------------------------------------- forward / backward / features

@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_and_features_fashion_mnist(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1)
    assert (model.arch, model.num_classes, model.in_channels) == (arch, 10, 1)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head is model.get_submodule(model.classifier_name)
    assert (head.in_features, head.out_features) == (model.num_features, 10)
    assert len(model.stage_names) == len(model.stage_channels) >= 3

    x = torch.randn(2, 1, 28, 28)
    logits, feats = extract_features(model, x)
    assert logits.shape == (2, 10)
    assert list(feats) == model.stage_names
    for name, ch in zip(model.stage_names, model.stage_channels):
        assert feats[name].ndim == 4 and feats[name].shape[:2] == (2, ch), name
    assert _hooks_empty(model)

    (logits.logsumexp(1).mean() + feats[model.stage_names[-1]].mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.get_classifier().weight.grad.abs().sum() > 0

    with torch.no_grad():
        fmap = model.forward_features(x)
        emb = model.forward_head(fmap, pre_logits=True)
        assert fmap.shape[:2] == (2, model.num_features) and fmap.min() >= 0  # after the last activation
        assert emb.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(fmap), model.get_classifier()(emb))


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
@pytest.mark.parametrize("size", [32, 64])
def test_cifar_and_64px_inputs(arch, size):
    model = create_model(arch).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 100) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_2", "vgg8", "ShuffleV1", "ShuffleV2", "MobileNetV2"])
def test_channels_last_matches_contiguous(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("arch", ["resnet8", "ShuffleV2", "wrn_16_1"])
def test_bf16_autocast(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1)
    x = torch.randn(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = extract_features(model, x)
        loss = logits.float().logsumexp(1).mean()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    loss.backward()
    assert torch.isfinite(model.get_classifier().weight.grad).all()


# ---------------------------------------------------------------- semantics of the originals

def test_stage_activation_conventions():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, res = extract_features(create_model("resnet8"), x)
        _, vgg = extract_features(create_model("vgg8"), x)
    assert all(f.min() >= 0 for f in res.values())  # ResNet stages end with ReLU
    assert all(f.min() < 0 for f in vgg.values())  # VGG stages are pre-ReLU (RepDistiller "preact")
    assert [f.shape[-1] for f in vgg.values()] == [32, 16, 8, 4, 4]  # pools after block 0-2 only at 32 px


def test_wrn_non_equal_block_preactivates_the_shortcut_input():
    model = create_model("wrn_16_1").eval()
    blk = model.block2.layer[0]
    assert blk.convShortcut is not None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        pre = F.relu(blk.bn1(x))
        want = blk.conv2(F.relu(blk.bn2(blk.conv1(pre)))) + blk.convShortcut(pre)
        torch.testing.assert_close(blk(x), want)


def test_mobilenet_expansion_conv_and_residuals():
    model = create_model("MobileNetV2")
    first = model.blocks[0][0]
    assert first.conv[0].weight.shape == (16, 16, 1, 1) and not first.use_res_connect
    assert model.blocks[1][1].use_res_connect and not model.blocks[2][0].use_res_connect


# ---------------------------------------------------------------- hooks and classifier

def test_feature_hooks_persist_until_exit_and_unknown_names_raise():
    model = create_model("resnet8", num_classes=10, in_channels=1)
    with FeatureHooks(model, ["layer2", "layer3.0.bn2"]) as hooks:
        model(torch.randn(2, 1, 28, 28))
        first = hooks.features["layer3.0.bn2"]
        model(torch.randn(3, 1, 28, 28))
        assert hooks.features["layer2"].shape == (3, 32, 14, 14)
        assert hooks.features["layer3.0.bn2"] is not first
        assert first.min() < 0  # BN output not clobbered by a later in-place ReLU
    assert _hooks_empty(model)
    with pytest.raises(KdxError, match="layer9"):
        FeatureHooks(model, ["layer9"])


def test_extract_features_removes_hooks_on_error_and_supports_subsets():
    model = create_model("wrn_16_1", num_classes=10, in_channels=1)
    with pytest.raises(RuntimeError):
        extract_features(model, torch.randn(2, 3, 28, 28))  # wrong channel count
    assert _hooks_empty(model)
    logits, feats = extract_features(model, torch.randn(2, 1, 28, 28), stages=["block3"], detach=True)
    assert list(feats) == ["block3"] and not feats["block3"].requires_grad and logits.requires_grad


@pytest.mark.parametrize("arch", ["resnet8", "MobileNetV2", "ShuffleV2", "vgg8"])
def test_reset_classifier(arch):
    model = create_model(arch, num_classes=10, in_channels=1)
    model.reset_classifier(7)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 7 and model.num_classes == 7
    assert model.get_submodule(model.classifier_name) is head
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
