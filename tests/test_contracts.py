"""Contract tests parametrised over the registries (issue 19, item 6), as timm's are over ``list_models()``.

A newly registered architecture, dataset or method is tested here without a new test:

* every architecture of ``kdx.models.list_models()`` runs forward and backward, agrees with
  ``forward_head(forward_features(x))``, declares feature taps that name real submodules and
  read tensors of its ``stage_channels``, and survives a state-dict round trip into a fresh
  instance (a toy architecture registered inside a test shows it; tests/test_models.py keeps
  the RepDistiller layout check for the 26 architectures of its TSV only);
* every dataset of ``kdx.data.registry.all_datasets()`` loads a tiny fake of its own on-disk
  format (written here in ``tmp_path``; the embedded set needs none) and agrees with what its
  spec declares without files;
* every method of ``methods_for("student")`` (flag-added ones included) trains two steps of a
  resnet8 student through ``train-vam-student``, without and with the VAM, and every method of
  ``methods_for("explainer")`` two stage-1 steps of a tiny explainer through ``distill-explainer``;
  each run is also stopped after one step and resumed, and must end equal to the
  uninterrupted one, with every loss the method returned logged as ``train_loss_<name>``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from kdx.data import get_dataset_info, load_dataset, make_loader, registry
from kdx.data.splits import TensorSplit
from kdx.distill.methods import methods_for
from kdx.errors import KdxError
from kdx.models import FeatureHooks, create_model, get_model_meta, list_models, register_model
from kdx.models import registry as model_registry
from kdx.models.base import ZooModel

try:
    from kdx.models.taps import FINAL, Tap
except ImportError:  # before the taps moved onto the models (issue 19)
    from kdx.distill.methods.repdistiller import FINAL, Tap

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


# ====================================================================== architectures

def taps_of(model: nn.Module):
    """``((stem, [stage taps]), final tap)``: the model's own ``feature_taps()`` / ``final_tap()``,
    else RepDistiller's functions (where the taps lived before models declared them)."""
    if hasattr(model, "feature_taps") and hasattr(model, "final_tap"):
        return model.feature_taps(), model.final_tap()
    from kdx.distill.methods.repdistiller import feature_taps, final_tap

    return feature_taps(model), final_tap(model)


def check_architecture(name: str, size: int = 32, num_classes: int = 5, in_channels: int = 3) -> None:
    """The contract of a registered architecture (raises AssertionError where it is broken)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels)
    assert (model.arch, model.num_classes, model.in_channels) == (name, num_classes, in_channels)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head is model.get_submodule(model.classifier_name)
    assert (head.in_features, head.out_features) == (model.num_features, num_classes)
    stages, channels = list(model.stage_names), list(model.stage_channels)
    assert stages and len(stages) == len(channels), (stages, channels)
    meta = get_model_meta(name)
    assert meta["stage_names"] == stages and meta["stage_channels"] == channels and meta["description"]

    # feature taps: every source a real submodule (or the final map)
    (stem, stage_taps), final = taps_of(model)
    modules = dict(model.named_modules())
    taps = [t for t in [stem, *stage_taps, final] if t is not None]
    assert stage_taps, "no stage taps"
    for t in taps:
        assert t.source == FINAL or t.source in modules, f"tap {t.label} names no submodule of {name}"
    hooked = list(dict.fromkeys(stages + [t.source for t in taps if t.source != FINAL]))

    # forward and backward (train mode), the taps hooked
    x = torch.randn(2, in_channels, size, size)
    model.train()
    with FeatureHooks(model, hooked) as hooks:
        logits = model(x)
        feats = dict(hooks.features)
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
    for s, c in zip(stages, channels):
        assert feats[s].dim() == 4 and feats[s].shape[:2] == (2, c), (s, tuple(feats[s].shape), c)
    for t in [stem, *stage_taps]:
        if t is not None and t.source != FINAL:
            assert t.read(feats, None).dim() == 4 and t.read(feats, None).shape[0] == 2, t.label
        if t is not None and t.source in stages and t is not stem:  # a stage tap reads its stage's channels
            assert t.read(feats, None).shape[1] == channels[stages.index(t.source)], t.label
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # forward == forward_head(forward_features), the final tap reads the final map (eval mode)
    model.eval()
    with torch.no_grad(), FeatureHooks(model, hooked) as hooks:
        fmap = model.forward_features(x)
        taps_read = {t.label: t.read(hooks.features, fmap) for t in taps}
        emb = model.forward_head(fmap, pre_logits=True)
        split = model.forward_head(fmap)
        whole = model(x)
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, model.num_features)
    assert emb.shape == (2, model.num_features)
    torch.testing.assert_close(split, whole)
    torch.testing.assert_close(split, head(emb))
    torch.testing.assert_close(taps_read[final.label], fmap)

    # state-dict round trip into a fresh instance (built from another seed)
    torch.manual_seed(1)
    fresh = create_model(name, num_classes=num_classes, in_channels=in_channels)
    state = model.state_dict()
    assert list(fresh.state_dict()) == list(state)
    assert any(not torch.equal(v, state[k]) for k, v in fresh.state_dict().items())  # really another init
    fresh.load_state_dict(state)
    with torch.no_grad():
        again = fresh.eval()(x)
    torch.testing.assert_close(again, whole)


@pytest.mark.parametrize("arch", list_models())
def test_architecture_contract(arch):
    check_architecture(arch)


# ---------------------------------------------------------------- a toy architecture

class _ToyNet(ZooModel):
    """Two stages of conv-BN-ReLU: what a newly registered architecture may look like."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width: int = 4):
        super().__init__(num_classes, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)
        self.stage_names, self.stage_channels = ["layer1", "layer2"], [width, 2 * width]
        self.classifier_name, self.num_features = "fc", 2 * width
        self.init_weights()

    def forward_features(self, x):
        return self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))


class _WrongChannels(_ToyNet):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.stage_channels = [4, 4]  # layer2 has 8


class _MissingTap(_ToyNet):
    def feature_taps(self):
        return Tap("bn1", relu=True), [Tap("layer1"), Tap("layer2"), Tap("layer3")]  # no layer3


class _OwnForward(_ToyNet):
    def forward(self, x):  # not forward_head(forward_features(x))
        return self.forward_head(self.forward_features(x)) + 1.0


class _HiddenState(_ToyNet):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.scale = torch.rand(())  # a plain attribute: not in the state dict

    def forward_features(self, x):
        return super().forward_features(x) * (1 + self.scale)


TOYS = {"contract_toy_net": _ToyNet, "contract_toy_wrong_channels": _WrongChannels,
        "contract_toy_missing_tap": _MissingTap, "contract_toy_own_forward": _OwnForward,
        "contract_toy_hidden_state": _HiddenState}


@pytest.fixture
def toy_archs():
    """The toy architectures registered with ``@register_model`` (family ``toy``), unregistered after the test."""
    before = list_models()
    for name, cls in TOYS.items():
        def factory(num_classes=100, in_channels=3, _cls=cls, **kw):
            return _cls(num_classes, in_channels, **kw)
        factory.__name__ = factory.__qualname__ = name
        factory.__doc__ = f"{cls.__doc__ or 'a broken toy'} (tests/test_contracts.py)"
        register_model(family="toy")(factory)
    _clear_model_caches()
    yield sorted(TOYS)
    for name in TOYS:
        model_registry._FACTORIES.pop(name, None)
        model_registry._META.pop(name, None)
    _clear_model_caches()
    assert list_models() == before


def _clear_model_caches() -> None:
    """The registry's per-name caches (structure, state-dict keys), where it has them."""
    for fn in (getattr(model_registry, "_structure", None), getattr(model_registry, "io_keys", None)):
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()


def test_a_new_architecture_gets_the_contract_not_the_layout_check(toy_archs):
    import test_models  # tests/ is on sys.path

    assert set(toy_archs) <= set(list_models()) and get_model_meta("contract_toy_net")["family"] == "toy"
    check_architecture("contract_toy_net")
    check_architecture("contract_toy_net", size=16, num_classes=3, in_channels=1)
    # the layout check knows its 26 RepDistiller architectures and is not turned red by a new one
    assert "contract_toy_net" not in test_models.ARCHS
    test_models.test_the_26_repdistiller_archs_are_registered()
    assert list_models() != test_models.ARCHS  # the literal check it replaces would have failed here


@pytest.mark.parametrize("broken,why", [
    ("contract_toy_wrong_channels", r"layer2"),
    ("contract_toy_missing_tap", r"tap layer3 names no submodule"),
    ("contract_toy_own_forward", r"Mismatched elements"),
    ("contract_toy_hidden_state", r"Mismatched elements"),
])
def test_the_architecture_contract_fails_a_broken_architecture(toy_archs, broken, why):
    with pytest.raises(AssertionError, match=why):
        check_architecture(broken)


# ====================================================================== datasets

def _idx(path: Path, array: np.ndarray) -> None:
    """An IDX file written by hand (two zero bytes, type 0x08 = uint8, the rank, big-endian sizes, the bytes)."""
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.tile(np.arange(n_classes), per_class)


def fake_idx(tmp_path, spec, monkeypatch, gz):
    """The four IDX files of (Fashion-)MNIST: 2 training and 1 test image per class, 28 px."""
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, per in (("train", 2), ("t10k", 1)):
        y = _labels(10, per).astype(np.uint8)
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte{sfx}", y)
    return dict(name=spec.name, root=tmp_path, n_train=20, n_test=10)


def fake_cifar(tmp_path, spec, monkeypatch):
    """torchvision's python-version folder (what ``kdx.data.sets.cifar`` reads through torchvision):
    pickled batches of 3072-byte rows, 2 training and 1 test image per class. torchvision checks
    every file's md5 against the real files'; the fakes' own md5s are put in their place."""
    import torchvision

    cls = torchvision.datasets.CIFAR10 if spec.name == "cifar10" else torchvision.datasets.CIFAR100
    n = 10 if spec.name == "cifar10" else 100
    names = list(spec.class_names or [f"class{i}" for i in range(n)])
    label_key = "labels" if n == 10 else "fine_labels"
    d = tmp_path / cls.base_folder
    d.mkdir()
    rng = np.random.default_rng(0)
    train_y, test_y = _labels(n, 2), _labels(n, 1)
    files = [(f, train_y[i::len(cls.train_list)]) for i, (f, _) in enumerate(cls.train_list)]
    files += [(cls.test_list[0][0], test_y)]

    def md5(path):
        return hashlib.md5(path.read_bytes()).hexdigest()

    sums = {}
    for fname, y in files:
        rows = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        (d / fname).write_bytes(pickle.dumps({"data": rows, label_key: [int(v) for v in y]}))
        sums[fname] = md5(d / fname)
    (d / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: names}))
    monkeypatch.setattr(cls, "train_list", [[f, sums[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, sums[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=md5(d / cls.meta["filename"])))
    return dict(name=spec.name, root=tmp_path, n_train=2 * n, n_test=n, classes=names)


def _image_bytes(size: int, fmt: str) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def fake_tiny_imagenet(tmp_path, spec, monkeypatch):
    """tiny-imagenet-200/: wnids.txt, words.txt, train/<wnid>/images/*.JPEG (2 per class), the
    official val split (1 per class) with val_annotations.txt."""
    base = tmp_path / "tiny-imagenet-200"
    n = spec.num_classes or 200
    wnids = [f"n{i:08d}" for i in range(n)]
    jpeg = _image_bytes(64, "JPEG")
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # any order: kdx sorts them
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)))
    ann = []
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for k in range(2):
            (base / "train" / w / "images" / f"{w}_{k}.JPEG").write_bytes(jpeg)
        (base / "val" / "images" / f"val_{w}.JPEG").write_bytes(jpeg)
        ann.append(f"val_{w}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return dict(name=spec.name, root=tmp_path, n_train=2 * n, n_test=n, classes=[f"thing {i}" for i in range(n)])


def fake_folder(tmp_path, spec, monkeypatch):
    """PATH/train/<class>/*.png (2 per class) and PATH/val/<class>/*.png (1 per class), 8 px."""
    png = _image_bytes(8, "PNG")
    for split, per in (("train", 2), ("val", 1)):
        for c in ("cat", "dog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for k in range(per):
                (tmp_path / "imgs" / split / c / f"{k}.png").write_bytes(png)
    return dict(name=f"{spec.name}:{tmp_path / 'imgs'}", root=tmp_path / "elsewhere", n_train=4, n_test=2,
                classes=["cat", "dog"], shape=(3, 8, 8))


def no_fake(tmp_path, spec, monkeypatch):
    """The embedded set ships inside the package."""
    return dict(name=spec.name, root=tmp_path)


FAKES = {
    "fashion-mnist": lambda *a: fake_idx(*a, gz=True), "mnist": lambda *a: fake_idx(*a, gz=False),
    "cifar10": fake_cifar, "cifar100": fake_cifar, "tiny-imagenet": fake_tiny_imagenet, "folder": fake_folder,
    "fashion-mnist-mini": no_fake,
}
"""How to write a tiny fake of each built-in dataset's files; a new dataset declares ``DatasetSpec.fake``
(or needs no files) and needs no entry here."""


@pytest.mark.parametrize("name", sorted(registry.all_datasets()))
def test_dataset_contract(name, tmp_path, monkeypatch):
    spec = registry.all_datasets()[name]
    if name not in FAKES and spec.fake is not None:  # the dataset file fakes its own files
        spec.fake(tmp_path)
        FAKES[name] = lambda *a: dict(name=spec.name, root=tmp_path)
    if name not in FAKES:
        try:  # a dataset that needs no files loads as it is
            load_dataset(spec.label.replace(":PATH", ""), root=tmp_path, val_fraction=0.5, seed=0)
            FAKES[name] = no_fake
        except KdxError:
            pass
    if name not in FAKES:
        if spec.load.__module__.startswith("kdx."):
            pytest.fail(f"dataset {name} ({spec.load.__module__}) has no fake in tests/test_contracts.py FAKES: "
                        f"add a function writing a tiny copy of its files")
        pytest.skip(f"dataset {name} comes from the plug-in {spec.load.__module__}; its own tests fake its files")
    fake = FAKES[name](tmp_path, spec, monkeypatch)
    b = load_dataset(fake["name"], root=fake["root"], val_fraction=0.5, seed=0)
    classes = fake.get("classes", spec.class_names)
    shape = fake.get("shape", spec.input_shape)
    assert b.name == fake["name"]
    if spec.num_classes is not None:
        assert b.num_classes == spec.num_classes
    if classes is not None:
        assert b.class_names == list(classes)
    assert (b.in_channels, b.image_size, b.image_size) == tuple(shape)
    assert b.mean == tuple(spec.mean) and b.std == tuple(spec.std) and len(b.mean) == b.in_channels
    side = b.image_size
    assert b.augment == (spec.augment if spec.augment is not None else {"crop_padding": max(1, side // 8), "hflip": True})
    if "n_train" in fake:
        assert (len(b.train) + len(b.val), len(b.test)) == (fake["n_train"], fake["n_test"])
        # stratified: the validation half holds every class once (2 training images per class)
        assert sorted(b.val.labels.tolist()) == list(range(b.num_classes))
    labels = torch.cat([b.train.labels, b.val.labels])
    assert set(labels.tolist()) == set(range(b.num_classes)) and set(b.test.labels.tolist()) <= set(labels.tolist())
    # a training batch, augmented and normalised, and the test split in order
    x, y = next(iter(make_loader(b.train, 2, train=True, device="cpu", seed=0, num_workers=0).batches(1)))
    assert x.shape == (2, b.in_channels, side, side) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < b.num_classes
    _, yt = next(iter(make_loader(b.test, 2, train=False, device="cpu", num_workers=0).batches(0)))
    assert yt.tolist() == b.test.labels[:2].tolist()
    # what checkpoints record without reading files agrees with the files
    if spec.num_classes is None or spec.input_shape is None:
        with pytest.raises(KdxError, match="known only from its files"):
            get_dataset_info(fake["name"])
    else:
        info = get_dataset_info(fake["name"])
        meta = b.meta()
        assert {k: meta[k] for k in info} == info


# ====================================================================== methods

TINY = "contract-tiny"
CLASSES = ["a", "b", "c", "d"]


def _tiny_load(root, download, image_size, path):
    """12 training images (3 per class) and 4 test images, grey, 16 px."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        return TensorSplit(torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g), torch.arange(n) % 4)

    return split(12), split(4), list(CLASSES)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registered 4-class dataset of 16-px images (8 training images: 2 steps of 4 after the
    validation third), an untrained resnet8 teacher checkpoint and a two-layer class tree."""
    from kdx.engine.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("contracts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_DATASETS", dict(registry.all_datasets()))
        registry.register_dataset(registry.DatasetSpec(
            TINY, _tiny_load, mean=(0.5,), std=(0.25,), augment={"crop_padding": 1, "hflip": True},
            description="tests/test_contracts.py", num_classes=4, input_shape=(1, 16, 16), class_names=tuple(CLASSES)))
        torch.manual_seed(7)
        teacher = create_model("resnet8", num_classes=4, in_channels=1)
        save_checkpoint(root / "teacher.safetensors", teacher.state_dict(),
                        {"kind": "classifier", "arch": "resnet8", "num_classes": 4, "input_shape": [1, 16, 16],
                         "dataset": TINY, "class_names": CLASSES})
        (root / "tree" / "clusters").mkdir(parents=True)
        for layer, merged in ((1, [[0, 1], [2, 3]]), (2, [[0], [1], [2, 3]])):
            (root / "tree" / "clusters" / f"layer{layer}.json").write_text(json.dumps({"merged_classes": merged}))
        yield {"root": root, "teacher": str(root / "teacher.safetensors"), "tree": str(root / "tree")}


COMMON = dict(dataset=TINY, batch_size=4, eval_batch_size=8, val_fraction=1 / 3, device="cpu", precision="fp32",
              channels_last="off", deterministic=True, quiet=True, seed=0)

VAM = dict(vam="head", vam_head="replace")  # the VAM student: routed head instead of the classifier
FLAG_ADDED = {
    "hierarchy": {"plain": lambda w: dict(vam="tree", hierarchy=[w["tree"]]),
                  "vam": lambda w: dict(vam="tree+head", vam_head="replace", hierarchy=[w["tree"]])},
    "vam_head": {"vam": lambda w: dict(vam="head", vam_head="aux", vam_entropy=0.01)},
    "vam_entropy": {"vam": lambda w: dict(VAM, vam_entropy=0.01)},
}
"""How a run enables each method that ``--method`` does not select (``selectable = False``), per
variant; ``vam_head`` is the VAM's auxiliary head and ``vam_entropy`` reads the VAM's attention,
so neither has a variant without it."""


def student_cases():
    for name, cls in methods_for("student", selectable_only=False).items():
        variants = ["plain", "vam"] if cls.selectable else list(FLAG_ADDED.get(name, {"unknown": None}))
        yield from (pytest.param(name, v, id=f"{name}-{v}") for v in variants)


def short_phases(command: str) -> dict:
    """Every method option counting epochs (initialisation phases: ft, fsp) set to 1."""
    from kdx.distill.methods import method_options

    return {o.name: 1 for o in method_options(command) if o.name.endswith("_epochs") and o.type is int}


class LossSpy:
    """Records the loss names of every call of ``cls.loss`` (the method under test)."""

    def __init__(self, monkeypatch, cls):
        self.calls: list[dict] = []
        original = cls.loss

        def loss(method, out):
            got = original(method, out)
            self.calls.append({k: float(v.detach().float()) for k, v in got.items()})
            return got

        monkeypatch.setattr(cls, "loss", loss)

    def take(self) -> list[dict]:
        calls, self.calls = self.calls, []
        return calls


def _tensors(path: Path, prefixes=("model.", "optim.")) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(prefixes)}


def train_stop_resume(run, cfg_class, make_cfg, tmp_path, stage_dir, spy):
    """The run uninterrupted (2 steps), and stopped after step 1 then resumed; both run dirs' stage folders."""
    from kdx.engine.rundir import config_for_resume
    from kdx.engine.trainer import TrainingInterrupted

    full, part = tmp_path / "full", tmp_path / "part"
    run(make_cfg(full))
    full_calls = spy.take()
    with pytest.raises(TrainingInterrupted) as stop:
        run(make_cfg(part, max_steps=1))
    assert (stop.value.epoch, stop.value.step) == (1, 1)
    after_one = _tensors(stage_dir(part) / "resume" / "state.safetensors", ("model.",))
    first_calls = spy.take()
    run(config_for_resume(cfg_class, str(part), {}))
    resumed_calls = spy.take()
    assert len(full_calls) >= 2 and len(first_calls) >= 1 and len(resumed_calls) >= 1, \
        (len(full_calls), len(first_calls), len(resumed_calls))
    return stage_dir(full), stage_dir(part), after_one, full_calls + first_calls + resumed_calls


def check_run(name, full: Path, part: Path, after_one: dict, calls: list[dict]) -> None:
    """Both runs finished; resumed == uninterrupted; the method's losses logged by name; 2 steps
    trained; the saved model rebuilds from its metadata (the method's own parts are not in it)."""
    from kdx.engine.checkpoint import load_model, read_metadata

    for d in (full, part):
        assert (d / "results.json").is_file() and (d / "model.safetensors").is_file(), d
    load_model(full)  # strict: every key of model.safetensors, and only those, fits the rebuilt model
    meta = read_metadata(full / "model.safetensors")
    assert name in [m["name"] for m in meta["methods"]], meta["methods"]
    names = sorted({k for c in calls for k in c})
    assert names and all(sorted(c) == names for c in calls), calls  # the same named losses every step
    assert all(np.isfinite(v) for c in calls for v in c.values()), calls
    a, b = pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    assert list(a.columns) == list(b.columns) and list(a["epoch"]) == list(b["epoch"]) == [1]
    cols = [c for c in a.columns if c.startswith("train_loss_")]
    assert {f"train_loss_{n}" for n in names} <= set(cols), (names, cols)
    assert np.isfinite(a[cols].to_numpy()).all()
    assert float(a[cols].sum(axis=1).iloc[0]) == pytest.approx(float(a["train_loss"].iloc[0]), rel=1e-5)
    got, want = b[cols + ["train_loss"]].to_numpy(), a[cols + ["train_loss"]].to_numpy()
    assert np.allclose(got, want, rtol=1e-12, atol=0), \
        f"the resumed run logged {dict(zip(cols + ['train_loss'], got[0]))}, the uninterrupted one {want[0].tolist()}"
    sa, sb = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ra, rb = _tensors(full / "resume" / "state.safetensors"), _tensors(part / "resume" / "state.safetensors")
    assert ra.keys() == rb.keys()
    unequal = [k for k in ra if not torch.equal(ra[k], rb[k])]
    assert not unequal, f"resumed state differs from the uninterrupted run's: {unequal[:5]}"  # methods' state too
    assert any(not torch.equal(after_one[k], ra[k]) for k in after_one)  # step 2 changed something


def student_contract(name, variant, world, tmp_path, monkeypatch) -> None:
    """Train-stop-resume ``name`` (a student method) in a ``variant`` run and check the run."""
    from kdx.commands import train_vam_student
    from kdx.config import build_config, config_class
    from kdx.engine.checkpoint import read_metadata

    cls = methods_for("student", selectable_only=False)[name]
    if variant == "unknown":
        if cls.__module__.startswith("kdx."):
            pytest.fail(f"method {name} is not selectable by --method: say in FLAG_ADDED "
                        f"(tests/test_contracts.py) how a student run enables it")
        pytest.skip(f"method {name} ({cls.__module__}) is added by a flag of its plug-in")
    if cls.selectable:
        extra = dict(method=[name], **(VAM if variant == "vam" else dict(vam="off")))
    else:
        extra = dict(method=["ce"], **FLAG_ADDED[name][variant](world))
    cfg_class = config_class("train-vam-student")

    def make_cfg(out, **kw):
        values = dict(COMMON, out=str(out), arch="resnet8", epochs=1, lr=0.05, teacher=world["teacher"],
                      **short_phases("student"), **extra, **kw)
        return build_config(cfg_class, cli=values)

    spy = LossSpy(monkeypatch, cls)
    full, part, after_one, calls = train_stop_resume(train_vam_student.run, cfg_class, make_cfg, tmp_path,
                                                     lambda d: d, spy)
    check_run(name, full, part, after_one, calls)
    assert read_metadata(full / "model.safetensors")["kind"] == (
        "vam-student" if extra.get("vam_head") == "replace" else "classifier")


def explainer_contract(name, world, tmp_path, monkeypatch) -> None:
    """Train-stop-resume ``name`` (an explainer method) in stage 1 of a tiny explainer and check the run."""
    from kdx.commands import distill_explainer
    from kdx.config import build_config, config_class

    cls = methods_for("explainer", selectable_only=False)[name]
    cfg_class = config_class("distill-explainer")

    def make_cfg(out, **kw):
        values = dict(COMMON, out=str(out), method=[name], teacher=world["teacher"], stage="1", stage1_epochs=1,
                      widths="4:4,4:4,4:4", **short_phases("explainer"), **kw)
        return build_config(cfg_class, cli=values)

    spy = LossSpy(monkeypatch, cls)
    full, part, after_one, calls = train_stop_resume(distill_explainer.run, cfg_class, make_cfg, tmp_path,
                                                     lambda d: d / "stage1", spy)
    check_run(name, full, part, after_one, calls)
    assert json.loads((full.parent / "results.json").read_text())["method"] == name


@pytest.mark.parametrize("name,variant", list(student_cases()))
def test_student_method_contract(name, variant, world, tmp_path, monkeypatch):
    student_contract(name, variant, world, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", sorted(methods_for("explainer", selectable_only=False)))
def test_explainer_method_contract(name, world, tmp_path, monkeypatch):
    explainer_contract(name, world, tmp_path, monkeypatch)


# ---------------------------------------------------------------- a toy method

def _toy_method(name: str, state: str):
    """A selectable method for both commands: CE scaled by the count of its earlier calls, the
    count kept in a registered buffer (resumed with the task) or in a plain attribute (lost on
    resume, which the contract must catch: kdx/engine/task.py, 'Resume')."""
    from kdx.distill import functional as KF
    from kdx.distill.methods import Method

    class Counting(Method):
        help = "toy: CE times (1 + calls / 10) (tests/test_contracts.py)"
        commands = frozenset({"student", "explainer"})

        def __init__(self, ctx):
            super().__init__(ctx)
            if state == "buffer":
                self.register_buffer("calls", torch.zeros(()))
            else:
                self.calls = torch.zeros(())

        def loss(self, out):
            if self.training:
                self.calls = self.calls + 1
            return {self.name: KF.ce(out.logits, out.y) * (1 + self.calls / 10)}

    Counting.name = name
    Counting.__name__ = Counting.__qualname__ = f"Counting_{state}"
    return Counting


@pytest.fixture
def toy_methods():
    """Two toy methods registered with ``register_method``, unregistered after the test."""
    import kdx.distill.methods.base as method_base
    from kdx.distill.methods import register_method

    names = {"contract_toy_counting": "buffer", "contract_toy_forgetful": "attribute"}
    for name, state in names.items():
        register_method(_toy_method(name, state))
    yield sorted(names)
    for name in names:
        method_base._METHODS.pop(name, None)
    assert not set(names) & set(methods_for("student"))


def test_a_new_method_gets_the_contract(toy_methods, world, tmp_path, monkeypatch):
    assert {"contract_toy_counting", "contract_toy_forgetful"} <= set(methods_for("explainer"))
    student_contract("contract_toy_counting", "plain", world, tmp_path / "student", monkeypatch)
    explainer_contract("contract_toy_counting", world, tmp_path / "explainer", monkeypatch)


def test_the_method_contract_fails_a_method_whose_state_is_not_resumed(toy_methods, world, tmp_path, monkeypatch):
    with pytest.raises(AssertionError, match="the resumed run logged"):
        student_contract("contract_toy_forgetful", "plain", world, tmp_path, monkeypatch)
