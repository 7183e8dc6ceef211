"""`kdx import-checkpoint`: foreign .pth -> kdx safetensors (torch.load with weights_only=True only)."""

from __future__ import annotations

from pathlib import Path

import torch

import kdx
from kdx.engine import checkpoint as ckpt
from kdx.errors import KdxError, did_you_mean


def read_foreign_state_dict(file: Path) -> dict:
    """Read a .pth safely: ``{"model": sd}``, ``{"state_dict": sd}``, ``{"net": sd}`` or a bare state dict."""
    if not file.is_file():
        raise KdxError(f"checkpoint not found: {file}")
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for unsafe or corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdxError(f"cannot read {file} with torch.load(weights_only=True): {first}") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "net", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KdxError(f"{file} does not hold a state dict of tensors (nor one under 'model'/'state_dict')")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _dataset_meta(dataset: str | None, num_classes: int, in_channels: int) -> dict:
    meta = {"num_classes": num_classes, "input_shape": [in_channels, 32, 32]}
    if dataset is None:
        return meta
    from kdx.data import get_dataset_info

    info = get_dataset_info(dataset)
    meta.update(info)
    if meta.get("num_classes") != num_classes:
        raise KdxError(f"dataset '{dataset}' has {meta['num_classes']} classes, the weights {num_classes}")
    return meta


def run(file: Path, *, out: Path, kind="classifier", arch=None, num_classes=None, in_channels=None, dataset=None,
        force=False) -> dict:
    out = Path(out)
    if out.exists() and not force:
        raise KdxError(f"{out} exists; pass --force to overwrite it")
    if out.suffix != ".safetensors":
        raise KdxError(f"--out must end in .safetensors, got {out.name}")
    state = read_foreign_state_dict(Path(file))
    if kind == "explainer":
        from kdx.explainer.kind import import_official

        model, meta = import_official(state, num_classes=num_classes)
        meta.update({k: v for k, v in _dataset_meta(dataset, model.num_classes, model.in_channels).items()
                     if k not in meta or k in ("dataset", "mean", "std", "class_names", "input_shape")})
    elif kind == "classifier":
        from kdx.models import create_model, list_models

        if arch is None:
            raise KdxError("--arch is required for --kind classifier")
        if arch not in list_models():
            raise did_you_mean("arch", arch, list_models())
        n = num_classes
        if n is None:
            heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
            n = heads[-1].shape[0] if heads else 100
        c_in = in_channels
        if c_in is None:
            convs = [v for v in state.values() if v.dim() == 4]
            c_in = convs[0].shape[1] if convs else 3
        model = create_model(arch, num_classes=n, in_channels=c_in)
        ckpt.check_and_load_state_dict(model, state, str(file), arch)
        meta = {"kind": "classifier", "arch": arch}
        meta.update(_dataset_meta(dataset, n, c_in))
    else:
        raise KdxError(f"unknown --kind '{kind}'; valid kinds: classifier, explainer")
    meta.update({"kdx_version": kdx.__version__, "imported_from": Path(file).name, "epoch": None, "metrics": {}})
    ckpt.save_checkpoint(out, model.state_dict(), meta)
    print(f"wrote {out} ({meta['kind']}, {meta.get('arch', '')}, {meta['num_classes']} classes)")
    return meta
