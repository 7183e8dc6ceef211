"""Issue 23: a pipeline study folder carries the kdx marker, so no other command writes into it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kdx.cli import app
from kdx.commands import pipeline
from kdx.engine.rundir import MARKER_FILE, folder_owner


def test_a_study_folder_is_marked_and_refused_to_other_commands(tmp_path):
    out = tmp_path / "study"
    study = pipeline.build_study("demo", None, {"seeds": [0], "methods": ["ce"]})
    pipeline.claim_folder(study, out, overwrite=False)
    assert json.loads((out / MARKER_FILE).read_text()) == {"command": "pipeline", "kind": "group"}
    assert folder_owner(out)[0] == "pipeline"
    pipeline.claim_folder(study, out, overwrite=False)  # the study itself reopens it
    r = CliRunner().invoke(app, ["train-teacher", "--out", str(out), "--overwrite", "--epochs", "1"])
    assert r.exit_code != 0 and "pipeline" in r.output and (out / "study.json").is_file()
