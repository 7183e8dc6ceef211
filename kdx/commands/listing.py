"""`kdx models`, `kdx datasets`, `kdx methods`: what the registries hold, as a table or as JSON.

Each row comes from the registry's own declarations (the zoo's metadata, the dataset specs, the
method classes); nothing about a model, a dataset or a method is typed here.
"""

from __future__ import annotations

import fnmatch
import json

from rich.markup import escape
from rich.table import Table

from kdx.engine.progress import table_console

# the training commands behind the method groups of ``Method.commands``
OFFERED_BY = {"explainer": "distill-explainer", "student": "train-vam-student"}


def _print_json(rows: list[dict]) -> None:
    print(json.dumps(rows, indent=2, default=str))


# ------------------------------------------------------------------ models


def model_rows(pattern: str | None = None) -> list[dict]:
    """The zoo's metadata of every architecture (those matching the fnmatch ``pattern``, case-insensitive)."""
    from kdx.models import get_model_meta, list_models

    names = [n for n in list_models() if pattern is None or fnmatch.fnmatchcase(n.lower(), pattern.lower())]
    return [dict(get_model_meta(n), name=n) for n in names]


def models(opts) -> list[dict]:
    rows = model_rows(opts.pattern)
    if opts.json:
        _print_json(rows)
        return rows
    if not rows:
        print(f"no architecture matches '{opts.pattern}' (`kdx models` lists them all)")
        return rows
    table = Table(title=escape("kdx model zoo" + (f" matching '{opts.pattern}'" if opts.pattern else "")))
    for col in ("arch", "family", "description"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], str(row.get("family") or ""), escape(str(row.get("description") or "")))
    table_console().print(table)
    return rows


# ------------------------------------------------------------------ datasets


def dataset_rows() -> list[dict]:
    from kdx.data.registry import all_datasets

    return [{"name": spec.label, "num_classes": spec.num_classes,
             "input_shape": list(spec.input_shape) if spec.input_shape else None, "description": spec.description}
            for spec in all_datasets().values()]


def datasets(opts) -> list[dict]:
    rows = dataset_rows()
    if opts.json:
        _print_json(rows)
        return rows
    table = Table(title="kdx datasets")
    for col in ("name", "classes", "input", "description"):
        table.add_column(col)
    for row in rows:
        shape = "x".join(map(str, row["input_shape"])) if row["input_shape"] else "from the files"
        table.add_row(row["name"], str(row["num_classes"] or "from the files"), shape, escape(row["description"]))
    table_console().print(table)
    return rows


# ------------------------------------------------------------------ methods


def reads(cls) -> list[str]:
    """What a method's loss reads, from its class declarations: logits or stage features, of the
    student alone or of student and teacher, the final feature map, and the run values it declares."""
    who = "student and teacher" if cls.needs_teacher else "student"
    out = [f"{who} stage features" if cls.uses_features else f"{who} logits"]
    if getattr(cls, "wants_final", False):
        teacher_final = cls.wants_final_teacher if cls.wants_final_teacher is not None else cls.needs_teacher
        out.append("final feature map" + (" (student and teacher)" if teacher_final else " (student)"))
    if getattr(cls, "needs_index", False):
        out.append("dataset indices")
    out += [f"run option --{name.replace('_', '-')}" for name in getattr(cls, "reads", ())]
    return out


def method_rows() -> list[dict]:
    """Every registered method (plug-ins included): name, description, paper, what it reads, its
    options with defaults, the commands that offer it and how it is chosen."""
    from kdx.distill.methods import all_methods
    from kdx.options import type_name

    rows = []
    for name, cls in sorted(all_methods().items()):
        rows.append({
            "name": name, "help": cls.help, "paper": cls.paper, "reads": reads(cls),
            "needs_teacher": bool(cls.needs_teacher),
            "options": [{"name": o.name, "flag": o.flag, "type": type_name(o), "default": o.default,
                         "choices": list(o.choices) if o.choices else None, "help": o.help} for o in cls.options],
            "commands": [OFFERED_BY.get(c, c) for c in sorted(cls.commands)],
            "selected_by": "--method" if cls.selectable else "its own flag",
        })
    return rows


def _option_text(opt: dict) -> str:
    from kdx.options import Option, show_default

    shown = show_default(Option(opt["name"], None, opt["default"], ""))
    return f"{opt['flag']} {shown}"


def methods(opts) -> list[dict]:
    rows = method_rows()
    if opts.json:
        _print_json(rows)
        return rows
    table = Table(title="kdx methods", caption="--method NAME[,NAME...] on the commands listed; methods marked "
                  "(own flag) are added by the flag their description names", show_lines=True)
    for col in ("method", "description / paper", "reads", "options [default]", "commands"):
        table.add_column(escape(col))
    for row in rows:
        about = escape(row["help"]) + (f"\n[dim]{escape(row['paper'])}[/dim]" if row["paper"] else "")
        commands = "\n".join(row["commands"]) + ("" if row["selected_by"] == "--method" else "\n(own flag)")
        table.add_row(row["name"], about, escape("\n".join(row["reads"])),
                      escape("\n".join(_option_text(o) for o in row["options"]) or "-"), commands)
    table_console().print(table)
    return rows
