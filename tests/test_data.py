"""Tests for kdx.data: registry, embedded mini set, IDX parsing, loaders (synthetic data only)."""

import gzip
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdx.data import DatasetBundle, TensorSplit, list_datasets, load_dataset, make_loader
from kdx.data.augment import apply_shift_flip, derive_seed, sample_params
from kdx.data.datasets import EMBEDDED_DIR, FASHION_CLASSES
from kdx.data.idx import read_idx, read_idx_pair, write_idx
from kdx.errors import KdxError

IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def make_idx_dir(d, n_train=40, n_test=20, gz=True, classes=10, size=28):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        sfx = ".gz" if gz else ""
        write_idx(d / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte{sfx}", (np.arange(n) % classes).astype(np.uint8))
    return d


def split_of(n=103, c=1, hw=8):
    """Images whose pixels encode nothing in particular; labels = sample index (identity)."""
    g = torch.Generator().manual_seed(1)
    s = TensorSplit(torch.randint(1, 256, (n, c, hw, hw), dtype=torch.uint8, generator=g), torch.arange(n))
    s.mean, s.std, s.default_augment = (0.5,) * c, (0.25,) * c, {"crop_padding": 2, "hflip": True}
    return s


def collect(loader, epoch=0, start_step=0):
    return [(x.clone(), y.clone()) for x, y in loader.batches(epoch, start_step)]


def denorm(x, mean=0.5, std=0.25):
    return torch.round((x * std + mean) * 255).to(torch.uint8)


# ---------------------------------------------------------------- registry + embedded mini set
def test_mini_dataset():
    b = load_dataset("fashion-mnist-mini")
    assert isinstance(b, DatasetBundle) and b.name == "fashion-mnist-mini"
    assert b.num_classes == 10 and b.class_names == FASHION_CLASSES
    assert (b.in_channels, b.image_size) == (1, 28) and b.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(b.train.labels).tolist() == [540] * 10
    assert torch.bincount(b.val.labels).tolist() == [60] * 10
    assert torch.bincount(b.test.labels).tolist() == [100] * 10
    assert b.mean == (0.2860,) and b.std == (0.3530,) and b.augment == {"crop_padding": 2, "hflip": True}
    meta = json.loads(json.dumps(b.meta()))
    assert meta["input_shape"] == [1, 28, 28] and meta["num_classes"] == 10 and meta["dataset"] == b.name
    full = load_dataset("fashion-mnist-mini", val_fraction=0)
    assert full.val is None and torch.bincount(full.train.labels).tolist() == [600] * 10
    # train/val are a partition of the official train split
    assert len(b.train) + len(b.val) == len(full.train)
    files = {p.name: p.stat().st_size for p in EMBEDDED_DIR.iterdir()}
    assert sum(files.values()) <= 4 * 1024 * 1024
    assert {f + ".gz" for f in IDX_NAMES} | {"LICENSE"} == set(files)
    text = (EMBEDDED_DIR / "LICENSE").read_text()
    assert "kdx" in text and "Zalando" in text and "Permission is hereby granted" in text


def test_split_is_seeded_and_stratified():
    a, b, c = (load_dataset("fashion-mnist-mini", seed=s, val_fraction=0.2) for s in (0, 0, 1))
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.bincount(a.val.labels).tolist() == [120] * 10


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KdxError, match="unknown dataset 'cifar11'.*cifar10.*fashion-mnist-mini"):
        load_dataset("cifar11")
    assert {"cifar10", "cifar100", "fashion-mnist", "mnist", "tiny-imagenet", "fashion-mnist-mini"} <= set(list_datasets())
    with pytest.raises(KdxError, match="val_fraction"):
        load_dataset("fashion-mnist-mini", val_fraction=1.5)


def test_a_dataset_is_one_registered_spec(tmp_path, monkeypatch):
    """A new dataset needs one DatasetSpec (here: a synthetic one), no edit of load_dataset."""
    from typer.testing import CliRunner

    from kdx.cli import app
    from kdx.data import get_dataset_info
    from kdx.data import registry

    seen = {}

    def load(root, download, image_size, path):
        seen.update(root=root, path=path)
        g = torch.Generator().manual_seed(0)
        make = lambda n: TensorSplit(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                                     torch.arange(n) % 4)
        return make(40), make(12), ["a", "b", "c", "d"]

    monkeypatch.setattr(registry, "_DATASETS", dict(registry.all_datasets()))
    spec = registry.register_dataset(registry.DatasetSpec(
        "toy", load, mean=(0.5,) * 3, std=(0.25,) * 3, augment=None, description="a toy set",
        num_classes=4, input_shape=(3, 8, 8)))
    assert "toy" in list_datasets()
    b = load_dataset("toy", root=tmp_path, val_fraction=0.25)
    assert seen == {"root": tmp_path, "path": None}
    assert (len(b.train), len(b.val), len(b.test), b.num_classes, b.image_size) == (28, 12, 12, 4, 8)  # 3 of each class's 10 held out
    assert b.augment == {"crop_padding": 1, "hflip": True}  # augment None: side // 8 and flips
    assert get_dataset_info("toy")["input_shape"] == [3, 8, 8]
    out = CliRunner().invoke(app, ["datasets"])
    assert out.exit_code == 0 and "toy" in out.output and "a toy set" in out.output
    with pytest.raises(ValueError, match="two datasets are named 'toy'"):
        registry.register_dataset(registry.DatasetSpec("toy", lambda *a: None, (0.5,), (0.5,), None))
    assert registry.register_dataset(spec) is spec  # the same spec again (a re-import) is fine
    with pytest.raises(KdxError, match="classes and image size are known only from its files"):
        get_dataset_info("folder:/somewhere")
    with pytest.raises(KdxError, match="unknown dataset 'toy:x'"):
        load_dataset("toy:x")


# ---------------------------------------------------------------- IDX files
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_idx_datasets(tmp_path, gz, layout):
    name, tv = ("fashion-mnist", "FashionMNIST") if gz else ("mnist", "MNIST")
    make_idx_dir(tmp_path if layout == "flat" else tmp_path / tv / "raw", gz=gz)
    b = load_dataset(name, root=tmp_path, val_fraction=0.25)
    assert (len(b.train), len(b.val), len(b.test)) == (30, 10, 20)
    assert b.train.images.dtype == torch.uint8 and b.test.images.shape == (20, 1, 28, 28)
    assert torch.bincount(b.val.labels).tolist() == [1] * 10
    assert b.augment["hflip"] == (name == "fashion-mnist")


def test_idx_roundtrip_and_env_root(tmp_path, monkeypatch):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    for f in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / f, arr)
        assert torch.equal(read_idx(tmp_path / f), torch.from_numpy(arr))
    make_idx_dir(tmp_path / "fashion-mnist")  # root/<name>/ also works
    monkeypatch.setenv("KDX_DATA", str(tmp_path))
    assert len(load_dataset("fashion-mnist", val_fraction=0).train) == 40


def test_idx_corrupt_files(tmp_path):
    d = make_idx_dir(tmp_path / "d", gz=False)
    img, lab = d / IDX_NAMES[0], d / IDX_NAMES[1]
    good = img.read_bytes()
    img.write_bytes(good[:-7])
    with pytest.raises(KdxError, match="truncated"):
        read_idx(img)
    img.write_bytes(good + b"xx")
    with pytest.raises(KdxError, match="trailing"):
        read_idx(img)
    img.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(KdxError, match="magic"):
        read_idx(img)
    img.write_bytes(good[:6])
    with pytest.raises(KdxError, match="truncated"):
        read_idx(img)
    img.write_bytes(good)
    write_idx(lab, np.zeros(39, dtype=np.uint8))
    with pytest.raises(KdxError, match="label count 39.*image count 40"):
        read_idx_pair(img, lab)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(good)[:100])
    with pytest.raises(KdxError, match="gzip"):
        read_idx(gz)
    gz.write_bytes(b"not a gzip file at all")
    with pytest.raises(KdxError, match="gzip"):
        read_idx(gz)
    with pytest.raises(KdxError, match="label count"):  # surfaced through load_dataset too
        load_dataset("mnist", root=d)


def test_missing_files_and_failed_download(tmp_path, monkeypatch):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(KdxError, match="t10k-labels-idx1-ubyte.*--download") as e:
        load_dataset("fashion-mnist", root=tmp_path)
    assert str(tmp_path) in str(e.value)
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://x, got:\nno network\n")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(KdxError, match="downloading fashion-mnist failed") as e:
        load_dataset("fashion-mnist", root=tmp_path, download=True)
    assert "\n" not in str(e.value)
    with pytest.raises(KdxError, match="cifar-10-batches-py.*--download"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_like_folder(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    data = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data[f] = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
        (d / f).write_bytes(pickle.dumps({"data": data[f], "labels": list(range(10))}))
    names = [f"c{i}" for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    b = load_dataset("cifar10", root=d, val_fraction=0.1)  # root = the folder itself
    assert b.class_names == names and (b.in_channels, b.image_size, b.num_classes) == (3, 32, 10)
    assert (len(b.train), len(b.val), len(b.test)) == (40, 10, 10)  # 5 per class -> 1 held out each
    assert torch.equal(b.test.images[0], torch.from_numpy(data["test_batch"][0].reshape(3, 32, 32)))
    assert b.augment == {"crop_padding": 4, "hflip": True} and b.mean == (0.4914, 0.4822, 0.4465)


# ---------------------------------------------------------------- augmentation
def reference_shift_flip(x, dy, dx, flip, p):
    out = []
    for img, a, b, f in zip(x, dy.tolist(), dx.tolist(), flip.tolist()):
        crop = F.pad(img, (p, p, p, p))[:, p + a:p + a + img.shape[1], p + b:p + b + img.shape[2]]
        out.append(crop.flip(2) if f else crop)
    return torch.stack(out)


def test_crop_is_a_real_shift_and_flip_flips():
    x = torch.randint(1, 256, (3, 2, 6, 7), dtype=torch.uint8)
    dy, dx, flip = torch.tensor([-2, 0, 1]), torch.tensor([1, -2, 0]), torch.tensor([False, True, True])
    out = apply_shift_flip(x, dy, dx, flip)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, reference_shift_flip(x, dy, dx, flip, 2))
    assert torch.equal(out[0, :, 2:, :6], x[0, :, :4, 1:]) and (out[0, :, :2] == 0).all()  # shifted + zero fill
    zero = torch.zeros(3, dtype=torch.long)
    assert torch.equal(apply_shift_flip(x, zero, zero, torch.ones(3, dtype=torch.bool)), x.flip(3))
    assert torch.equal(apply_shift_flip(x, zero, zero, torch.zeros(3, dtype=torch.bool)), x)


def test_loader_augmentation_matches_reference():
    s = split_of()
    loader = make_loader(s, 16, train=True, device="cpu", seed=3)
    order = loader.epoch_indices(2)
    for step, (x, y) in enumerate(loader.batches(2)):
        assert x.dtype == torch.float32 and x.shape == (16, 1, 8, 8) and y.dtype == torch.int64
        assert torch.equal(y, order[step * 16:(step + 1) * 16])
        g = torch.Generator().manual_seed(derive_seed(3, 2, step, 0))
        dy, dx, flip = sample_params(16, s.default_augment, g)
        assert torch.equal(denorm(x), reference_shift_flip(s.images[y], dy, dx, flip, 2))
    assert step == len(loader) - 1 == 103 // 16 - 1  # drop_last in training


# ---------------------------------------------------------------- loaders
def test_loader_determinism_and_resume():
    s = split_of()
    before = torch.random.get_rng_state()
    mk = lambda seed=0: make_loader(s, 10, train=True, device="cpu", seed=seed)  # noqa: E731
    a, b = collect(mk(), 4), collect(mk(), 4)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert len(a) == 10 and mk().num_samples == 100
    assert not torch.equal(a[0][1], collect(mk(), 5)[0][1])  # other epoch, other order
    assert not torch.equal(a[0][1], collect(mk(seed=1), 4)[0][1])
    tail = collect(mk(), 4, start_step=6)
    assert len(tail) == 4
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a[6:], tail))
    assert collect(mk(), 4, start_step=10) == []
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    noaug = make_loader(s, 10, train=True, device="cpu", augment={})
    x, y = next(iter(noaug.batches(0)))
    assert torch.equal(denorm(x), s.images[y])


def test_eval_loader_sequential_and_complete():
    s = split_of()
    loader = make_loader(s, 10, train=False, device="cpu")
    batches = collect(loader)
    assert len(loader) == len(batches) == 11 and loader.num_samples == 103 and len(batches[-1][1]) == 3
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(103))
    assert torch.equal(denorm(torch.cat([x for x, _ in batches])), s.images)  # no augmentation


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_distributed_shards(world_size):
    s = split_of()
    ys, steps = [], set()
    for r in range(world_size):
        ld = make_loader(s, 5, train=True, device="cpu", augment={}, rank=r, world_size=world_size, drop_last=False)
        ys.append(torch.cat([y for _, y in ld.batches(1)]))
        steps.add(len(ld))
        assert len(ys[-1]) == ld.num_samples == -(-103 // world_size)
    assert len(steps) == 1  # equal step counts on all ranks
    allys = torch.cat(ys)
    assert set(allys.tolist()) == set(range(103))
    assert len(allys) - 103 == len(allys) - len(set(allys.tolist()))  # only wrap-around padding repeats
    # eval: disjoint contiguous shards, no padding
    ev = [torch.cat([y for _, y in make_loader(s, 5, train=False, device="cpu", rank=r, world_size=world_size)
                     .batches(0)]) for r in range(world_size)]
    assert torch.equal(torch.cat(ev), torch.arange(103))


def test_loader_options():
    s = split_of(n=20, c=3)
    x, _ = next(iter(make_loader(s, 8, train=True, device="cpu", channels_last=True).batches(0)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(KdxError, match="batch size 64"):
        make_loader(s, 64, train=True, device="cpu")
    with pytest.raises(KdxError, match="unknown augmentation"):
        make_loader(s, 8, train=True, device="cpu", augment={"rotate": 3})
    assert len(make_loader(s, 64, train=True, device="cpu", drop_last=False)) == 1


# ---------------------------------------------------------------- image folders
def make_folder(root, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_folder_dataset_end_to_end(tmp_path):
    root = make_folder(tmp_path / "imgs", [(12, 12), (9, 15)])
    b = load_dataset(f"folder:{root}", val_fraction=1 / 3)
    assert b.class_names == ["cat", "dog"] and (b.in_channels, b.image_size) == (3, 12)
    assert (len(b.train), len(b.val), len(b.test)) == (8, 4, 4)
    assert b.augment == {"crop_padding": 1, "hflip": True}
    mk = lambda **k: make_loader(b.train, 3, train=True, device="cpu", seed=1, num_workers=0, **k)  # noqa: E731
    a = collect(mk(), 2)
    assert len(a) == len(mk()) == 2 and a[0][0].shape == (3, 3, 12, 12) and a[0][0].dtype == torch.float32
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, collect(mk(), 2)))
    assert torch.equal(collect(mk(), 2, start_step=1)[0][0], a[1][0])
    ev = collect(make_loader(b.test, 3, train=False, device="cpu", num_workers=1, mean=b.mean, std=b.std))
    assert [len(y) for _, y in ev] == [3, 1] and torch.cat([y for _, y in ev]).tolist() == [0, 0, 1, 1]
    assert load_dataset(f"folder:{root}", image_size=20).image_size == 20
    (root / "val" / "dog" / "0.png").write_bytes(b"broken")
    with pytest.raises(KdxError, match="cannot read image .*0.png") as e:
        collect(make_loader(load_dataset(f"folder:{root}").test, 4, train=False, device="cpu", num_workers=1))
    assert "\n" not in str(e.value)
    with pytest.raises(KdxError, match="train/<class>"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_tiny_imagenet_layout(tmp_path):
    from PIL import Image

    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tgreat white shark, white shark\n")
    ann = []
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (64, 64), (i, 0, 0)).save(base / "train" / w / "images" / f"{w}_{i}.JPEG")
        Image.new("RGB", (64, 64)).save(base / "val" / "images" / f"val_{w}.JPEG")
        ann.append(f"val_{w}.JPEG\t{w}\t0\t0\t10\t10")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    b = load_dataset("tiny-imagenet", root=tmp_path, val_fraction=0.2)
    assert b.class_names == ["goldfish", "great white shark"] and b.image_size == 64
    assert (len(b.train), len(b.val), len(b.test)) == (8, 2, 2) and b.test.labels.tolist() == [1, 0]
    x, y = next(iter(make_loader(b.test, 2, train=False, device="cpu", num_workers=0).batches(0)))
    assert x.shape == (2, 3, 64, 64)
    with pytest.raises(KdxError, match="wnids.txt"):
        load_dataset("tiny-imagenet", root=tmp_path / "none")


# ---------------------------------------------------------------- hostile IDX content (issue 13, item 20)
def test_idx_label_out_of_range_is_refused(tmp_path):
    d = make_idx_dir(tmp_path / "d", gz=False)
    labels = (np.arange(40) % 10).astype(np.uint8)
    labels[7] = 200
    write_idx(d / IDX_NAMES[1], labels)
    with pytest.raises(KdxError, match="train label 200 at index 7 is outside 0..9"):
        load_dataset("mnist", root=d)
    write_idx(d / IDX_NAMES[1], (np.arange(40) % 10).astype(np.uint8))
    write_idx(d / IDX_NAMES[3], np.full(20, 10, dtype=np.uint8))
    with pytest.raises(KdxError, match=r"test label 10 at index 0 is outside 0..9 \(20 such labels\)"):
        load_dataset("mnist", root=d)
    write_idx(d / IDX_NAMES[3], np.full(20, -1, dtype=np.int8))  # signed labels below zero
    with pytest.raises(KdxError, match="test label -1"):
        load_dataset("mnist", root=d)


@pytest.mark.parametrize("n_train,n_test,val_fraction,pattern", [
    (0, 20, 0.1, "the train split has no images"),
    (40, 0, 0.1, "the test split has no images"),
    (0, 0, 0.0, "the train split has no images"),
    (10, 20, 0.5, "leaves the train split empty"),  # one image per class, half held out
])
def test_idx_empty_splits_are_refused(tmp_path, n_train, n_test, val_fraction, pattern):
    d = make_idx_dir(tmp_path / "d", n_train=n_train, n_test=n_test, gz=False)
    with pytest.raises(KdxError, match=pattern):
        load_dataset("mnist", root=d, val_fraction=val_fraction)


def test_idx_bad_shapes_and_label_types(tmp_path):
    d = make_idx_dir(tmp_path / "d", gz=False)
    write_idx(d / IDX_NAMES[0], np.zeros((40, 28, 20), dtype=np.uint8))
    with pytest.raises(KdxError, match="28x20; kdx needs square images"):
        load_dataset("mnist", root=d)
    write_idx(d / IDX_NAMES[0], np.zeros((40, 0, 0), dtype=np.uint8))
    with pytest.raises(KdxError, match="0x0"):
        load_dataset("mnist", root=d)
    write_idx(d / IDX_NAMES[0], np.zeros((40, 28, 28), dtype=np.uint8))
    raw = bytes([0, 0, 0x0D, 1]) + (40).to_bytes(4, "big") + np.zeros(40, dtype=">f4").tobytes()
    (d / IDX_NAMES[1]).write_bytes(raw)  # float labels
    with pytest.raises(KdxError, match="labels must be integers"):
        load_dataset("mnist", root=d)
    huge = bytes([0, 0, 0x08, 3]) + b"\xff\xff\xff\xff" * 3  # dims whose product overflows int64
    (d / IDX_NAMES[0]).write_bytes(huge + b"\x00" * 16)
    with pytest.raises(KdxError, match="truncated"):
        read_idx(d / IDX_NAMES[0])
    (d / IDX_NAMES[0]).write_bytes(b"")
    with pytest.raises(KdxError, match="magic.*empty"):
        read_idx(d / IDX_NAMES[0])


def test_dataset_plugins_through_entry_points(monkeypatch):
    """``kdx.datasets`` entry points register a DatasetSpec; anything else is one clear error."""
    import importlib.metadata
    from types import SimpleNamespace

    from kdx.data import registry
    from kdx.plugins import load_entry_points

    spec = registry.DatasetSpec("plug", lambda *a: None, (0.5,), (0.5,), None)
    eps = [SimpleNamespace(name="plug", value="pkg:SPEC", load=lambda: spec)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == "kdx.datasets" else [])
    got = {}
    load_entry_points("kdx.datasets", "dataset", "a kdx DatasetSpec", lambda o: isinstance(o, registry.DatasetSpec),
                      lambda o: got.setdefault(o.name, o))
    assert got == {"plug": spec}
    eps[0] = SimpleNamespace(name="bad", value="pkg:X", load=lambda: 3)
    with pytest.raises(KdxError, match="dataset plug-in 'bad' \\(pkg:X\\) is not a kdx DatasetSpec"):
        load_entry_points("kdx.datasets", "dataset", "a kdx DatasetSpec", lambda o: isinstance(o, registry.DatasetSpec),
                          got.setdefault)

    def broken():
        raise ImportError("no module named pkg")

    eps[0] = SimpleNamespace(name="gone", value="pkg:Y", load=broken)
    with pytest.raises(KdxError, match="cannot load dataset plug-in 'gone' \\(pkg:Y\\): no module named pkg"):
        load_entry_points("kdx.datasets", "dataset", "a kdx DatasetSpec", lambda o: True, got.setdefault)
