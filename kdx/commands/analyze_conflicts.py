"""`kdx analyze-conflicts`: subtask attention, entropy, sharing, gradient conflicts, class clusters
and per-subtask metrics of one or more explainer (or VAM student) runs. See docs/analyze-conflicts.md.

This module only wires :mod:`kdx.analysis` together: loading runs and data, writing files.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from kdx.analysis import attention as att_mod
from kdx.analysis import clusters as cl_mod
from kdx.analysis import conflicts as cf_mod
from kdx.analysis import metrics as mt_mod
from kdx.analysis import plots as pl_mod
from kdx.analysis.report import write_report
from kdx.analysis.routed import as_routed, check_routed, routing_matrices
from kdx.engine import checkpoint as ckpt
from kdx.engine import runs as layout
from kdx.io import atomic_write_csv, atomic_write_text
from kdx.engine.progress import HEARTBEAT_SECONDS, Heartbeat, table_console
from kdx.engine.metadata import method_label, method_names
from kdx.engine.rundir import RESULTS_FILE, mark_finished
from kdx.errors import KdxError

COLUMNS = {
    "subtask_attention": ["run", "mode", "layer", "class", "class_name", "expert", "weight"],
    "entropy": ["run", "mode", "layer", "class", "class_name", "entropy", "norm_entropy"],
    "sharing": ["run", "mode", "layer", "class_i", "class_j", "overlap"],
    "conflicts": ["run", "signal", "layer", "expert", "class_i", "class_j", "cosine", "shared_weight"],
    "subtasks": ["run", "class", "class_name", "support", "ovr_accuracy", "auroc", "class_top1"],
    "clusters": ["run", "layer", "cluster", "expert", "class", "class_name"],
}
ROUTED_KINDS = ("explainer", "vam-student")


def _warn(msg: str) -> None:
    Console(stderr=True).print(f"[yellow]kdx: warning:[/yellow] {msg}", highlight=False)


class RunProgress:
    """Progress of the analysis on stderr: on a terminal a live line (run, layer, chunk), updated as
    the gradient components advance; otherwise (piped, a log file) one plain line per finished run
    and, while a run is at work, a line saying where it is at least every ``heartbeat`` seconds."""

    def __init__(self, total: int, console: Console | None = None, quiet: bool = False,
                 heartbeat: float = HEARTBEAT_SECONDS):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.total, self.console, self.quiet = total, console or Console(stderr=True), quiet
        self.live = self.console.is_terminal and not quiet
        self._bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TextColumn("{task.fields[where]}"),
                             TimeElapsedColumn(), console=self.console, transient=True) if self.live else None
        self._task = None
        self.beat = Heartbeat(self.console, heartbeat) if not (self.live or quiet) else None
        self._run = ""

    def start(self, index: int, label: str) -> None:
        self._run = f"analyze-conflicts: run {index}/{self.total} '{label}'"
        if self.beat is not None:
            self.beat.set(f"{self._run}: logits, attention and entropy")
            self.beat.start()
        if self._bar is not None:
            if self._task is None:
                self._bar.start()
                self._task = self._bar.add_task("", where="")
            self._bar.update(self._task, description=f"run {index}/{self.total} '{label}'", where="logits")

    def update(self, where: str) -> None:
        if self.beat is not None:
            self.beat.set(f"{self._run}: gradient conflicts, {where}")
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, where=where)

    def done(self, index: int, label: str, seconds: float, accuracy: float) -> None:
        line = f"analyze-conflicts: run {index}/{self.total} '{label}' done in {seconds:.1f} s (top-1 {100 * accuracy:.1f}%)"
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(line, highlight=False)
        else:
            self.console.print(line, highlight=False, soft_wrap=True)
        if self.beat is not None:
            self.beat.set("")  # between runs: nothing at work to report
            self.beat.printed()

    def close(self) -> None:
        if self.beat is not None:
            self.beat.stop()
        if self._bar is not None:
            self._bar.stop()


def load_run(path: Path) -> dict:
    file = layout.checkpoint_file(path)
    meta = ckpt.read_metadata(file)
    kind = meta.get("kind", "classifier")
    if kind not in ROUTED_KINDS:
        raise KdxError(f"{path} is a '{kind}' checkpoint, not an explainer or VAM student run")
    model, meta = ckpt.load_model(file)
    routed = as_routed(model)
    check_routed(routed)
    return {"path": str(path), "file": file, "meta": meta, "model": routed, "split": layout.split_spec(file, meta)}


def _labels(runs: list[dict], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(runs):
            raise KdxError(f"--label given {len(labels)} times for {len(runs)} runs; give one per run")
        base = list(labels)
    else:
        base = [method_label(r["meta"]) for r in runs]
    out, seen = [], {}
    for b in base:
        seen[b] = seen.get(b, 0) + 1
        out.append(b if seen[b] == 1 else f"{b}-{seen[b]}")
    if len(set(out)) != len(out):  # a suffixed name collided with a given one
        out = [f"{b}-{i + 1}" for i, b in enumerate(base)]
    return out


def _check_same_task(runs: list[dict]) -> None:
    first = runs[0]["meta"]
    for r in runs[1:]:
        m = r["meta"]
        if int(m.get("num_classes", -1)) != int(first.get("num_classes", -1)):
            raise KdxError(f"{r['path']} has {m.get('num_classes')} classes but {runs[0]['path']} has "
                           f"{first.get('num_classes')}: compare runs of the same dataset")
        if m.get("class_names") and first.get("class_names") and m["class_names"] != first["class_names"]:
            raise KdxError(f"{r['path']} and {runs[0]['path']} have different class names")
        if m.get("dataset") != first.get("dataset"):
            raise KdxError(f"{r['path']} was trained on '{m.get('dataset')}' but {runs[0]['path']} on "
                           f"'{first.get('dataset')}': compare runs of the same dataset")
        if m.get("input_shape") != first.get("input_shape"):
            raise KdxError(f"{r['path']} and {runs[0]['path']} take different input shapes")


def _load_images(runs, dataset, split, images, batch_size, device, data_root):
    from kdx.data import load_dataset, make_loader

    meta, spec = runs[0]["meta"], runs[0]["split"]
    dataset = dataset or spec["dataset"]
    if not dataset:
        raise KdxError(f"{runs[0]['path']} does not record its dataset; pass --dataset")
    seed, vf = spec["seed"], spec["val_fraction"]
    root = str(data_root) if data_root else spec["data_root"]
    bundle = load_dataset(dataset, root=root, download=False, val_fraction=vf if split == "val" else 0.0, seed=seed)
    n_cls = int(meta.get("num_classes", bundle.num_classes))
    if n_cls != bundle.num_classes:
        raise KdxError(f"{runs[0]['path']} predicts {n_cls} classes but dataset '{bundle.name}' has {bundle.num_classes}")
    shape = meta.get("input_shape")
    if shape and int(shape[0]) != bundle.in_channels:
        raise KdxError(f"{runs[0]['path']} takes {shape[0]}-channel input but '{bundle.name}' has {bundle.in_channels}")
    data = bundle.val if split == "val" else bundle.test
    if data is None:
        raise KdxError(f"dataset '{dataset}' has no validation split (val_fraction {vf}); use --split test")
    n = min(images, len(data))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n].sort().values
    data = data.subset(idx)
    loader = make_loader(data, batch_size, train=False, device=device, mean=bundle.mean, std=bundle.std)
    batches = list(loader.batches(0))
    info = {"dataset": dataset, "split": split, "images": n, "seed": seed, "val_fraction": vf}
    return bundle, batches, info


def _teacher_logits(run, bundle, batches):
    from kdx.distill.task import load_teacher

    rec = run["meta"].get("teacher") or {}
    path = rec.get("path")
    if not path:
        return None, "the run's metadata names no teacher"
    cands = [Path(path), Path(run["file"]).parent / path, Path(run["file"]).parent.parent / path]
    found = next((c for c in cands if c.exists()), None)
    if found is None:
        return None, f"teacher {path} not found"
    teacher, _ = load_teacher(found, bundle)
    dev = batches[0][0].device
    teacher.to(dev).eval()
    with torch.no_grad():
        return [teacher(x).float() for x, _ in batches], None


def _attention_rows(label, mode, att, names):
    rows_a, rows_e, rows_s = [], [], []
    for l, a in enumerate(att, start=1):
        c, e = a.shape
        for i in range(c):
            for j in range(e):
                rows_a.append((label, mode, l, i, names[i], j, float(a[i, j])))
        h, hn = att_mod.entropy(a), att_mod.normalised_entropy(a)
        for i in range(c):
            rows_e.append((label, mode, l, i, names[i], float(h[i]), float(hn[i])))
        ov = att_mod.overlap(a)
        iu = torch.triu_indices(c, c, offset=1)
        rows_s.append(pd.DataFrame({"run": label, "mode": mode, "layer": l, "class_i": iu[0].numpy(),
                                    "class_j": iu[1].numpy(), "overlap": ov[iu[0], iu[1]].numpy()}))
    return rows_a, rows_e, rows_s


def _conflict_matrix(frame: pd.DataFrame, signal: str, layer: int, c: int):
    import numpy as np

    f = frame[(frame["signal"] == signal) & (frame["layer"] == layer) & (frame["shared_weight"] > 0)]
    mat = np.full((c, c), np.nan)
    if len(f):
        m = f.groupby(["class_i", "class_j"])["cosine"].mean()
        for (i, j), v in m.items():
            mat[i, j] = mat[j, i] = v
    for i in range(c):
        mat[i, i] = 1.0
    return mat


def analyse_run(run, label, bundle, batches, conflict_images, do_conflicts, names, progress=None):
    model, meta = run["model"], run["meta"]
    t0 = time.time()
    mode = "soft" if model.routing == "gumbel" else model.routing
    model.routing = mode
    final_tau = float((meta.get("tau_schedule") or {}).get("final_tau") or model.tau)
    # logits under the run's own routing
    with torch.no_grad():
        logits = torch.cat([model(x).float() for x, _ in batches]).cpu()
    y = torch.cat([yy for _, yy in batches]).cpu()
    sub = pd.DataFrame(mt_mod.subtask_metrics(logits, y))
    sub.insert(0, "run", label)
    sub.insert(2, "class_name", [names[c] for c in sub["class"]])
    att = {"soft": att_mod.compose(routing_matrices(model, "soft", final_tau)),
           "hard": att_mod.compose(routing_matrices(model, "hard")),
           "tau1": att_mod.compose(routing_matrices(model, "soft", att_mod.ROUTING_TAU))}
    groups = cl_mod.hard_clusters(att["hard"])
    out = {"label": label, "subtasks": sub, "attention": att, "groups": groups, "mode": mode, "tau": final_tau,
           "accuracy": float((logits.argmax(1) == y).double().mean()), "note": ""}
    # gradient conflicts under the run's own routing (attention of that mode gives shared_weight)
    frame = pd.DataFrame(columns=COLUMNS["conflicts"])
    if do_conflicts and not hasattr(model, "expert_param_groups"):
        _warn(f"{label}: model has no expert_param_groups(); no gradient conflicts")
    elif do_conflicts:
        objective = method_label(meta) if method_names(meta) else "ce"
        losses, notes = {}, []
        teacher = None
        try:
            fn = cf_mod.loss_for(method_names(meta) or ["ce"], meta.get("method_params") or meta.get("objective_params"))
            if fn.dropped:
                notes.append(f"objective signal: the logit part of {objective} ({', '.join(fn.dropped)}: feature "
                             f"losses have no per-subtask split)")
            if fn.needs_teacher:
                teacher, why = _teacher_logits(run, bundle, batches)
                if teacher is None:
                    _warn(f"{label}: {why}; skipping the 'objective' conflict signal")
                    notes.append(f"objective signal skipped ({why})")
                    fn = None
            if fn is not None and objective != "ce":
                losses["objective"] = fn
        except KdxError as exc:
            _warn(f"{label}: objective '{objective}' cannot be evaluated ({exc}); skipping the 'objective' signal")
            notes.append("objective signal skipped")
        losses["ce"] = cf_mod.loss_for("ce", None)
        # the first `conflict_images` images, in batches
        cbatches, left = [], conflict_images
        for i, (x, yy) in enumerate(batches):
            if left <= 0:
                break
            t = teacher[i][:left] if teacher is not None and "objective" in losses else None
            cbatches.append((x[:left], yy[:left], t))
            left -= len(x[:left])
        total = sum(len(b[1]) for b in cbatches)
        comp = cf_mod.subtask_components(model, cbatches, losses, total, progress=progress)
        mode_att = att_mod.compose(routing_matrices(model, mode))
        frame = cf_mod.conflict_frame(comp, mode_att, label)
        if objective == "ce" and not notes:  # the run's own loss is ce: the same numbers
            frame = pd.concat([frame, frame[frame["signal"] == "ce"].assign(signal="objective")], ignore_index=True)
        out["note"] = "; ".join(notes)
    out["conflicts"] = frame
    out["seconds"] = time.time() - t0
    return out


def check_out(out: Path) -> None:
    """``--out`` must be a folder or not exist yet, under folders (one-line error otherwise)."""
    from kdx.engine.rundir import check_names, check_not_inside_run, check_owner

    if not str(out).strip():
        raise KdxError("--out '': name a folder")
    out = Path(out)
    check_names(out)
    if out.exists() and not out.is_dir():
        raise KdxError(f"--out {out} exists and is not a directory")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise KdxError(f"--out {out}: {parent} is not a directory")
    check_owner(out, "analyze-conflicts")  # never a training run's folder (its results.json), even an explainer's
    check_not_inside_run(out)


def _make_out(out: Path) -> None:
    from kdx.engine.rundir import KIND_ANALYSIS, acquire_lock, write_marker

    try:
        out.mkdir(parents=True, exist_ok=True)
        acquire_lock(out)  # a second analysis into the same folder is refused
        write_marker(out, "analyze-conflicts", KIND_ANALYSIS)
    except OSError as exc:
        raise KdxError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def _analyse_all(loaded, labels, bundle, batches, info, conflicts, names, quiet) -> list[dict]:
    """:func:`analyse_run` of every run, with the progress display."""
    results, shown = [], RunProgress(len(loaded), quiet=quiet)
    try:
        for i, (r, label) in enumerate(zip(loaded, labels), start=1):
            shown.start(i, label)
            res = analyse_run(r, label, bundle, batches, info["conflict_images"], conflicts, names, shown.update)
            res.update(path=r["path"], meta=r["meta"])
            results.append(res)
            shown.done(i, label, res["seconds"], res["accuracy"])
    finally:
        shown.close()
    return results


def _summary_row(res: dict, images: int) -> dict:
    """One row of summary.csv: the run, its method and top-1 on the analysed images (``method`` and
    ``top1``, as the other files name them; ``objective``/``accuracy`` before issue 21), entropies,
    conflict statistics and clusters."""
    row = {"run": res["label"], "path": res["path"], "method": method_label(res["meta"]),
           "kind": res["meta"].get("kind"), "stage": res["meta"].get("stage"), "routing": res["mode"],
           "tau": res["tau"], "images": images, "top1": res["accuracy"]}
    row.update(att_mod.entropy_summary(res["attention"]["soft"], res["attention"]["tau1"]))
    for sig in ("objective", "ce"):
        st = cf_mod.conflict_stats(res["conflicts"], sig)
        row[f"conflict_rate_{sig}"] = st["conflict_rate"]
        row[f"weighted_conflict_{sig}"] = st["weighted_conflict"]
        row[f"mean_cosine_{sig}"] = st["mean_cosine"]
        row[f"shared_pairs_{sig}"] = st["pairs"]
    for l, groups in enumerate(res["groups"], start=1):
        row[f"clusters_l{l}"] = len(groups)
    row["seconds"] = round(res["seconds"], 2)
    return row


def _tables(results: list[dict], names: list[str], images: int) -> dict[str, pd.DataFrame]:
    """Every CSV of --out as a frame (columns: :data:`COLUMNS`)."""
    att_rows, ent_rows, share_frames, cl_rows = [], [], [], []
    for res in results:
        for mode in ("soft", "hard"):
            a, e, s = _attention_rows(res["label"], mode, res["attention"][mode], names)
            att_rows += a
            ent_rows += e
            share_frames += s
        cl_rows += cl_mod.cluster_rows(res["groups"], names, res["label"])
    return {
        "subtask_attention": pd.DataFrame(att_rows, columns=COLUMNS["subtask_attention"]),
        "entropy": pd.DataFrame(ent_rows, columns=COLUMNS["entropy"]),
        "sharing": pd.concat(share_frames, ignore_index=True)[COLUMNS["sharing"]],
        "conflicts": pd.concat([r["conflicts"] for r in results], ignore_index=True)[COLUMNS["conflicts"]],
        "subtasks": pd.concat([r["subtasks"] for r in results], ignore_index=True)[COLUMNS["subtasks"]],
        "clusters": pd.DataFrame(cl_rows, columns=COLUMNS["clusters"]),
        "summary": pd.DataFrame([_summary_row(r, images) for r in results]),
    }


def _write_clusters(results: list[dict], names: list[str], out: Path) -> None:
    """clusters/*.json: per run under clusters/<label>/, the kd run's (or the first) at clusters/."""
    objs = [method_label(res["meta"]) for res in results]
    main = results[objs.index("kd")] if "kd" in objs else results[0]
    for res in results:
        targets = [out / "clusters" / res["label"]] if len(results) > 1 else []
        if res is main:
            targets.append(out / "clusters")
        for d in targets:
            for l, groups in enumerate(res["groups"], start=1):
                doc = cl_mod.cluster_json(groups, l, names, res["label"])
                atomic_write_text(d / f"layer{l}.json", json.dumps(doc, indent=1) + "\n")


def _method_comparison(results: list[dict], summary: pd.DataFrame, out: Path) -> str:
    """With runs of two or more methods: methods.csv, methods_paired.csv, plots/methods.png and the
    report's section (kdx.analysis.methods); else nothing."""
    from kdx.analysis import methods as mt_mod

    metas = {res["label"]: res["meta"] for res in results}
    if len({method_label(m) for m in metas.values()}) < 2:
        return ""
    table, paired = mt_mod.comparison(summary, metas, {res["label"]: res["groups"] for res in results})
    atomic_write_csv(out / "methods.csv", table)
    atomic_write_csv(out / "methods_paired.csv", paired)
    f = pl_mod.methods_plot(table, out / "plots" / "methods.png")
    return mt_mod.report_section(table, paired) + f"\n![methods side by side](plots/{f.name})\n"


def _run_plots(res: dict, names: list[str], pdir: Path) -> list[tuple[str, str]]:
    """One run's attention heatmaps, class tree and conflict matrices: [(caption, relative path)]."""
    lab = res["label"]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in lab)
    items = []
    for l, a in enumerate(res["attention"]["soft"], start=1):
        f = pl_mod.attention_heatmap(a.numpy(), names, f"{lab}: subtask attention over layer-{l} experts "
                                     f"(soft, tau {res['tau']:.3g})", pdir / f"attention_{safe}_layer{l}.png")
        items.append((f"{lab}: attention, layer {l}", f"plots/{f.name}"))
    f = pl_mod.tree_plot(res["groups"], names, f"{lab}: class tree under hard routing", pdir / f"tree_{safe}.png")
    items.append((f"{lab}: class tree", f"plots/{f.name}"))
    fr = res["conflicts"]
    sig = "objective" if (fr["signal"] == "objective").any() else "ce"
    if len(fr):
        mats = [_conflict_matrix(fr, sig, l, len(names)) for l in range(1, len(res["attention"]["soft"]) + 1)]
        f = pl_mod.conflict_matrices(mats, names, f"{lab}: gradient cosine between subtasks ({sig} signal), "
                                     "mean over shared experts", pdir / f"conflicts_{safe}.png")
        items.append((f"{lab}: gradient conflicts ({sig})", f"plots/{f.name}"))
    return items


def run(opts) -> dict:
    """Analyse ``opts.runs`` into ``opts.out`` (``opts``: :class:`kdx.commandconfig.AnalyzeConflictsOptions`,
    whose declarations checked every value). ``opts.quiet``: no progress lines and no summary table
    (errors and warnings still go to stderr)."""
    from kdx.engine.device import resolve_device

    opts.validate()
    out = Path(opts.out)
    check_out(out)
    if opts.log != "csv":  # fail before the analysis, not after it (the package may be missing)
        from kdx.engine.metric_log import summary_writer

        summary_writer(None)
    pl_mod.set_plot_format(opts.plot_format)
    dev = resolve_device(opts.device)
    loaded = [load_run(Path(p)) for p in opts.runs]
    _check_same_task(loaded)
    names_ = _labels(loaded, opts.label)
    for r in loaded:
        r["model"].to(dev).eval()
    bundle, batches, info = _load_images(loaded, opts.dataset, opts.split, opts.images, opts.batch_size, dev,
                                         opts.data_root)
    names = list(loaded[0]["meta"].get("class_names") or bundle.class_names)
    info["conflict_images"] = min(opts.conflict_images or info["images"], info["images"]) if opts.conflicts else 0
    _make_out(out)
    (out / RESULTS_FILE).unlink(missing_ok=True)  # written last, when the analysis is complete
    results = _analyse_all(loaded, names_, bundle, batches, info, opts.conflicts, names, opts.quiet)
    tables = _tables(results, names, info["images"])
    for name, frame in tables.items():
        atomic_write_csv(out / f"{name}.csv", frame)
    _write_clusters(results, names, out)
    n_layers = max(len(res["attention"]["soft"]) for res in results)
    plots = {res["label"]: _run_plots(res, names, out / "plots") for res in results}
    f = pl_mod.entropy_bars(tables["summary"], n_layers, out / "plots" / "entropy.png")
    plots[""] = [("attention entropy per layer, all runs", f"plots/{f.name}")]
    info["runs"] = [{"label": res["label"], "path": res["path"], "method": method_label(res["meta"]),
                     "stage": res["meta"].get("stage"), "routing": res["mode"], "tau": res["tau"], "note": res["note"]}
                    for res in results]
    report = write_report(info, tables["summary"], tables["subtasks"], plots, n_layers)
    report += _method_comparison(results, tables["summary"], out)
    atomic_write_text(out / "report.md", report)
    from kdx.engine.metric_log import epoch_scalars, log_figures

    log_figures(opts.log, out, plots, {f"{r['run']}/{t.split('/', 1)[-1]}": v for r in tables["summary"].to_dict("records")
                                  for t, v in epoch_scalars({k: x for k, x in r.items() if k != "run"}).items()}
                if "run" in tables["summary"].columns else {})
    mark_finished(out, ["summary.csv", "report.md"], kind="analysis", runs=[r["path"] for r in info["runs"]])
    if not opts.quiet:
        _print_summary(tables["summary"], n_layers, out)
    return {"out": str(out), "summary": tables["summary"]}


def _print_summary(summary: pd.DataFrame, layers: int, out: Path) -> None:
    def f(v, pct=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    table = Table(title="analyze-conflicts")
    cols = ["run", "method", "top-1"] + [f"H L{l}" for l in range(1, layers + 1)] + \
        [f"H1 L{l}" for l in range(1, layers + 1)] + ["confl obj", "confl ce", "clusters", "s"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("run", "method") else "right")
    for _, r in summary.iterrows():
        table.add_row(str(r["run"]), str(r["method"]), f(r["top1"], True),
                      *[f(r.get(att_mod.entropy_column(l, True), math.nan)) for l in range(1, layers + 1)],
                      *[f(r.get(att_mod.entropy_column(l, True, True), math.nan)) for l in range(1, layers + 1)],
                      f(r["conflict_rate_objective"], True), f(r["conflict_rate_ce"], True),
                      "/".join(str(r.get(f"clusters_l{l}", "-")) for l in range(1, layers + 1)), f"{r['seconds']:.0f}")
    console = table_console()
    console.print(table)
    console.print("H = mean normalised soft attention entropy at the final tau, H1 = at tau 1 (softmax(R / 0.5)); "
                  "confl = conflict rate on shared experts")
    console.print(f"analysis written to {out} (report.md, *.csv, clusters/, plots/)")
