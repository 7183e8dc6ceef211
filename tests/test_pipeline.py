"""kdx pipeline: a tiny whole study over two seeds, the report, skip/resume on rerun, the checks
before the first step, and the study config (keys from the commands' declarations, --set)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kdx.cli import app
from kdx.commands import pipeline, study_report
from kdx.commands import study as study_mod
from kdx.engine import rundir
from kdx.errors import KdxError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

TINY_STUDY = {
    "preset": "demo",
    "dataset": "fashion-mnist-mini",
    "device": "cpu",
    "quiet": True,
    "max_train_samples": 200,
    "seeds": [0, 1],
    "methods": ["ce", "kd"],
    "teacher": {"arch": "resnet8", "epochs": 1, "batch_size": 50},
    "explainer": {"widths": "4:4,4:4,4:4", "stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 50,
                  "eval_batch_size": 500},
    "analysis": {"images": 32, "split": "val", "conflict_images": 16},
    "student": {"arch": "resnet8", "epochs": 1, "batch_size": 50, "seeds": [0], "eval_batch_size": 500},
}


def test_print_config_and_errors(tmp_path):
    r = runner.invoke(app, ["pipeline", "--preset", "cifar10-paper", "--print-config"])
    assert r.exit_code == 0
    study = json.loads(r.output)
    assert study["dataset"] == "cifar10" and study["teacher"]["arch"] == "ResNet50"
    r = runner.invoke(app, ["pipeline", "--preset", "imagenet-21k"])
    assert r.exit_code == 2 and "valid presets: demo" in r.output
    bad = tmp_path / "s.toml"
    bad.write_text('datasett = "x"\n')
    r = runner.invoke(app, ["pipeline", "--config", str(bad), "--print-config"])
    assert r.exit_code == 2 and "datasett" in r.output


def test_tiny_study_two_seeds_end_to_end_and_rerun_skips(tmp_path, capsys):
    out = tmp_path / "study"
    study = pipeline.build_study("demo", None, TINY_STUDY)
    pipeline.run(study, out)
    # one teacher and one student comparison; explainers and their analysis once per seed
    for name in ("study.json", "study_report.md", "study_summary.csv", "explainer_differences.csv",
                 "teacher/model.safetensors", "seed0/explainer-ce/tree.json", "seed1/explainer-kd/stage2/model.safetensors",
                 "seed0/analysis/summary.csv", "seed1/analysis/summary.csv", "seed0/analysis/clusters/layer1.json",
                 "students/comparison.csv"):
        assert (out / name).is_file(), name
    assert not (out / "seed1" / "teacher").exists()
    summary = pd.read_csv(out / "study_summary.csv")
    assert set(summary["component"]) == {"teacher", "explainer", "student"}
    expl = summary[summary["component"] == "explainer"]
    assert sorted(zip(expl["seed"], expl["name"])) == [(s, m) for s in (0, 1) for m in ("ce", "kd")]
    assert {"ce", "kd", "kd+tree", "kd+head", "kd+tree+head"} <= set(summary[summary["component"] == "student"]["name"])
    # paired differences kd - ls and kd - ce over the two seeds, equal to the per-seed rows
    diffs = pd.read_csv(out / "explainer_differences.csv")
    acc = diffs[(diffs["metric"] == "test_top1_last") & (diffs["pair"] == "kd - ce")].iloc[0]
    per_seed = expl.set_index(["name", "seed"])["test_top1_last"]
    want = [per_seed[("kd", s)] - per_seed[("ce", s)] for s in (0, 1)]
    assert acc["n"] == 2 and acc["mean"] == pytest.approx(sum(want) / 2)
    assert set(diffs["pair"]) == {"kd - ce"}  # kd - ls where the study has ls
    assert any("entropy" in m for m in diffs["metric"]) and any(m.startswith("conflict_rate") for m in diffs["metric"])
    report = (out / "study_report.md").read_text()
    for needle in ("## Study", "## Teacher", "## Explainers", "## Students", "kdx pipeline --config", "torch",
                   "best_vs_kd", "Rule: A difference", "|mean| > 2 * std / sqrt(n)", "Paired differences", "kd - ce",
                   "norm_attention_entropy_l3", "norm_attention_entropy_tau1_l3"):
        assert needle in report, needle
    assert "about the same" not in report
    assert {"attention_entropy_l3", "attention_entropy_tau1_l3", "stage1_routing_entropy_l3"} <= set(summary.columns)
    # a rerun skips every finished step ...
    ls_results = out / "seed1" / "explainer-ce" / "results.json"
    before = ls_results.read_text()
    capsys.readouterr()
    pipeline.run(study, out)
    said = capsys.readouterr().err
    assert "teacher: finished earlier, skipped" in said
    assert "[seed 1] analysis: finished earlier, skipped" in said  # not eaten as rich markup
    assert ls_results.read_text() == before
    assert "skipped (done)" in (out / "study_report.md").read_text()
    # ... asks each step's directory whether it finished (an analysis without its results.json reruns) ...
    (out / "seed0" / "analysis" / "results.json").unlink()
    capsys.readouterr()
    pipeline.run(study, out)
    assert "[seed 0] analysis ->" in capsys.readouterr().err.replace("\n", " ")
    # ... and finishes an interrupted one without retraining what had finished
    ls_results.unlink()
    (out / "seed1" / "explainer-ce" / "stage2" / "results.json").unlink()
    stage1_model = (out / "seed1" / "explainer-ce" / "stage1" / "model.safetensors").stat().st_mtime_ns
    pipeline.run(study, out)
    assert ls_results.is_file()
    assert (out / "seed1" / "explainer-ce" / "stage1" / "model.safetensors").stat().st_mtime_ns == stage1_model
    assert "resumed" in (out / "study_report.md").read_text()
    # another config in a folder whose steps started is refused ...
    with pytest.raises(KdxError, match="another config.*--overwrite"):
        pipeline.run(pipeline.merge_study(study, {"methods": ["kd"]}), out)
    # the summary writes integers as integers and a one-seed std as an empty cell
    text = (out / "study_summary.csv").read_text().splitlines()
    header = text[0].split(",")
    student = next(line.split(",") for line in text if ",student," in line)
    assert "." not in student[header.index("params")] and student[header.index("seed")] == "0"
    assert "student_seed" not in header  # one seed column (issue 21 item 5)
    stud_table = report.split("## Students")[1]
    # the names of comparison_summary.csv, not best_mean/best_std (issue 21 item 5)
    assert "| test_top1_best_mean |" in stud_table and "| best_mean |" not in stud_table
    assert "± 0.00" not in stud_table and "| - |" not in stud_table


def test_finished_asks_the_run_directory(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    assert not rundir.finished(run)
    (run / "results.json").write_text("{}")
    assert not rundir.finished(run)  # results without the model
    (run / "model.safetensors").write_bytes(b"x")
    assert rundir.finished(run)
    (run / "results.json").write_text('{"final_checkpoint": "stage2/model.safetensors"}')
    assert not rundir.finished(run)
    (run / "results.json").write_text("[1]")
    assert not rundir.finished(run)
    rundir.mark_finished(run, ["summary.csv"], kind="analysis")
    assert not rundir.finished(run)
    (run / "summary.csv").write_text("a\n")
    assert rundir.finished(run)


def test_pipeline_and_report_do_not_import_each_other():
    def imported(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    assert not any(n.startswith("kdx.commands.pipeline") for n in imported(study_report))
    assert not any(n.startswith(("kdx.commands.pipeline", "kdx.commands.study_report")) for n in imported(study_mod))


def test_report_plots_order_and_selection(tmp_path):
    names = ["attention_ce_layer1.png", "attention_ce_layer3.png", "attention_kd_layer2.png", "attention_kd_layer3.png",
             "conflicts_kd.png", "conflicts_ce.png", "entropy.png", "tree_kd.png", "tree_ce.png"]
    for n in names:
        (tmp_path / n).write_bytes(b"png")
    got = [p.name for p in study_report.report_plots(tmp_path)]
    assert got == ["entropy.png", "tree_ce.png", "tree_kd.png", "attention_ce_layer3.png", "attention_kd_layer3.png",
                   "conflicts_ce.png", "conflicts_kd.png"]
    assert study_report.report_plots(tmp_path / "missing") == []


def test_step_keys_come_from_the_commands_declarations():
    for name in pipeline.PIPELINE_PRESETS:
        pipeline.build_study(name, None, {})  # every preset passes its own check
    with pytest.raises(KdxError, match="did you mean 'stage1_epochs'"):
        pipeline.build_study("demo", None, {"explainer": {"stage1_epoch": 3}})
    with pytest.raises(KdxError, match=r"unknown key 'label' in the study's \[analysis\] table"):
        pipeline.build_study("demo", None, {"analysis": {"label": "x"}})
    # a keyword of analyze-conflicts that no private list named is accepted ...
    assert pipeline.build_study("demo", None, {"analysis": {"conflicts": False}})["analysis"]["conflicts"] is False
    # ... and an option the pipeline sets itself is refused instead of clashing at the step
    with pytest.raises(KdxError, match=r"'seed' in the study's \[explainer\] table \(the pipeline sets it\)"):
        pipeline.build_study("demo", None, {"explainer": {"seed": 3}})
    # values are checked against the declarations before anything runs
    with pytest.raises(KdxError, match="stage1-epochs"):
        pipeline.build_study("demo", None, {"explainer": {"stage1_epochs": 0}})
    with pytest.raises(KdxError, match=r"\[analysis\] images"):
        pipeline.build_study("demo", None, {"analysis": {"images": "many"}})


def test_paper_presets_use_the_official_explainer_teacher():
    # the authors' explainer KD configs (configs/cifar-{10,100}/seed-1029/kd/ResNet50-LTB-*.yml) use ResNet50
    for name in ("cifar10-paper", "cifar100-paper"):
        preset = pipeline.PIPELINE_PRESETS[name]
        assert preset["teacher"]["arch"] == "ResNet50" and "ResNet50" in preset["notes"], name
    assert "kdx choice" in pipeline.PIPELINE_PRESETS["cifar100-paper"]["notes"]


def test_study_report_reads_attention_entropy_at_both_temperatures(tmp_path):
    paths = {"analysis": tmp_path / "a", "explainer-kd": tmp_path / "kd"}
    for p in paths.values():
        p.mkdir()
    (paths["explainer-kd"] / "results.json").write_text(json.dumps({"test_top1_best": 0.5}))
    pd.DataFrame([{"run": "kd", "attention_entropy_l1": 0.4, "norm_attention_entropy_l1": 0.2,
                   "attention_entropy_tau1_l1": 0.6, "norm_attention_entropy_tau1_l1": 0.3,
                   "conflict_rate_ce": 0.1, "tau": 0.5}]).to_csv(paths["analysis"] / "summary.csv", index=False)
    rows = study_report.explainer_rows({"methods": ["kd"]}, 0, paths)
    kd = rows[0]
    assert kd["name"] == "kd" and kd["norm_attention_entropy_tau1_l1"] == 0.3 and kd["attention_entropy_l1"] == 0.4
    assert kd["conflict_rate_ce"] == 0.1 and "tau" not in kd


def test_objectives_is_a_deprecated_alias_of_methods(capsys):
    study = pipeline.build_study("demo", None, {"objectives": ["ce", "kd"]})
    assert study["methods"] == ["ce", "kd"] and "objectives" not in study
    assert "deprecated" in capsys.readouterr().err
    with pytest.raises(KdxError, match="unknown explainer method 'nope'"):
        pipeline.build_study("demo", None, {"methods": ["ce", "nope"]})


def test_set_download_and_methods_flags(tmp_path):
    r = runner.invoke(app, ["pipeline", "--preset", "demo", "--set", "explainer.stage1_epochs=30", "--set",
                            "teacher.arch=resnet32", "--set", "student.seeds=[0,1]", "--download", "--methods", "ce,kd",
                            "--threads", "2", "--print-config"])
    assert r.exit_code == 0, r.output
    study = json.loads(r.output)
    assert study["explainer"]["stage1_epochs"] == 30 and study["teacher"]["arch"] == "resnet32"
    assert study["student"]["seeds"] == [0, 1] and study["download"] is True and study["methods"] == ["ce", "kd"]
    steps = pipeline.resolve(study, tmp_path / "s")["configs"]
    assert study["threads"] == 2 and all(cfg.threads == 2 for cfg in steps.values())  # every training step
    for bad, said in ((["--set", "explainer.stage1_epoch=3"], "did you mean 'stage1_epochs'"),
                      (["--set", "teachr.arch=x"], "unknown step 'teachr'"),
                      (["--set", "explainer.stage1_epochs"], "STEP.KEY=VALUE"),
                      (["--set", "explainer.stage1_epochs=abc"], "stage1-epochs must be an integer"),
                      (["--threads", "0"], "--threads must be >= 1")):
        r = runner.invoke(app, ["pipeline", "--preset", "demo", *bad, "--print-config"])
        assert r.exit_code == 2 and said in r.output, (bad, r.output)


def _tiny_config(tmp_path, **changes) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(pipeline.merge_study(TINY_STUDY, changes)))
    return path


def test_every_input_is_checked_before_the_first_step(tmp_path):
    out = tmp_path / "study"
    r = runner.invoke(app, ["pipeline", "--config", str(_tiny_config(tmp_path)), "--teacher", str(tmp_path / "nope"),
                            "--out", str(out)])
    assert r.exit_code == 2 and "nope" in r.output
    assert not out.exists()  # nothing trained, nothing written
    r = runner.invoke(app, ["pipeline", "--config", str(_tiny_config(tmp_path)), "--dataset", "cifar10", "--data-root",
                            str(tmp_path / "empty"), "--out", str(out)])
    assert r.exit_code == 2 and "download" in r.output and not out.exists()
    bad = _tiny_config(tmp_path, analysis={"images": 1})
    r = runner.invoke(app, ["pipeline", "--config", str(bad), "--out", str(out)])
    assert r.exit_code == 2 and "images must be >= 2" in r.output and not out.exists()  # checked before any step


def test_failed_or_changed_study_and_overwrite(tmp_path):
    out = tmp_path / "study"
    study = pipeline.build_study("demo", None, TINY_STUDY)
    out.mkdir()
    (out / "study.json").write_text(json.dumps(pipeline.merge_study(study, {"methods": ["ce"]})))
    pipeline.claim_folder(study, out, overwrite=False)  # a study that never started does not block its correction
    assert json.loads((out / "study.json").read_text())["methods"] == study["methods"]
    (out / "study.json").write_text(json.dumps(pipeline.merge_study(study, {"methods": ["ce"]})))
    (out / "teacher").mkdir()
    (out / "teacher" / "config.json").write_text("{}")
    with pytest.raises(KdxError, match="another config"):
        pipeline.claim_folder(study, out, overwrite=False)
    pipeline.claim_folder(study, out, overwrite=True)
    assert not (out / "teacher").exists() and json.loads((out / "study.json").read_text())["methods"] == study["methods"]


def test_claim_rule_and_paired_differences():
    assert study_report.claimed(pd.Series([0.10, 0.11, 0.09]))
    assert not study_report.claimed(pd.Series([0.10, -0.10, 0.05]))
    assert not study_report.claimed(pd.Series([0.5]))  # one seed: no claim
    # |mean| = 0.02, std = 0.02, n = 4: 2 * 0.02 / 2 = 0.02, not strictly larger -> no claim
    assert not study_report.claimed(pd.Series([0.0, 0.04, 0.0, 0.04]))
    expl = pd.DataFrame([{"seed": s, "name": m, "test_top1_last": acc, "norm_entropy_l1": h}
                         for s, m, acc, h in [(0, "kd", 0.80, 0.20), (0, "ce", 0.70, 0.50), (0, "ls", 0.75, 0.40),
                                              (1, "kd", 0.82, 0.22), (1, "ce", 0.71, 0.55), (1, "ls", 0.80, 0.45)]])
    d = study_report.explainer_differences(expl).set_index(["metric", "pair"])
    assert d.loc[("norm_entropy_l1", "kd - ce"), "mean"] == pytest.approx(-0.315)
    assert d.loc[("test_top1_last", "kd - ls"), "n"] == 2
    assert bool(d.loc[("norm_entropy_l1", "kd - ce"), "claimed"])


def test_report_describes_the_resolved_study(tmp_path):
    study = pipeline.build_study("demo", None, {"teacher_run": "elsewhere/teacher"})
    resolved = pipeline.resolve(study, tmp_path)
    resolved["teacher_meta"] = {"arch": "wrn_16_2", "dataset": "fashion-mnist-mini"}
    text = "\n".join(study_report.describe(study, resolved) + study_report._notes(study))
    assert "wrn_16_2" in text and "resnet20" not in text
    assert "16-channel experts" not in text and "departs from the preset in teacher_run" in text
    plain = pipeline.build_study("demo", None, {})
    assert "16-channel experts" in "\n".join(study_report._notes(plain))


def test_summary_integers_and_empty_std():
    frame = study_report.int_frame([{"params": 77754, "seed": 0, "acc": 0.5}, {"params": None, "seed": 1, "acc": 0.25}])
    assert frame.to_csv(index=False).splitlines()[1:] == ["77754,0,0.5", ",1,0.25"]
    assert study_report.mean_std(pd.Series([0.5]), "test_top1_last") == "50.00"
    assert study_report.mean_std(pd.Series([0.5, 0.7]), "test_top1_last") == "60.00 ± 14.14"
    assert study_report.fmt(float("nan"), "best_std") == ""


def test_evidence_preset():
    study = pipeline.build_study("evidence", None, {})
    e = pipeline.resolve(study, Path("x"))["configs"][("explainer", 0, "kd")]
    assert study["methods"] == ["ce", "ls", "kd"] and len(study["seeds"]) == 3
    assert e.stage1_epochs >= 30 and e.tau0 / e.stage1_epochs <= 0.34


def test_single_seed_analysis_claims_no_sameness():
    from kdx.analysis.report import ONE_SEED, comparisons

    summary = pd.DataFrame([{"run": "kd", "objective": "kd", "norm_attention_entropy_l1": 0.500,
                             "conflict_rate_objective": 0.2, "conflict_rate_ce": 0.2},
                            {"run": "ce", "objective": "ce", "norm_attention_entropy_l1": 0.505,
                             "conflict_rate_objective": 0.2, "conflict_rate_ce": 0.3}])
    text = "\n".join(comparisons(summary, 1))
    assert "about the same" not in text and "-1%" in text  # the 5 % rule is gone; the difference is still given
    assert "no difference is claimed from one seed" in ONE_SEED


def test_a_study_folder_in_use_is_refused(tmp_path):
    """A second writer of a study folder is refused before it changes anything (issue 13 item 18)."""
    import os
    import socket

    out = tmp_path / "study"
    out.mkdir()
    (out / ".kdx.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    study = pipeline.build_study("demo", None, TINY_STUDY)
    with pytest.raises(KdxError, match="in use by process"):
        pipeline.claim_folder(study, out, overwrite=True)
    assert not (out / "study.json").exists()


def test_the_pipeline_takes_every_registered_explainer_method(tmp_path):
    """issue 19 item 3 / issue 20 item 3: no method list in the commands; a teacher wherever a method
    needs one; ``all``; combinations; the explain-methods preset (no students, one analysis of all)."""
    from kdx.distill.methods import methods_for

    study = pipeline.build_study("demo", None, {"methods": ["ce", "dkd", "at", "kd+at"]})
    assert study["methods"] == ["ce", "dkd", "at", "kd+at"]
    places = study_mod.layout(study, tmp_path)
    steps = pipeline.step_values(study, places)
    assert "teacher" not in steps[("explainer", 0, "ce")] and steps[("explainer", 0, "ce")]["method"] == ["ce"]
    assert all(steps[("explainer", 0, m)]["teacher"] == str(places["teacher"]) for m in ("dkd", "at", "kd+at"))
    assert steps[("explainer", 0, "kd+at")]["method"] == ["kd", "at"]
    every = pipeline.build_study("explain-methods", None, {})
    offered = methods_for("explainer")
    assert every["methods"][:3] == ["ce", "ls", "kd"] and sorted(every["methods"]) == sorted(offered)
    assert len(every["methods"]) == len(offered) == 14 and every["seeds"] == [0, 1, 2]
    resolved = pipeline.resolve(every, tmp_path / "em")
    assert "student" not in resolved["configs"] and resolved["places"]["methods"] == tmp_path / "em" / "analysis-methods"
    runs, labels = pipeline.method_analysis_runs(every, resolved["places"])
    assert len(runs) == 14 * 3 and labels[:2] == ["ce-s0", "ls-s0"]
    r = runner.invoke(app, ["pipeline", "--preset", "explain-methods", "--print-config"])
    assert r.exit_code == 0 and '"students": false' in r.output
