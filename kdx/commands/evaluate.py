"""`kdx evaluate`: top-1, top-5 and per-class accuracy of any kdx checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.table import Table

from kdx.engine import checkpoint as ckpt
from kdx.engine import runs as layout
from kdx.engine.device import resolve_device, resolve_precision
from kdx.engine.evaluate import evaluate
from kdx.engine.progress import table_console
from kdx.io import atomic_write_csv, json_dumps, with_reasons
from kdx.errors import KdxError


def check_compatible(meta: dict, bundle, source: str) -> None:
    """Refuse a dataset whose classes or input shape do not fit the checkpoint."""
    if int(meta.get("num_classes", bundle.num_classes)) != bundle.num_classes:
        raise KdxError(f"{source} predicts {meta['num_classes']} classes but dataset '{bundle.name}' has {bundle.num_classes}")
    shape = meta.get("input_shape")
    if shape and int(shape[0]) != bundle.in_channels:
        raise KdxError(f"{source} expects {shape[0]}-channel input but dataset '{bundle.name}' has {bundle.in_channels}")
    if shape and list(shape[1:]) != [bundle.image_size, bundle.image_size]:
        raise KdxError(f"{source} was trained on {shape[1]}x{shape[2]} images but dataset '{bundle.name}' has "
                       f"{bundle.image_size}x{bundle.image_size} images")


def eval_runtime(meta: dict, run_cfg: dict, device: str, precision: str | None):
    """Device, precision and memory format to evaluate with: by default those the run trained with
    (the precision its checkpoints record, its channels_last setting), so the numbers agree with
    its own; a checkpoint that records no precision is evaluated in fp32."""
    from kdx.engine.device import resolve_channels_last

    dev = resolve_device(device)
    prec = resolve_precision(precision or meta.get("precision") or "fp32", dev)
    channels_last = resolve_channels_last(run_cfg.get("channels_last", "off"), dev, prec)
    return dev, prec, channels_last


def csv_name(dataset: str, split: str, which: str, routing=None, tau=None, precision=None) -> str:
    """``eval_<dataset>_<split>[_best][_<routing>][_tau<tau>][_<precision>].csv``: every choice that
    changes the numbers is in the name, so evaluations of one run do not overwrite each other."""
    parts = [dataset.replace(":", "_").replace("/", "_"), split]
    if which != "model":
        parts.append(which)
    if routing is not None:
        parts.append(routing)
    if tau is not None:
        parts.append(f"tau{float(tau):g}")
    if precision is not None:
        parts.append(precision)
    return "eval_" + "_".join(parts) + ".csv"


def _set_routing(model, meta: dict, file: Path, routing, tau) -> None:
    if routing is not None:
        if not hasattr(model, "routing"):
            raise KdxError(f"{file} has no routing (kind {meta.get('kind')}); --routing applies to explainers and VAM students")
        model.routing = routing
    if tau is not None:
        if not hasattr(model, "tau"):
            raise KdxError(f"{file} has no routing temperature; --tau applies to explainers and VAM students")
        model.tau = float(tau)


def _load(opts):
    """The model (routing set), its metadata, file, run config and the dataset bundle ``opts`` names."""
    from kdx.data import load_dataset

    file = layout.checkpoint_file(opts.checkpoint, which=opts.which)
    model, meta = ckpt.load_model(file)
    _set_routing(model, meta, file, opts.routing, opts.tau)
    spec = layout.split_spec(file, meta)
    dataset = opts.dataset or spec["dataset"]
    if not dataset:
        raise KdxError(f"{file} does not record its dataset; pass --dataset")
    vf = opts.val_fraction if opts.val_fraction is not None else spec["val_fraction"]
    seed = opts.seed if opts.seed is not None else spec["seed"]
    shape = meta.get("input_shape")
    bundle = load_dataset(dataset, root=str(opts.data_root) if opts.data_root else spec["data_root"], val_fraction=vf,
                          seed=seed, image_size=int(shape[1]) if shape else None)  # folder images at the model's size
    check_compatible(meta, bundle, str(file))
    if (bundle.test if opts.split == "test" else bundle.val) is None:
        raise KdxError(f"dataset '{dataset}' has no validation split with --val-fraction {vf}")
    return model, meta, file, layout.run_config(file), dataset, bundle


def run(opts) -> dict:
    """Evaluate and write the per-class CSV; print a table (nothing with ``opts.quiet``; one JSON
    object with ``opts.json``, quiet or not). ``opts``: :class:`kdx.commandconfig.EvaluateOptions`."""
    from kdx.data import make_loader
    from kdx.engine.trainer import to_channels_last

    from kdx.engine.rundir import check_output_file

    opts.validate()
    if opts.tau is not None and not math.isfinite(float(opts.tau)):
        raise KdxError(f"--tau must be a finite number; got {opts.tau}")
    if opts.per_class_csv is not None:  # checked before any work: never a device, FIFO or another run's file
        check_output_file(opts.per_class_csv, "--per-class-csv", own=("eval_*.csv",))
    model, meta, file, run_cfg, dataset, bundle = _load(opts)
    data = bundle.test if opts.split == "test" else bundle.val
    dev, prec, channels_last = eval_runtime(meta, run_cfg, opts.device, opts.precision)
    model.to(dev).eval()
    if channels_last:
        to_channels_last(model)
    bs = opts.batch_size or int(run_cfg.get("eval_batch_size", 256))
    loader = make_loader(data, bs, train=False, device=dev, mean=bundle.mean, std=bundle.std,
                         channels_last=channels_last)
    res = evaluate(model, loader, bundle.num_classes, prec, device=dev)
    per_class = pd.DataFrame({
        "class": list(range(bundle.num_classes)),
        "class_name": bundle.class_names,
        "correct": res.per_class_correct,
        "total": res.per_class_total,
        "accuracy": res.per_class_accuracy,
    })
    per_class_csv = Path(opts.per_class_csv) if opts.per_class_csv else None
    if per_class_csv is None:
        run_dir = layout.run_root(file)
        base = run_dir if run_dir is not None else file.parent
        per_class_csv = base / csv_name(dataset, opts.split, opts.which, opts.routing, opts.tau, opts.precision)
        check_output_file(per_class_csv, "the per-class CSV", own=("eval_*.csv",))
    atomic_write_csv(per_class_csv, per_class)
    result = {"checkpoint": str(file), "dataset": dataset, "split": opts.split, "top1": res.top1, "top5": res.top5,
              "loss": res.loss, "count": res.count, "precision": prec.name, "per_class_csv": str(per_class_csv)}
    if hasattr(model, "routing"):
        result["routing"] = model.routing
        result["tau"] = float(getattr(model, "tau", float("nan")))
    if opts.json:
        print(json_dumps(with_reasons(result)))  # NaN (an empty split) becomes null with a reason
        return result
    if not opts.quiet:
        _print_table(f"{file} on {dataset} ({opts.split}, {res.count} images, {prec.name})", res, bundle.class_names,
                     per_class_csv)
    return result


def _print_table(title: str, res, class_names: list[str], per_class_csv: Path) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1", f"{100 * res.top1:.2f}%")
    table.add_row("top-5", f"{100 * res.top5:.2f}%")
    table.add_row("loss", f"{res.loss:.4f}")
    for name, acc in zip(class_names, res.per_class_accuracy):
        table.add_row(f"  {name}", f"{100 * acc:.1f}%")
    console = table_console()
    console.print(table)
    console.print(f"per-class accuracy: {per_class_csv}")
