"""`kdx info`: a checkpoint's metadata as a table (or JSON)."""

from __future__ import annotations

import json
from rich.table import Table

from kdx.engine.checkpoint import load_state, read_metadata
from kdx.engine.runs import checkpoint_file, run_root, stage_of
from kdx.engine.progress import table_console


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def tree_text(tree: dict) -> str:
    """An explainer's hard tree in full, one line per expert layer: the classes under each expert
    (``{Trouser, Bag} {Sandal}``; empty experts left out)."""
    lines = []
    for layer in tree.get("layers") or []:
        groups = [g for g in layer.get("groups") or [] if g.get("classes")]
        lines.append(f"layer {layer.get('layer')}: " + " ".join(
            "{" + ", ".join(map(str, g.get("names") or g["classes"])) + "}" for g in groups))
    return "\n".join(lines) or "-"


def run(opts) -> dict:
    """Print the metadata of ``opts.checkpoint`` (:class:`kdx.commandconfig.InfoOptions`) as a table or JSON."""
    opts.validate()
    file = checkpoint_file(opts.checkpoint, opts.which)
    meta = read_metadata(file)
    state = load_state(file)
    n_params = sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k)
    root = run_root(file)
    where = {"file": str(file), "run_dir": str(root) if root else None, "run_stage": stage_of(file)}
    if opts.json:
        print(json.dumps(dict(meta, **where, parameters=n_params), indent=2))
        return meta
    table = Table(title=str(file), show_header=True)
    table.add_column("field")
    table.add_column("value")
    for key in sorted(meta):
        if key == "metrics":
            continue
        table.add_row(key, tree_text(meta[key]) if key == "tree" and isinstance(meta[key], dict) else _fmt(meta[key]))
    table.add_row("run directory (stage)", f"{where['run_dir'] or '-'} ({where['run_stage'] or '-'})")
    table.add_row("tensors / parameters", f"{len(state)} / {n_params:,}")
    for key, value in sorted((meta.get("metrics") or {}).items()):
        table.add_row(f"metrics.{key}", _fmt(value))
    table_console().print(table)
    return meta
