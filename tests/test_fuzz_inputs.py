"""Fuzz (issue 23, item 6): randomly corrupted config.json, checkpoint metadata and resume/state.json
fed into resume, evaluate and info. Every input either works or is refused on one line (exit 2,
or exit 1 from the last line of defence: counted, and there must be none), never a traceback, and
no input file is changed. Seeded: the same corruptions every run (FUZZ_SEED=N tries others)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kdx.engine import checkpoint as ckpt
from kdx.engine import rundir
from kdx.errors import KdxError
from test_nothing_lost import fake_teacher, snapshot

pytestmark = pytest.mark.usefixtures("single_thread")
SEED = int(os.environ.get("FUZZ_SEED", "23"))
HOSTILE = [None, "x", "", -1, -7, 0, 2**70, 10**6, 1e308, float("nan"), float("inf"), True, [], {}, [1, 2, 3],
           {"a": 1}, "ten", [[[[[[[[[[1]]]]]]]]]], "\u00ff" * 300, 2.5, [-1, 0, 0]]
TRIED: dict[str, int] = {}


def _paths(obj, prefix=()):
    """Every key path of a JSON document (dicts and lists)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) < 30:
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    target = doc
    for k in path[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


_DELETE = object()


def mutate(text: str, rng: random.Random) -> str:
    """One random corruption of a JSON text: a hostile value at a random key, a deleted key, bytes
    flipped, the text truncated, or a whole other document."""
    doc = json.loads(text)
    kind = rng.choice(["value", "value", "value", "delete", "flip", "truncate", "whole"])
    paths = list(_paths(doc))
    if kind in ("value", "delete") and paths:
        path = rng.choice(paths)
        _set(doc, path, _DELETE if kind == "delete" and not isinstance(path[-1], int) else rng.choice(HOSTILE))
        return json.dumps(doc)
    if kind == "flip":
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice('{}[]",:0x\\-9e')
        return "".join(chars)
    if kind == "truncate":
        return text[: rng.randrange(len(text))]
    return json.dumps(rng.choice([[1, 2], "run", 3, None, {"kdx": 5}]))


def check_outcome(what: str, code: int, err: str) -> None:
    TRIED[what] = TRIED.get(what, 0) + 1
    assert "Traceback" not in err, (what, err)
    assert code in (0, 2), (what, code, err)  # 1 would be the last line of defence: a case not foreseen
    if code:
        assert err.count("\n") == 1 and err.startswith("kdx: error:"), (what, err)


def cli(args, capsys):
    from kdx.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return fake_teacher(tmp_path_factory.mktemp("fuzz") / "run")


def test_corrupted_config_json_into_resume_and_evaluate(base_run, tmp_path, capsys):
    from kdx.config import TeacherConfig, build_config

    rng = random.Random(SEED)
    saved = dataclass_config = build_config(TeacherConfig, cli={"out": str(base_run)})
    from kdx.configfile import save_config

    save_config(dataclass_config, base_run / "config.json")
    text = (base_run / "config.json").read_text()
    assert saved.out == str(base_run)
    for i in range(60):
        run = tmp_path / f"r{i}"
        run.mkdir()
        for f in base_run.iterdir():
            if f.is_file():
                (run / f.name).write_bytes(f.read_bytes())
        (run / "config.json").write_text(mutate(text, rng))
        before = snapshot(run)
        try:  # resume: the saved config checked like flags (nothing trained here)
            rundir.config_for_resume(TeacherConfig, str(run), {})
            code, err = 0, ""
        except KdxError as exc:
            code, err = 2, f"kdx: error: {exc}\n"
        check_outcome("config.json -> resume", code, err)
        code, err = cli(["info", run], capsys)
        check_outcome("config.json -> info", code, err)
        if i % 4 == 0:  # evaluate reads the split spec from config.json (a benign corruption evaluates)
            code, err = cli(["evaluate", run, "--split", "val", "--device", "cpu", "--quiet",
                             "--per-class-csv", tmp_path / f"e{i}.csv"], capsys)
            check_outcome("config.json -> evaluate", code, err)
        assert snapshot(run) == before


def test_corrupted_metadata_into_info_and_evaluate(base_run, tmp_path, capsys):
    rng = random.Random(SEED + 1)
    from safetensors import safe_open

    with safe_open(str(base_run / "model.safetensors"), framework="pt") as fh:
        text = fh.metadata()["kdx"]
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    for i in range(60):
        file = tmp_path / f"m{i}.safetensors"
        save_file(tensors, str(file), metadata={"format": "kdx", "kdx": mutate(text, rng)})
        before = file.read_bytes()
        code, err = cli(["info", file], capsys)
        check_outcome("metadata -> info", code, err)
        code, err = cli(["info", file, "--json"], capsys)
        check_outcome("metadata -> info --json", code, err)
        if i % 3 == 0:
            code, err = cli(["evaluate", file, "--dataset", "fashion-mnist-mini", "--split", "val", "--device", "cpu",
                             "--quiet", "--per-class-csv", tmp_path / f"e{i}.csv"], capsys)
            check_outcome("metadata -> evaluate", code, err)
        assert file.read_bytes() == before


def test_corrupted_state_json_into_resume(tmp_path):
    rng = random.Random(SEED + 2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    progress = {"epoch": 2, "step": 3, "total_steps": 13, "sums": {"n": 4.0, "correct": 1.0, "loss": 3.0},
                "best": {"epoch": 1, "val_top1": 0.5}, "bad_steps": 0, "records": []}
    ckpt.save_resume(tmp_path, model=model, optimizer=opt, scaler=None, progress=progress)
    state = tmp_path / "resume" / "state.json"
    text = state.read_text()
    for i in range(120):
        state.write_text(mutate(text, rng))
        before = snapshot(tmp_path / "resume")
        try:
            got = ckpt.load_resume(tmp_path, model=model, optimizer=opt, scaler=None)
            ckpt.check_progress_fits(got, tmp_path / "resume", epochs=5, steps_per_epoch=10)
            code, err = 0, ""
        except KdxError as exc:
            code, err = 2, f"kdx: error: {exc}\n"
        check_outcome("state.json -> resume", code, err)
        assert snapshot(tmp_path / "resume") == before


def test_zz_report_the_count():
    """How many corrupted inputs the tests above tried (printed with -s; docs/reliability.md cites it)."""
    total = sum(TRIED.values())
    print(f"\nfuzz: {total} corrupted inputs tried: {TRIED}")
    assert total == 0 or total >= 200
