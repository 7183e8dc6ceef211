"""`kdx import-checkpoint`: foreign .pth -> kdx safetensors (torch.load with weights_only=True only)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from kdx.version import __version__
from kdx.engine import checkpoint as ckpt
from kdx.engine.rundir import acquire_lock, check_output_file
from kdx.errors import KdxError, did_you_mean
from kdx.io import check_regular_input


def _load_error_detail(exc: Exception) -> str:
    """The informative part of torch.load's error, on one line: the weights-only unpickler's
    reason (e.g. ``Unsupported global: GLOBAL builtins.print``) rather than its boilerplate."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        reason = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"refused by the weights-only unpickler ({reason or 'unsupported content'}); not a plain tensor checkpoint"
    if isinstance(exc, KeyError) or not text:
        return f"not a torch checkpoint ({type(exc).__name__}{': ' + text if text else ''})"
    return " ".join(text.splitlines()[0].split())[:300]


def read_foreign_state_dict(file: Path) -> dict:
    """Read a .pth safely: ``{"model": sd}``, ``{"state_dict": sd}``, ``{"net": sd}`` or a bare state dict."""
    if not file.is_file():
        raise KdxError(f"checkpoint not found: {file}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of raw pickles: noise above our line
            warnings.simplefilter("ignore")
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for unsafe or corrupt files
        raise KdxError(f"cannot read {file} with torch.load(weights_only=True): {_load_error_detail(exc)}") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "net", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KdxError(f"{file} does not hold a state dict of tensors (nor one under 'model'/'state_dict')")
    bad = next((k for k in obj if not isinstance(k, str)), None)
    if bad is not None:
        raise KdxError(f"{file}: a state-dict key is not a string ({bad!r}); not a PyTorch state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _infer_io(state: dict, arch: str, num_classes: int | None, in_channels: int | None) -> tuple[int, int]:
    """(num_classes, in_channels) of the weights: the given values, else read from the arch's own
    classifier and stem keys (:func:`kdx.models.registry.io_keys`; key order in the file is
    irrelevant), else 100 classes and 3 channels (the load then reports what does not fit)."""
    from kdx.models.registry import io_keys

    keys = io_keys(arch)
    head, stem = state.get(keys["head"] or ""), state.get(keys["stem"] or "")
    if num_classes is None:
        num_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else 100
    if in_channels is None:
        in_channels = int(stem.shape[1]) if stem is not None and stem.dim() == 4 else 3
    return num_classes, in_channels


def _dataset_meta(dataset: str | None, num_classes: int, in_channels: int) -> dict:
    meta = {"num_classes": num_classes, "input_shape": [in_channels, 32, 32]}
    if dataset is None:
        return meta
    from kdx.data import get_dataset_info

    info = get_dataset_info(dataset)
    meta.update(info)
    if meta.get("num_classes") != num_classes:
        raise KdxError(f"dataset '{dataset}' has {meta['num_classes']} classes, the weights {num_classes}")
    if meta["input_shape"][0] != in_channels:
        raise KdxError(f"dataset '{dataset}' has {meta['input_shape'][0]}-channel images, "
                       f"the weights take {in_channels}")
    return meta


def run(opts) -> dict:
    """Convert ``opts.file`` into ``opts.out`` (:class:`kdx.commandconfig.ImportCheckpointOptions`)."""
    opts.validate()
    file, out, kind, arch = Path(opts.file), Path(opts.out), opts.kind, opts.arch
    num_classes, in_channels, dataset = opts.num_classes, opts.in_channels, opts.dataset
    if out.is_dir():
        raise KdxError(f"--out {out} is a directory; name the .safetensors file to write")
    check_output_file(out, "--out")  # never a device, FIFO or another run's file; a writable folder
    if out.exists() and not opts.overwrite:
        raise KdxError(f"{out} exists; pass --overwrite to replace it")
    if out.suffix != ".safetensors":
        raise KdxError(f"--out must end in .safetensors, got {out.name}")
    check_regular_input(file, "checkpoint")
    acquire_lock(out.parent, f".{out.name}.kdx.lock")  # a second import into the same file is refused
    state = read_foreign_state_dict(file)
    if kind == "explainer":
        from kdx.models.routed.kinds import import_official

        model, meta = import_official(state, num_classes=num_classes)
        meta.update({k: v for k, v in _dataset_meta(dataset, model.num_classes, model.in_channels).items()
                     if k not in meta or k in ("dataset", "mean", "std", "class_names", "input_shape")})
    elif kind == "classifier":
        from kdx.models import create_model, list_models

        if arch is None:
            raise KdxError("--arch is required for --kind classifier")
        if arch not in list_models():
            raise did_you_mean("arch", arch, list_models())
        n, c_in = _infer_io(state, arch, num_classes, in_channels)
        model = create_model(arch, num_classes=n, in_channels=c_in)
        ckpt.check_and_load_state_dict(model, state, str(file), arch)
        meta = {"kind": "classifier", "arch": arch}
        meta.update(_dataset_meta(dataset, n, c_in))
    else:
        raise KdxError(f"unknown --kind '{kind}'; valid kinds: classifier, explainer")
    meta.update({"kdx_version": __version__, "imported_from": Path(file).name, "epoch": None, "metrics": {}})
    ckpt.save_checkpoint(out, model.state_dict(), meta)
    print(f"wrote {out} ({meta['kind']}, {meta.get('arch', '')}, {meta['num_classes']} classes)")
    return meta
