"""kdx pipeline: a tiny whole study, the report, and skip/resume on rerun."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from kdx.cli import app
from kdx.commands import pipeline

runner = CliRunner()

TINY_STUDY = {
    "preset": "demo",
    "dataset": "fashion-mnist-mini",
    "device": "cpu",
    "quiet": True,
    "max_train_samples": 200,
    "seeds": [0],
    "objectives": ["ce", "ls", "kd"],
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


def test_tiny_study_end_to_end_and_rerun_skips(tmp_path, capsys):
    out = tmp_path / "study"
    study = pipeline.merge_study(pipeline.PIPELINE_PRESETS["demo"], TINY_STUDY)
    pipeline.run(study, out)
    for name in ("study.json", "study_report.md", "study_summary.csv", "teacher/model.safetensors",
                 "explainer-ce/tree.json", "explainer-kd/stage2/model.safetensors", "analysis/summary.csv",
                 "analysis/clusters/layer1.json", "students/comparison.csv"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "study_summary.csv")
    assert set(summary["component"]) == {"teacher", "explainer", "student"}
    assert set(summary[summary["component"] == "explainer"]["name"]) == {"ce", "ls", "kd"}
    assert {"ce", "kd", "kd+vam", "kd+vam+hier"} <= set(summary[summary["component"] == "student"]["name"])
    report = (out / "study_report.md").read_text()
    for needle in ("## Teacher", "## Explainers", "## Students", "kdx pipeline --config", "torch", "best_vs_kd",
                   "norm_attention_entropy_l3", "norm_attention_entropy_tau1_l3"):
        assert needle in report, needle
    assert {"attention_entropy_l3", "attention_entropy_tau1_l3"} <= set(summary.columns)
    # a rerun skips every finished step ...
    log_before = (out / "explainer-ls" / "results.json").read_text()
    capsys.readouterr()
    pipeline.run(study, out)
    said = capsys.readouterr().err
    assert "[seed 0] teacher: finished earlier, skipped" in said  # not eaten as rich markup
    assert "[seed 0] analysis: finished earlier, skipped" in said
    assert (out / "explainer-ls" / "results.json").read_text() == log_before
    assert "skipped (done)" in (out / "study_report.md").read_text()
    # ... and finishes an interrupted one without retraining what had finished
    (out / "explainer-ls" / "results.json").unlink()
    (out / "explainer-ls" / "stage2" / "results.json").unlink()
    stage1_model = (out / "explainer-ls" / "stage1" / "model.safetensors").stat().st_mtime_ns
    pipeline.run(study, out)
    assert (out / "explainer-ls" / "results.json").is_file()
    assert (out / "explainer-ls" / "stage1" / "model.safetensors").stat().st_mtime_ns == stage1_model
    assert "resumed" in (out / "study_report.md").read_text()
    # another config in the same folder is refused
    with pytest.raises(Exception, match="another config"):
        pipeline.run(pipeline.merge_study(study, {"objectives": ["ce"]}), out)


def test_report_plots_order_and_selection(tmp_path):
    from kdx.commands.study_report import report_plots

    names = ["attention_ce_layer1.png", "attention_ce_layer3.png", "attention_kd_layer2.png", "attention_kd_layer3.png",
             "conflicts_kd.png", "conflicts_ce.png", "entropy.png", "tree_kd.png", "tree_ce.png"]
    for n in names:
        (tmp_path / n).write_bytes(b"png")
    got = [p.name for p in report_plots(tmp_path)]
    assert got == ["entropy.png", "tree_ce.png", "tree_kd.png", "attention_ce_layer3.png", "attention_kd_layer3.png",
                   "conflicts_ce.png", "conflicts_kd.png"]
    assert report_plots(tmp_path / "missing") == []


def test_unknown_step_keys_are_refused():
    from kdx.errors import KdxError

    for name in pipeline.PIPELINE_PRESETS:
        pipeline.build_study(name, None, {})  # every preset passes its own check
    with pytest.raises(KdxError, match="did you mean 'stage1_epochs'"):
        pipeline.build_study("demo", None, {"explainer": {"stage1_epoch": 3}})
    with pytest.raises(KdxError, match=r"unknown key 'label' in the study's \[analysis\] table"):
        pipeline.build_study("demo", None, {"analysis": {"label": "x"}})


def test_paper_presets_use_the_official_explainer_teacher():
    # the authors' explainer KD configs (configs/cifar-{10,100}/seed-1029/kd/ResNet50-LTB-*.yml) use ResNet50
    for name in ("cifar10-paper", "cifar100-paper"):
        preset = pipeline.PIPELINE_PRESETS[name]
        assert preset["teacher"]["arch"] == "ResNet50" and "ResNet50" in preset["notes"], name
    assert "kdx choice" in pipeline.PIPELINE_PRESETS["cifar100-paper"]["notes"]


def test_study_report_reads_attention_entropy_at_both_temperatures(tmp_path):
    from kdx.commands.study_report import collect

    paths = {"teacher": tmp_path / "t", "analysis": tmp_path / "a", "students": tmp_path / "s",
             "explainer-kd": tmp_path / "kd"}
    for p in paths.values():
        p.mkdir()
    (paths["explainer-kd"] / "results.json").write_text(json.dumps({"test_top1_best": 0.5}))
    pd.DataFrame([{"run": "kd", "attention_entropy_l1": 0.4, "norm_attention_entropy_l1": 0.2,
                   "attention_entropy_tau1_l1": 0.6, "norm_attention_entropy_tau1_l1": 0.3,
                   "conflict_rate_ce": 0.1, "tau": 0.5}]).to_csv(paths["analysis"] / "summary.csv", index=False)
    rows = collect({"teacher": {"arch": "r"}, "objectives": ["kd"]}, 0, paths)
    kd = rows[1]
    assert kd["name"] == "kd" and kd["norm_attention_entropy_tau1_l1"] == 0.3 and kd["attention_entropy_l1"] == 0.4
    assert kd["conflict_rate_ce"] == 0.1 and "tau" not in kd
