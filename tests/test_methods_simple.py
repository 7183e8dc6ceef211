"""KD methods without an initialisation phase: dkd, at, sp, pkt, rkd, nst, fitnet.

Loss values are checked on fixed small cases against the numpy transcriptions of the reference
formulas in tests/test_functional.py (mdistiller DKD.py, RepDistiller distiller_zoo/*.py and
models/util.py ConvReg), times the method's weight; then each method runs inside a MethodTask
(resnet8 student, resnet14 teacher, 4 images of 3x16x16) and on a VAM student.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdx.distill.methods import all_methods, methods_for
from kdx.distill.methods.base import MethodContext, StepOutputs
from kdx.distill.methods.fitnet import conv_regressor
from kdx.distill.methods.repdistiller import Tap, feature_taps, final_tap
from kdx.distill.task import MethodTask, build_methods, logit_loss, method_names
from kdx.errors import KdxError
from kdx.models import create_model
from kdx.options import Option
from oracles_numpy import np_at, np_dkd, np_nst, np_pkt, np_rkd, np_sp  # tests/ is on sys.path

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

NAMES = ["dkd", "at", "sp", "pkt", "rkd", "nst", "fitnet"]
FEATURE_NAMES = NAMES[1:]


def npy(t):
    return t.detach().double().numpy()


def models(student="resnet8", teacher="resnet14", seed=0):
    torch.manual_seed(seed)
    s = create_model(student, num_classes=10)
    t = create_model(teacher, num_classes=10).eval().requires_grad_(False)
    return s, t


def build(name, params=None, student=None, teacher=None):
    s, t = models() if student is None else (student, teacher)
    ctx = MethodContext(params={"seed": 0, **(params or {})}, student=s, teacher=t, num_classes=10, num_samples=40)
    return build_methods([name], ctx)[0]


def fake_out(method, shapes_s, shapes_t, n=4, seed=0, pooled_hw=2):
    """StepOutputs with random tensors for every module the method hooks (given shapes)."""
    g = torch.Generator().manual_seed(seed)
    s_names, t_names = method.stages()
    fs = {k: torch.randn(n, *shapes_s[k], generator=g) for k in s_names}
    ft = {k: torch.randn(n, *shapes_t[k], generator=g) for k in t_names}
    return StepOutputs(x=torch.zeros(n), y=torch.zeros(n, dtype=torch.long), logits=torch.zeros(n, 10), model=None,
                       features_s=fs, features_t=ft)


# resnet8 / resnet14 stage outputs at 3x16x16 (C, H, W)
RES8 = {"bn1": (16, 16, 16), "layer1": (16, 16, 16), "layer2": (32, 8, 8), "layer3": (64, 4, 4)}


# ---------------------------------------------------------------- registry and defaults


def test_registered_with_the_authors_defaults():
    methods = all_methods()
    d = {o.name: o.default for n in NAMES for o in methods[n].options}
    assert (d["dkd_weight"], d["dkd_alpha"], d["dkd_beta"], d["dkd_temperature"], d["dkd_warmup"]) == (1, 1, 8, 4, 20)
    assert methods["dkd"].ce_weight == 1.0
    assert (d["at_weight"], d["at_p"]) == (1000, 2)
    assert d["sp_weight"] == 3000 and d["pkt_weight"] == 30000 and d["nst_weight"] == 50
    assert (d["rkd_weight"], d["rkd_distance"], d["rkd_angle"]) == (1, 25, 50)
    assert (d["fitnet_weight"], d["fitnet_hint_layer"]) == (100, 2)
    assert all(methods[n].needs_teacher and methods[n].paper for n in NAMES)
    assert all(methods[n].uses_features for n in FEATURE_NAMES) and not methods["dkd"].uses_features
    assert "dkd" in methods_for("explainer") and set(FEATURE_NAMES) <= set(methods_for("explainer"))  # issue 20
    assert all(o.name.startswith(n + "_") for n in NAMES for o in methods[n].options)


def test_stages_read_are_repdistillers():
    at, sp, pkt, fit = build("at"), build("sp"), build("pkt"), build("fitnet")
    assert at.stages() == (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"])
    assert sp.stages() == (["layer3"], ["layer3"])
    assert pkt.stages() == (["layer3"], ["layer3"]) and not pkt.wants_final
    assert fit.stages() == (["layer2"], ["layer2"])
    assert build("fitnet", {"fitnet_hint_layer": 0}).stages() == (["bn1"], ["bn1"])


# ---------------------------------------------------------------- loss values against the transcriptions


@pytest.mark.parametrize("epoch,factor", [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)])
def test_dkd_loss_with_warmup(epoch, factor):
    m = build_methods(["dkd"], MethodContext(params={"dkd_weight": 0.5}))[0]
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(4, 10, generator=g) * 2, torch.randn(4, 10, generator=g) * 2
    y = torch.tensor([0, 3, 9, 3])
    out = StepOutputs(x=zs, y=y, logits=zs, model=None, teacher_logits=zt, epoch=epoch)
    want = 0.5 * factor * np_dkd(npy(zs), npy(zt), y.numpy(), 1.0, 8.0, 4.0)
    assert float(m.loss(out)["dkd"]) == pytest.approx(want, rel=1e-5)


def test_dkd_logit_loss_and_ce_weight():
    names, w = method_names(["dkd"], "explainer", None)
    assert names == ["ce", "dkd"] and w == 1.0
    fn = logit_loss("dkd", {"dkd_warmup": 0})
    zs, zt, y = torch.zeros(2, 2), torch.tensor([[3.0, -3.0], [0.0, 1.0]]), torch.tensor([0, 1])
    assert fn.needs_teacher and float(fn(zs, y, zt)) > float(fn(zs, y, zs))


def test_at_and_nst_sum_over_the_stages():
    for name, oracle, weight in (("at", lambda a, b: np_at(a, b, 2), 1000), ("nst", np_nst, 50)):
        m = build(name)
        out = fake_out(m, RES8, {"layer1": (16, 16, 16), "layer2": (24, 8, 8), "layer3": (8, 2, 2)})
        want = weight * sum(oracle(npy(out.features_s[k]), npy(out.features_t[k])) for k in ("layer1", "layer2",
                                                                                                "layer3"))
        assert float(m.loss(out)[name]) == pytest.approx(want, rel=1e-4), name


def test_at_p_option_changes_the_loss():
    out = fake_out(build("at"), RES8, RES8)
    one = float(build("at", {"at_p": 1.0, "at_weight": 1.0}).loss(out)["at"])
    want = sum(np_at(npy(out.features_s[k]), npy(out.features_t[k]), 1.0) for k in ("layer1", "layer2", "layer3"))
    assert one == pytest.approx(want, rel=1e-4)


def test_sp_reads_the_last_stage():
    m = build("sp")
    out = fake_out(m, RES8, {"layer3": (7, 4, 4)})
    want = 3000 * np_sp(npy(out.features_s["layer3"]), npy(out.features_t["layer3"]))
    assert float(m.loss(out)["sp"]) == pytest.approx(want, rel=1e-4)


def test_pkt_and_rkd_on_pooled_final_maps():
    for name, oracle in (("pkt", lambda a, b: 30000 * np_pkt(a, b)),
                         ("rkd", lambda a, b: 2.0 * np_rkd(a, b, 10.0, 20.0))):
        m = build(name, {"rkd_weight": 2.0, "rkd_distance": 10.0, "rkd_angle": 20.0})
        out = fake_out(m, RES8, {"layer3": (5, 2, 2)})
        p_s = npy(out.features_s["layer3"]).mean(axis=(2, 3))
        p_t = npy(out.features_t["layer3"]).mean(axis=(2, 3))
        assert float(m.loss(out)[name]) == pytest.approx(oracle(p_s, p_t), rel=1e-4), name


def test_rkd_single_sample_batch_is_zero_not_nan():
    m = build("rkd")
    out = fake_out(m, RES8, RES8, n=1)
    assert float(m.loss(out)["rkd"]) == 0.0


def test_fitnet_hint_against_hand_regressor():
    m = build("fitnet")
    shapes = {"layer2": (3, 4, 4)}
    out = fake_out(m, shapes, {"layer2": (2, 4, 4)})
    m.setup(out)
    conv = m.regressor[0]
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    with torch.no_grad():  # r(x) = relu(BN_eval(W x + b)) with W picking channels 0 and 2, b = 0
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
        conv.weight[1, 2, 0, 0] = 1.0
        conv.bias.zero_()
    m.eval()
    x, t = npy(out.features_s["layer2"]), npy(out.features_t["layer2"])
    r = np.maximum(x[:, [0, 2]] / np.sqrt(1 + 1e-5), 0)
    assert float(m.loss(out)["fitnet"].detach()) == pytest.approx(100 * ((r - t) ** 2).mean(), rel=1e-5)


@pytest.mark.parametrize("s,t,kind,out_hw", [((8, 8), (4, 4), torch.nn.Conv2d, 4),
                                              ((4, 4), (8, 8), torch.nn.ConvTranspose2d, 8),
                                              ((6, 6), (4, 4), torch.nn.Conv2d, 4),
                                              ((4, 4), (4, 4), torch.nn.Conv2d, 4)])
def test_conv_regressor_cases_match_convreg(s, t, kind, out_hw):
    reg = conv_regressor((2, 3, *s), (2, 5, *t))
    assert isinstance(reg[0], kind) and isinstance(reg[1], torch.nn.BatchNorm2d)
    assert reg(torch.randn(2, 3, *s)).shape == (2, 5, out_hw, out_hw)
    assert conv_regressor((2, 3, 2, 2), (2, 5, 8, 8)) is None


# ---------------------------------------------------------------- impossible pairings


def test_fitnet_impossible_sizes_one_line_error():
    m = build("fitnet")
    out = fake_out(m, {"layer2": (32, 2, 2)}, {"layer2": (64, 8, 8)})
    with pytest.raises(KdxError) as e:
        m.setup(out)
    msg = str(e.value)
    assert "\n" not in msg and "layer2 (32 ch, 2x2)" in msg and "layer2 (64 ch, 8x8)" in msg


def test_fitnet_hint_layer_out_of_range():
    with pytest.raises(KdxError, match="fitnet-hint-layer 4 .* student ResNet .*0..3"):
        build("fitnet", {"fitnet_hint_layer": 4})


@pytest.mark.parametrize("name,oracle,weight", [("at", lambda a, b: np_at(a, b, 2), 1000), ("nst", np_nst, 50)])
def test_unequal_stage_counts_pair_by_zip(name, oracle, weight):
    """RepDistiller's ``sum(criterion(feat_s[1:-1], feat_t[1:-1]))`` zips the two lists: a 3-stage
    student against a 4-stage teacher pairs layer1..3 with layer1..3 and drops the teacher's layer4."""
    s, t = models("resnet8", "ResNet18")
    m = build(name, student=s, teacher=t)
    assert m.stages() == (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"])
    assert m.record()["pairs"] == ["layer1 - layer1", "layer2 - layer2", "layer3 - layer3"]
    r18 = {"layer1": (64, 16, 16), "layer2": (128, 8, 8), "layer3": (256, 4, 4)}
    out = fake_out(m, RES8, r18)
    g = torch.Generator().manual_seed(5)
    layer4 = torch.randn(4, 512, 2, 2, generator=g)  # the teacher's extra stage, never read
    feat_s = [npy(out.features_s[k]) for k in ("layer1", "layer2", "layer3")]
    feat_t = [npy(out.features_t[k]) for k in ("layer1", "layer2", "layer3")] + [npy(layer4)]
    want = weight * sum(oracle(a, b) for a, b in zip(feat_s, feat_t))
    assert float(m.loss(out)[name]) == pytest.approx(want, rel=1e-4)
    # the whole task runs (hooks only the paired stages)
    task = MethodTask(s, build_methods([name], MethodContext(params={"seed": 0}, student=s, teacher=t,
                                                              num_classes=10)), teacher=t)
    x = torch.randn(2, 3, 16, 16)
    task.setup_methods(x)
    _, losses = task(x, torch.tensor([1, 2]))
    assert torch.isfinite(losses[name])


def test_feature_method_without_teacher_is_refused():
    s, _ = models()
    ctx = MethodContext(params={}, student=s, teacher=None, num_classes=10)
    with pytest.raises(KdxError, match="needs a teacher"):
        MethodTask(s, build_methods(["at"], ctx), teacher=None)


# ---------------------------------------------------------------- inside a MethodTask


def make_task(names, params=None, n=4, seed=0):
    s, t = models(seed=seed)
    ctx = MethodContext(params={"seed": seed, **(params or {})}, student=s, teacher=t, num_classes=10, num_samples=40,
                        train_labels=torch.arange(40) % 10)
    task = MethodTask(s, build_methods(names, ctx), teacher=t)
    x = torch.randn(n, 3, 16, 16)
    task.setup_methods(x)
    return task, x, torch.randint(0, 10, (n,))


@pytest.mark.parametrize("name", NAMES)
def test_method_task_step_finite_grads_deterministic(name):
    losses = []
    for _ in range(2):
        task, x, y = make_task([name], {"dkd_warmup": 0})
        task.train()
        _, out = task(x, y)
        total = out[name]
        assert torch.isfinite(total) and float(total.detach()) > 0
        total.backward()
        assert task.model.conv1.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in task.teacher.parameters())
        trained = [p for p in task.methods[0].parameters() if p.requires_grad]
        if name == "fitnet":
            assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
            assert len(task.method_param_group(0.1)) == 1
        else:
            assert not trained and task.method_param_group(0.1) == []
        losses.append(float(total.detach()))
    assert losses[0] == losses[1]


def test_methods_combine_and_sum():
    task, x, y = make_task(["at", "sp", "dkd"])
    _, out = task(x, y)
    assert set(out) == {"at", "sp", "dkd"} and all(torch.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_methods_on_a_vam_student(name):
    from kdx.distill.student import StudentTask
    from kdx.models.routed.vam import wrap_student

    torch.manual_seed(0)
    vam = wrap_student("resnet8", num_classes=10, in_channels=3)
    teacher = create_model("resnet14", num_classes=10).eval().requires_grad_(False)
    ctx = MethodContext(params={"seed": 0}, student=vam.student, teacher=teacher, num_classes=10)
    task = StudentTask(vam, build_methods([name], ctx), teacher=teacher, probe_shape=(3, 16, 16))
    assert not task.wants_final
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, out = task(x, y)
    out[name].backward()
    assert torch.isfinite(out[name]) and vam.student.conv1.weight.grad.abs().sum() > 0


def test_taps_for_other_families_pair():
    """AT/NST pair mobilenet (4 stages) with a 4-stage ResNet18 teacher; vgg taps carry the ReLU."""
    s, t = models("MobileNetV2", "ResNet18")
    ctx = MethodContext(params={"seed": 0}, student=s, teacher=t, num_classes=10)
    task = MethodTask(s, build_methods(["at", "nst", "fitnet"], ctx), teacher=t)
    x = torch.randn(2, 3, 32, 32)
    task.setup_methods(x)
    _, out = task(x, torch.tensor([1, 2]))
    assert all(torch.isfinite(v) for v in out.values())
    vgg = create_model("vgg8", num_classes=10)
    assert feature_taps(vgg)[1][0] == Tap("block1", relu=True) and final_tap(vgg).relu


def test_a_method_sees_only_its_own_options_and_what_it_reads():
    """issue 19: every method used to receive the whole run config; a method option named like a
    config field was silently dropped. Now build_methods hands each method its own options and the
    run values it declares in ``reads``."""
    from kdx.distill.methods.base import Method

    seen = {}

    class Peek(Method):
        name = "peek_toy"
        options = (Option("peek_toy_alpha", float, 1.0, "toy"),)
        reads = ("seed",)

        def __init__(self, ctx):
            super().__init__(ctx)
            seen.update(ctx.params)

    import kdx.distill.methods.base as B

    B._METHODS["peek_toy"] = Peek
    try:
        s, t = models()
        ctx = MethodContext(params={"seed": 3, "epochs": 240, "kd_temperature": 4.0, "peek_toy_alpha": 2.0},
                            student=s, teacher=t, num_classes=10)
        [m] = build_methods(["peek_toy"], ctx)
    finally:
        del B._METHODS["peek_toy"]
    assert seen == {"seed": 3, "peek_toy_alpha": 2.0}
    assert m.params == {"peek_toy_alpha": 2.0}


def test_an_option_declared_differently_by_two_methods_is_refused_at_registration():
    from kdx.distill.methods.base import Method, register_method

    class Twin(Method):
        name = "twin_toy"
        options = (Option("kd_temperature", float, 2.0, "a second, different temperature"),)

    with pytest.raises(ValueError, match="kd_temperature.*declares differently"):
        register_method(Twin)
    from kdx.distill.methods import all_methods

    assert "twin_toy" not in all_methods()


def test_a_method_option_named_like_a_command_option_is_refused(monkeypatch):
    import kdx.config as C
    from kdx.distill.methods.base import Method

    class Shadow(Method):
        name = "shadow_toy"
        commands = frozenset({"student"})
        options = (Option("epochs", int, 3, "would be shadowed by the command's --epochs"),)

    import kdx.distill.methods.base as B

    monkeypatch.setitem(B._METHODS, "shadow_toy", Shadow)
    C.config_class.cache_clear()
    try:
        with pytest.raises(KdxError, match="epochs collide with options of train-vam-student"):
            C.config_class("train-vam-student")
    finally:
        monkeypatch.delitem(B._METHODS, "shadow_toy")
        C.config_class.cache_clear()
