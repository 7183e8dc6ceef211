"""Checkpoints: safetensors weights with JSON metadata, resumable training state, loading.

No pickle is ever loaded: model weights, optimizer tensors and RNG states are
safetensors; everything else is JSON. Every write is atomic.
"""

from __future__ import annotations

import json
import math
import os
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
    bad_key = next((k for k in state if not isinstance(k, str)), None)
    if bad_key is not None:
        raise KdxError(f"{source} does not fit arch '{arch}': a state-dict key is not a string ({bad_key!r})")
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
        if (value.is_floating_point() != state[key].is_floating_point()
                or (state[key].dtype == torch.bool) != (value.dtype == torch.bool)):
            raise KdxError(f"{source} does not fit arch '{arch}': '{key}' holds {str(state[key].dtype)[6:]} values, "
                           f"the model {str(value.dtype)[6:]} (kdx never casts weights silently)")
    model.load_state_dict(state, strict=True)


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 64 * 1024 ** 3


def _probe_size(builder, meta: dict) -> int | None:
    """Bytes of the model ``meta`` describes, built on the meta device (no memory allocated);
    None when the builder cannot run there (the real build then reports what is wrong)."""
    try:
        with torch.device("meta"):
            probe = builder(meta)
    except Exception:  # noqa: BLE001 - any failure here is re-raised by the real build below
        return None
    tensors = list(probe.parameters()) + list(probe.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def build_model(meta: dict, source: str = "checkpoint") -> torch.nn.Module:
    """The (untrained) model a checkpoint's metadata describes, built by its kind's builder. Sized
    against memory first (metadata is data: widths of 10^5 channels would need hundreds of GB), and
    a builder's own error on hostile values becomes one line."""
    builder = kind_builder(meta.get("kind", "classifier"))
    size, limit = _probe_size(builder, meta), _memory_bytes() // 2
    if size is not None and size > limit:
        raise KdxError(f"{source}: the model its metadata describes needs {size / 1024 ** 3:.1f} GiB "
                       f"(more than half of this machine's {2 * limit / 1024 ** 3:.0f} GiB); not a checkpoint kdx wrote")
    try:
        return builder(meta)
    except KdxError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AttributeError, ZeroDivisionError) as exc:
        raise KdxError(f"{source}: kdx metadata does not describe a model this kdx can build "
                       f"({type(exc).__name__}: {' '.join(str(exc).split())[:150]})") from None


def load_model(path: str | Path, map_location="cpu", which: str = "model"):
    """Load any kdx checkpoint (file or run dir) -> ``(model in eval mode, metadata)``."""
    file = resolve_checkpoint(path, which=which)
    meta = read_metadata(file)
    model = build_model(meta, str(file))
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


def _bad_state(rdir: Path, why: str) -> KdxError:
    return KdxError(f"cannot resume from {rdir}: state.json {why} (not what kdx writes; delete {rdir} to "
                    f"restart the interrupted epoch from the last finished one's files, or --overwrite)")


def _is_int(v, lo: int = 0, hi: int = 2**62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def validate_resume_state(js, rdir: Path) -> dict:
    """``resume/state.json`` checked like a flag: its structure, progress counters, optimizer
    record and RNG states (one-line KdxError naming what is wrong)."""
    if not isinstance(js, dict):
        raise _bad_state(rdir, "is not a JSON object")
    for key, kind in (("progress", dict), ("optimizer", dict), ("rng", dict)):
        if not isinstance(js.get(key), kind):
            raise _bad_state(rdir, f"lacks its '{key}' object")
    validate_progress(js["progress"], rdir)
    opt = js["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"]):
        raise _bad_state(rdir, "has no valid optimizer record (state, param_groups)")
    if not all(isinstance(k, str) and k.isdigit() and isinstance(v, dict) for k, v in opt["state"].items()):
        raise _bad_state(rdir, "has an invalid optimizer state")
    rng = js["rng"]
    np_state = rng.get("numpy")
    if not (isinstance(np_state, list) and len(np_state) == 5 and np_state[0] == "MT19937"
            and isinstance(np_state[1], list) and len(np_state[1]) == 624
            and all(_is_int(x, 0, 2**32 - 1) for x in np_state[1]) and _is_int(np_state[2], 0, 624)):
        raise _bad_state(rdir, "has an invalid NumPy RNG state")
    py = rng.get("python")
    if not (isinstance(py, list) and len(py) == 3 and isinstance(py[1], list) and len(py[1]) == 625
            and all(_is_int(x, 0, 2**32) for x in py[1])):
        raise _bad_state(rdir, "has an invalid Python RNG state")
    return js


def validate_progress(progress: dict, rdir: Path) -> dict:
    """The progress record: epoch >= 1, steps >= 0, finite sums, a best record."""
    if not _is_int(progress.get("epoch"), 1, 10**7):
        raise _bad_state(rdir, f"has epoch {progress.get('epoch')!r} (an integer >= 1 is needed)")
    for key in ("step", "total_steps"):
        if not _is_int(progress.get(key)):
            raise _bad_state(rdir, f"has {key} {progress.get(key)!r} (an integer >= 0 is needed)")
    if not _is_int(progress.get("bad_steps", 0)):
        raise _bad_state(rdir, "has an invalid bad_steps count")
    sums, best = progress.get("sums"), progress.get("best")
    if not (isinstance(sums, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v) for v in sums.values())
            and all(k in sums for k in ("n", "correct", "loss"))):
        raise _bad_state(rdir, "has invalid running sums")
    if not (isinstance(best, dict) and _is_int(best.get("epoch"), 0, 10**7)
            and isinstance(best.get("val_top1"), (int, float)) and not isinstance(best.get("val_top1"), bool)):
        raise _bad_state(rdir, "has an invalid best-epoch record")
    records = progress.get("records", [])
    if not (isinstance(records, list) and all(isinstance(r, str) and r.isidentifier() for r in records)):
        raise _bad_state(rdir, "has invalid record names")
    return progress


def check_progress_fits(progress: dict, rdir: Path, epochs: int, steps_per_epoch: int) -> None:
    """A resumed run's progress against its config: never more epochs done than the run has (an
    edited epoch, or ``--epochs`` below what was trained), never more steps than an epoch has."""
    done = progress["epoch"] - (0 if progress["step"] >= steps_per_epoch else 1)
    if progress["epoch"] > epochs and progress["step"] < steps_per_epoch or done > epochs:
        raise KdxError(f"--resume {Path(rdir).parent}: the run has trained {done} epoch(s) (epoch "
                       f"{progress['epoch']}), more than --epochs {epochs}; --epochs may only grow")
    if progress["step"] > steps_per_epoch:
        raise _bad_state(rdir, f"has step {progress['step']} in an epoch of {steps_per_epoch} steps")


def load_resume(run_dir: Path, *, model: torch.nn.Module, optimizer, scaler) -> dict:
    """Restore model, optimizer, scaler and RNG; return the (validated) progress record."""
    from safetensors import safe_open

    from kdx.io import read_text_checked

    rdir = Path(run_dir) / RESUME_DIR
    try:
        js = json.loads(read_text_checked(rdir / "state.json", "resume state"))
        with safe_open(str(rdir / "state.safetensors"), framework="pt") as fh:
            token = (fh.metadata() or {}).get("token")
        tensors = load_file(str(rdir / "state.safetensors"))
    except (OSError, ValueError, RecursionError, SafetensorError) as exc:
        raise KdxError(f"cannot resume from {rdir}: {' '.join(str(exc).split())[:200]}") from None
    validate_resume_state(js, rdir)
    if token != js.get("token"):
        raise KdxError(f"cannot resume from {rdir}: state.json and state.safetensors do not belong together")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_and_load_state_dict(model, model_state, str(rdir), "this run's model")
    try:
        optimizer.load_state_dict(_optimizer_from_safe(tensors, js["optimizer"], "optim"))
        match_state_layout(optimizer)
        if scaler is not None and js.get("scaler"):
            scaler.load_state_dict(js["scaler"])
        _set_rng_state(tensors, js["rng"])
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise _bad_state(rdir, f"does not fit this run's optimizer or RNG ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:120]})") from None
    return js["progress"]


def match_state_layout(optimizer) -> None:
    """Give every per-parameter optimizer tensor (momentum, Adam moments) its parameter's strides.

    A state read from disk is contiguous (NCHW) while a channels_last parameter is not, and torch's
    fused SGD/Adam kernels (torch 2.14) walk the state with the parameter's strides without checking:
    a resumed run then takes wrong steps. Non-fused optimizers are unaffected either way.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for key, t in list(st.items()):
                if torch.is_tensor(t) and t.shape == p.shape and t.stride() != p.stride():
                    st[key] = torch.empty_like(p, dtype=t.dtype).copy_(t)


def read_epoch_rows(path: Path, before_epoch: int) -> list[dict]:
    """The rows of a per-epoch CSV a run wrote (metrics.csv, routing.csv, ...) with ``epoch`` below
    ``before_epoch``; one-line KdxError for a file that is not one (not UTF-8, not CSV, no integer
    ``epoch`` column). A missing file is no rows."""
    import io

    import pandas as pd

    from kdx.io import file_kind, read_text_checked

    path = Path(path)
    if not path.exists() and file_kind(path) is None:
        return []
    text = read_text_checked(path, "run file")
    try:
        frame = pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame()
    except (ValueError, pd.errors.ParserError) as exc:
        raise KdxError(f"cannot resume: {path} is not a CSV file ({' '.join(str(exc).split())[:120]})") from None
    if len(frame) == 0:
        return []
    epochs = pd.to_numeric(frame["epoch"], errors="coerce") if "epoch" in frame.columns else None
    if epochs is None or epochs.isna().any() or (epochs != epochs.round()).any() or (epochs < 1).any():
        raise KdxError(f"cannot resume: {path} has no integer epoch column (edited or corrupt)")
    frame["epoch"] = epochs.astype(int)
    return frame[frame["epoch"] < before_epoch].to_dict("records")
