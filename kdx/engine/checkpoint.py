"""Checkpoints: safetensors weights with JSON metadata, resumable training state, loading.

No pickle is ever loaded: model weights, optimizer tensors and RNG states are
safetensors; everything else is JSON. Every write is atomic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kdx.io import atomic_path, atomic_write_text
from kdx.engine.metadata import parse_metadata
from kdx.engine.runs import BEST_FILE, MODEL_FILE, checkpoint_file  # noqa: F401  (file names re-exported)
from kdx.errors import KdxError

RESUME_DIR = "resume"

# ---------------------------------------------------------------- model kinds

KINDS: dict[str, str] = {
    "classifier": "kdx.models.registry:model_from_metadata",
    "explainer": "kdx.models.routed.kinds:build_explainer",
    "vam-student": "kdx.models.routed.vam:build_vam_student",
}
"""Every checkpoint kind and its builder ``fn(metadata) -> nn.Module`` ("module:function"), next
to its model. Loading a checkpoint imports only the module of its own kind: no training code."""


def kind_builder(kind: str) -> Callable[[dict], torch.nn.Module]:
    """The builder of checkpoints of ``kind``; KdxError for a kind this kdx does not know."""
    import importlib

    if kind not in KINDS:
        raise KdxError(f"checkpoint kind '{kind}' is not supported by this kdx version "
                       f"(known kinds: {', '.join(KINDS)})")
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- save / load weights


def _contiguous_state(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        out[key] = value.detach().to("cpu").contiguous()
    return out


def save_checkpoint(path: str | Path, state_dict: dict, metadata: dict) -> Path:
    """Write ``state_dict`` and JSON ``metadata`` to a safetensors file, atomically."""
    path = Path(path)
    tensors = _contiguous_state(state_dict)
    # tensors that share memory (tied weights) must be cloned for safetensors
    seen: dict = {}
    for key, value in list(tensors.items()):
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape)) if value.numel() else None
        if ptr is not None and ptr in seen:
            tensors[key] = value.clone()
        elif ptr is not None:
            seen[ptr] = key
    meta = {"format": "kdx", "kdx": json.dumps(metadata, sort_keys=True, default=_json_default)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def resolve_checkpoint(path: str | Path, which: str = "model") -> Path:
    """A run directory or a file -> the safetensors file to load (see :mod:`kdx.engine.runs`)."""
    return checkpoint_file(path, which)


def read_metadata(path: str | Path) -> dict:
    """Metadata of a kdx safetensors checkpoint (file or run directory)."""
    path = resolve_checkpoint(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise KdxError(f"cannot read checkpoint {path}: not a valid safetensors file ({exc})") from None
    if "kdx" not in raw:
        raise KdxError(f"{path} is a safetensors file without kdx metadata; use `kdx import-checkpoint` first")
    try:
        return parse_metadata(raw["kdx"], path)  # size, depth and schema checked (kdx.engine.metadata)
    except ValueError:
        raise KdxError(f"{path}: corrupt kdx metadata") from None


def load_state(path: str | Path, map_location="cpu") -> dict:
    path = resolve_checkpoint(path)
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise KdxError(f"cannot read checkpoint {path}: {exc}") from None


def check_and_load_state_dict(model: torch.nn.Module, state: dict, source: str, arch: str) -> None:
    """Load ``state`` into ``model`` strictly, turning mismatches into one clear KdxError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
        raise KdxError(
            f"{source} does not fit arch '{arch}': {detail} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise KdxError(
                f"{source} does not fit arch '{arch}': '{key}' has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(value.shape)}"
            )
    model.load_state_dict(state, strict=True)


def build_model(meta: dict) -> torch.nn.Module:
    """The (untrained) model a checkpoint's metadata describes, built by its kind's builder."""
    return kind_builder(meta.get("kind", "classifier"))(meta)


def load_model(path: str | Path, map_location="cpu", which: str = "model"):
    """Load any kdx checkpoint (file or run dir) -> ``(model in eval mode, metadata)``."""
    file = resolve_checkpoint(path, which=which)
    meta = read_metadata(file)
    model = build_model(meta)
    state = load_state(file, map_location="cpu")
    check_and_load_state_dict(model, state, str(file), meta.get("arch", meta.get("kind", "?")))
    model.to(map_location).eval()
    return model, meta


# ---------------------------------------------------------------- resumable training state


def _rng_state() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    np_state = np.random.get_state()
    js = {
        "python": _to_jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, js


def _to_jsonable(obj):
    if isinstance(obj, tuple):
        return [_to_jsonable(o) for o in obj]
    return obj


def _to_tuple(obj):
    if isinstance(obj, list):
        return tuple(_to_tuple(o) for o in obj)
    return obj


def _set_rng_state(tensors: dict, js: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda_states[: torch.cuda.device_count()]])
    random.setstate(_to_tuple(js["python"]))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _optimizer_to_safe(opt_state: dict, prefix: str) -> tuple[dict, dict]:
    tensors, js_state = {}, {}
    for pid, st in opt_state["state"].items():
        entry = {}
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                entry[name] = value
        js_state[str(pid)] = entry
    return tensors, {"state": js_state, "param_groups": opt_state["param_groups"]}


def _optimizer_from_safe(tensors: dict, js: dict, prefix: str) -> dict:
    state: dict = {}
    for pid, entry in js["state"].items():
        state[int(pid)] = dict(entry)
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            pid, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": js["param_groups"]}


def save_resume(run_dir: Path, *, model: torch.nn.Module, optimizer, scaler, progress: dict) -> None:
    """Write ``resume/state.safetensors`` + ``resume/state.json`` (progress, optimizer, RNG)."""
    rdir = Path(run_dir) / RESUME_DIR
    rdir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in _contiguous_state(model.state_dict()).items()}
    opt_tensors, opt_js = _optimizer_to_safe(optimizer.state_dict(), "optim")
    tensors.update(opt_tensors)
    rng_tensors, rng_js = _rng_state()
    tensors.update(rng_tensors)
    token = f"{progress.get('epoch')}-{progress.get('step')}-{random.getrandbits(32)}"
    with atomic_path(rdir / "state.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"token": token})
    js = {
        "token": token,
        "progress": progress,
        "optimizer": opt_js,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_js,
    }
    atomic_write_text(rdir / "state.json", json.dumps(js, default=_json_default))


def has_resume(run_dir: Path) -> bool:
    rdir = Path(run_dir) / RESUME_DIR
    return (rdir / "state.json").is_file() and (rdir / "state.safetensors").is_file()


def load_resume(run_dir: Path, *, model: torch.nn.Module, optimizer, scaler) -> dict:
    """Restore model, optimizer, scaler and RNG; return the progress record."""
    rdir = Path(run_dir) / RESUME_DIR
    try:
        js = json.loads((rdir / "state.json").read_text())
        from safetensors import safe_open

        with safe_open(str(rdir / "state.safetensors"), framework="pt") as fh:
            token = (fh.metadata() or {}).get("token")
        tensors = load_file(str(rdir / "state.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise KdxError(f"cannot resume from {rdir}: {exc}") from None
    if token != js.get("token"):
        raise KdxError(f"cannot resume from {rdir}: state.json and state.safetensors do not belong together")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_and_load_state_dict(model, model_state, str(rdir), "this run's model")
    optimizer.load_state_dict(_optimizer_from_safe(tensors, js["optimizer"], "optim"))
    if scaler is not None and js.get("scaler"):
        scaler.load_state_dict(js["scaler"])
    _set_rng_state(tensors, js["rng"])
    return js["progress"]
