"""Many models, many runners: a policy with several models, --shard K/N, merge, and
compare with regression budgets (pull request against main)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from conftest import load_report

FAST = {"candidates": [{"name": "dyn", "quantize": {"plugin": "dynamic"}}]}


def _suite_policy(case, models: list[dict], **extra) -> Path:
    body = {**FAST, **extra}
    path = case.write_policy(body)
    document = path.read_text().replace(f"model:\n  path: {case.model.name}\n", "")
    models_yaml = "models:\n" + "".join(
        "  - " + json.dumps(model) + "\n" for model in models
    )  # JSON is YAML: one flow mapping per line
    path.write_text(models_yaml + document)
    return path


def _models(case, names: list[str], failing: str | None = None) -> list[dict]:
    models = []
    for name in names:
        model: dict = {"name": name, "path": case.model.name}
        if name == failing:
            model["budgets"] = [{"metric": "size_mb", "max": 0.0001}]
        models.append(model)
    return models


def test_a_policy_with_several_models_gates_each_and_gives_one_verdict(
    classifier, gate_cli, tmp_path
):
    from junitparser import JUnitXml

    policy = _suite_policy(
        classifier, _models(classifier, ["alpha", "beta", "gamma"], failing="beta"),
        budgets=[{"metric": "top1_agreement", "min": 0.9}],
    )  # fmt: skip
    assert gate_cli("check", policy).exit_code == 0
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 1
    report = load_report(out)
    assert report["kind"] == "suite" and report["verdict"] == "fail"
    assert [(m["name"], m["verdict"]) for m in report["models"]] == [
        ("alpha", "pass"), ("beta", "fail"), ("gamma", "pass"),
    ]  # fmt: skip
    assert report["message"] == "3 model(s): 1 fail, 2 pass (beta)"
    for name in ("alpha", "beta", "gamma"):
        assert load_report(out / "models" / name)["name"] == name
        assert f"onnx-gate: {name} " in (out / "models" / name / "report.html").read_text()
    assert (out / "models/alpha/model.onnx").is_file()
    # The suite's page: one row per model, each linking its own page.
    page = (out / "report.html").read_text()
    assert '<a href="models/beta/report.html">beta</a>' in page and "3 models" in page
    # beta's own budgets replaced the policy's: its row points at its own line.
    [beta_row] = [row for row in report["budgets"] if row["model"] == "beta"][:1]
    lines = policy.read_text().splitlines()
    assert "beta" in lines[beta_row["line"] - 1] and beta_row["status"] == "fail"
    xml = JUnitXml.fromfile(str(out / "junit.xml"))
    assert [s.name for s in xml] == ["onnx-gate.alpha", "onnx-gate.beta", "onnx-gate.gamma"]
    assert xml.failures == 1
    assert "beta: fail (error): size_mb expected <= 0.0001" in result.stdout
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## ❌ onnx-gate: FAIL")
    assert "| beta | ❌ fail | - |" in summary and "| alpha | ✅ pass | `" in summary
    assert "<details><summary>beta: fail</summary>" in summary


def test_shards_split_the_models_and_merge_gives_the_one_verdict(classifier, gate_cli, tmp_path):
    names = ["m1", "m2", "m3", "m4", "m5"]
    policy = _suite_policy(classifier, _models(classifier, names, failing="m4"))
    shards = []
    for index in (1, 2, 3):
        out = tmp_path / f"shard{index}"
        code = gate_cli("run", policy, "--shard", f"{index}/3", "-o", out, "-q").exit_code
        report = load_report(out)
        shards.append(out)
        assert report["shard"]["index"] == index and report["shard"]["count"] == 3
        assert code == (1 if "m4" in report["shard"]["models"] else 0)
    assert [load_report(s)["shard"]["models"] for s in shards] == [
        ["m1", "m4"],
        ["m2", "m5"],
        ["m3"],
    ]

    merged = tmp_path / "merged"
    result = gate_cli("merge", *shards, "-o", merged)
    assert result.exit_code == 1
    report = load_report(merged)
    assert sorted(m["name"] for m in report["models"]) == names
    assert report["verdict"] == "fail" and "m4" in report["message"]
    assert (merged / "models/m4/report.json").is_file() and (merged / "junit.xml").is_file()
    assert report["counts"]["fail"] == 1

    # A lost shard is never a silent pass: the models nobody gated are named.
    incomplete = gate_cli("merge", shards[1], shards[2], "-o", tmp_path / "incomplete")
    assert incomplete.exit_code == 3
    partial = load_report(tmp_path / "incomplete")
    assert any("shard(s) 1 missing: model(s) m1, m4 were not gated" in e for e in partial["errors"])
    twice = gate_cli("merge", shards[0], shards[0], "-o", tmp_path / "twice")
    assert twice.exit_code == 2 and "given twice" in twice.stderr


def test_merge_combines_single_model_runs_and_refuses_duplicates(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(FAST)
    first, second = tmp_path / "first", tmp_path / "second"
    assert gate_cli("run", policy, "-o", first, "-q").exit_code == 0
    shutil.copytree(first, second)
    duplicate = gate_cli("merge", first, second, "-o", tmp_path / "merged")
    assert duplicate.exit_code == 2 and "the same model appears in several inputs: model" in (
        duplicate.stderr
    )
    assert gate_cli("merge", first, "-o", tmp_path / "one").exit_code == 0
    assert load_report(tmp_path / "one")["models"][0]["name"] == "model"
    missing = gate_cli("merge", tmp_path / "nowhere", "-o", tmp_path / "x")
    assert missing.exit_code == 2 and "holds no report.json" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_problem_in_one_model_is_named_where_it_is_written(classifier, gate_cli, tmp_path):
    models = _models(classifier, ["good", "bad"])
    models[1]["path"] = "missing.onnx"
    models[1]["budgets"] = [{"metric": "size_mbx", "max": 1}]
    policy = _suite_policy(classifier, models)
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert any("models[1].path: file not found" in line for line in lines)
    assert any("models[1].budgets[0].metric: unknown metric 'size_mbx'" in line for line in lines)
    # run gates the good model and reports the bad one: nothing is lost, exit 2 overall
    result = gate_cli("run", policy, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 2
    report = load_report(tmp_path / "out")
    assert [(m["name"], m["verdict"]) for m in report["models"]] == [
        ("good", "pass"), ("bad", "error"),
    ]  # fmt: skip


def test_bad_shards_and_duplicate_model_names_are_usage_errors(classifier, gate_cli, tmp_path):
    policy = _suite_policy(classifier, _models(classifier, ["same", "same"]))
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "models[1].name: 'same' is also the name of models[0]" in result.stderr
    result = gate_cli("run", classifier.write_policy(FAST), "--shard", "3/2")
    assert result.exit_code == 2 and "K must be between 1 and N" in result.stderr
    result = gate_cli("run", classifier.write_policy(FAST), "--shard", "two")
    assert result.exit_code == 2 and "--shard takes K/N" in result.stderr


def _report_with(report: dict, move_intervals: bool = True, **metrics: float) -> dict:
    """The report with the chosen candidate's metrics changed (and their intervals moved
    by the same factor, unless told not to)."""
    changed = json.loads(json.dumps(report))
    chosen = next(c for c in changed["candidates"] if c["name"] == changed["chosen"])
    for metric, value in metrics.items():
        factor = value / chosen["metrics"][metric]
        chosen["metrics"][metric] = value
        interval = chosen["intervals"].get(metric)
        if interval and move_intervals:
            chosen["intervals"][metric] = [bound * factor for bound in interval]
    return changed


def test_compare_report_against_report_fails_on_accuracy_and_warns_on_timing(
    classifier, gate_cli, tmp_path
):
    policy = classifier.write_policy(
        {
            **FAST,
            "data": {"validation": "validation.npz", "labels": "labels.npy"},
            "budgets": [{"metric": "top1_agreement", "min": 0.5}],
        }
    )
    out = tmp_path / "main"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    base = load_report(out)
    chosen = next(c for c in base["candidates"] if c["name"] == base["chosen"])
    speedup = chosen["metrics"]["speedup"]

    def compare(head: dict, name: str) -> tuple[int, dict, str]:
        path = tmp_path / f"{name}.json"  # a report alone: no model to time side by side
        path.write_text(json.dumps(head))
        result = gate_cli("compare", out, path, "-o", tmp_path / name)
        return (
            result.exit_code,
            json.loads((tmp_path / name / "compare.json").read_text()),
            (tmp_path / name / "compare.md").read_text(),
        )

    code, result, markdown = compare(_report_with(base, speedup=speedup * 0.97), "small")
    assert code == 0 and result["failed"] == [] and "⚠️ speedup" not in markdown
    assert any("not timed side by side" in w for w in result["warnings"])
    # Surely 20% slower by both runs' intervals: still only a warning from two separate runs.
    code, result, markdown = compare(_report_with(base, speedup=speedup * 0.8), "slower")
    assert code == 0 and result["failed"] == []
    speed = next(r for r in result["models"][0]["regressions"] if r["metric"] == "speedup")
    assert (speed["status"], speed["level"]) == ("fail", "warn")
    assert "two separate runs: a warning only" in speed["message"]
    assert "⚠️ speedup" in markdown and "(-20.0%)" in markdown
    # Past the allowance by its point, but the two runs' intervals overlap that far.
    chosen["intervals"]["speedup"] = [speedup * 0.5, speedup * 1.5]  # the head's (in memory)
    wide = _report_with(base, move_intervals=False, speedup=speedup * 0.9)
    code, result, markdown = compare(wide, "wide")
    assert code == 0 and any("not surely a regression" in w for w in result["warnings"])

    moved = _report_with(base, speedup=speedup * 0.8)
    moved["testbed"]["cpu"]["model"] = "Another CPU"
    code, result, _ = compare(moved, "moved")
    assert code == 0
    assert any("testbeds differ" in w for w in result["warnings"])
    assert any("regression (warn): model: speedup" in w for w in result["warnings"])
    worse = _report_with(moved, accuracy=chosen["metrics"]["accuracy"] - 0.1)
    code, result, markdown = compare(worse, "worse")  # labelled accuracy fell: fails anywhere
    assert code == 1 and any("model: accuracy" in line for line in result["failed"])
    assert "❌ accuracy" in markdown


def test_compare_uses_the_policys_regression_budgets(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {**FAST, "regressions": [{"metric": "size_mb", "max_rise": 0.0}]}
    )
    out = tmp_path / "main"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    base = load_report(out)
    size = next(c for c in base["candidates"] if c["chosen"])["metrics"]["size_mb"]
    head = tmp_path / "head.json"
    head.write_text(json.dumps(_report_with(base, size_mb=size * 1.5, speedup=0.1)))
    result = gate_cli("compare", out / "report.json", head, "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["regressions"] == [{"metric": "size_mb", "max_rise": 0.0, "level": "error"}]
    assert [line.split(" ")[1] for line in payload["failed"]] == ["size_mb"]  # speedup unchecked


def test_compare_matches_the_models_of_two_suites_by_name(classifier, gate_cli, tmp_path):
    policy = _suite_policy(classifier, _models(classifier, ["a", "b"]))
    base, head = tmp_path / "base", tmp_path / "head"
    assert gate_cli("run", policy, "-o", base, "-q").exit_code == 0
    assert gate_cli("run", policy, "--shard", "2/2", "-o", head, "-q").exit_code == 0
    result = gate_cli("compare", base, head, "--json", "--seconds", "0.5")
    payload = json.loads(result.stdout)
    assert [model["name"] for model in payload["models"]] == ["b"]
    assert payload["models"][0]["side_by_side"]["rounds"] > 0  # each model's own folder
    assert any("in the base report only: a" in w for w in payload["warnings"])


def _with_dead_weight(source: Path, target: Path) -> Path:
    """The same model and outputs plus a chain of matrix products that ORT cannot fold
    away (it only ever adds zero): many times slower on any CPU, whatever int8 does."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    [output] = graph.output
    rng = np.random.default_rng(0)
    widen = rng.normal(scale=0.05, size=(256, 1024)).astype(np.float32)
    square = rng.normal(scale=0.03, size=(1024, 1024)).astype(np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(widen, "dead_widen"),
            numpy_helper.from_array(square, "dead_square"),
            numpy_helper.from_array(np.zeros(1, np.float32), "dead_zero"),
        ]
    )
    for node in graph.node:  # the real head now writes to an inner name
        node.output[:] = [f"{o}_live" if o == output.name else o for o in node.output]
    nodes = [helper.make_node("MatMul", [graph.input[0].name, "dead_widen"], ["dead0"])]
    for step in range(8):
        nodes.append(
            helper.make_node("MatMul", [f"dead{step}", "dead_square"], [f"dead{step + 1}"])
        )
    nodes += [
        helper.make_node("ReduceSum", ["dead8"], ["dead_sum"], keepdims=0),
        helper.make_node("Mul", ["dead_sum", "dead_zero"], ["dead_nothing"]),
        helper.make_node("Add", [f"{output.name}_live", "dead_nothing"], [output.name]),
    ]
    graph.node.extend(nodes)
    onnx.save_model(model, str(target))
    return target


def test_compare_times_the_two_chosen_models_side_by_side(gate_cli, tmp_path):
    from importlib.resources import files

    demo = files("gate.demo")
    for name in ("classifier.onnx", "calibration.npz", "validation.npz", "labels.npy"):
        (tmp_path / name).write_bytes(demo.joinpath(name).read_bytes())
    # Two versions of one model, same interface and outputs: the pull request's does
    # dead work. (Not int8 against float: on a VNNI machine they may run alike.)
    _with_dead_weight(tmp_path / "classifier.onnx", tmp_path / "heavy.onnx")
    policy = {
        "version": 1,
        "inputs": {"x": {"shape": [1, 256]}},
        "data": {"validation": "validation.npz", "labels": "labels.npy"},
        "measure": {"max_seconds": 1, "memory": False},
        "candidates": [{"name": "off", "graph": {"level": "disabled"}}],
    }
    fast = {**policy, "model": {"path": "classifier.onnx"}}
    slow = {**policy, "model": {"path": "heavy.onnx"}}
    (tmp_path / "fast.yaml").write_text(json.dumps(fast))
    (tmp_path / "slow.yaml").write_text(json.dumps(slow))
    main, pull = tmp_path / "main", tmp_path / "pull"
    assert gate_cli("run", tmp_path / "fast.yaml", "-o", main, "-q").exit_code == 0
    assert gate_cli("run", tmp_path / "slow.yaml", "-o", pull, "-q").exit_code == 0

    # The pull request ships the heavier model: slower.
    result = gate_cli("compare", main, pull, "--seconds", "2", "--json")
    payload = json.loads(result.stdout)
    [model] = payload["models"]
    assert model["side_by_side"]["speedup"] < 0.9 and model["side_by_side"]["rounds"] > 100
    assert model["side_by_side"]["input"] == "the head run's timing input"  # timing-input.npz
    speed = next(r for r in model["regressions"] if r["metric"] == "speedup")
    assert speed["side_by_side"] and speed["status"] == "fail"
    assert result.exit_code == 1
    # The other way round the head is faster: no regression.
    result = gate_cli("compare", pull, main, "--seconds", "2")
    assert result.exit_code == 0 and "side by side: the head's model runs at" in result.stdout
    # Without the models beside the reports, the reports' own figures are compared.
    result = gate_cli("compare", main / "report.json", pull, "--no-side-by-side", "--json")
    speed = next(
        r for r in json.loads(result.stdout)["models"][0]["regressions"] if r["metric"] == "speedup"
    )
    assert "side_by_side" not in speed


def test_shards_that_failed_before_gating_anything_never_merge_into_a_pass(
    classifier, gate_cli, tmp_path
):
    policy = _suite_policy(classifier, _models(classifier, ["a", "b"]))
    policy.write_text(policy.read_text().replace("version: 1", "version: 1\nbogus: key"))
    shards = []
    for index in (1, 2):
        out = tmp_path / f"shard{index}"
        assert gate_cli("run", policy, "--shard", f"{index}/2", "-o", out, "-q").exit_code == 2
        shards.append(out)
    result = gate_cli("merge", *shards, "-o", tmp_path / "merged")
    assert result.exit_code == 2
    report = load_report(tmp_path / "merged")
    assert report["verdict"] == "error" and report["models"] == []
    assert any("shard1: " in e and "bogus" in e for e in report["errors"])
    assert report["message"].startswith("no model was gated:")
    assert "ONNX_GATE_VERDICT=error" in (tmp_path / "merged" / "gate.env").read_text()


def test_stages_run_per_model_of_a_suite(classifier, gate_cli, tmp_path):
    policy = _suite_policy(classifier, _models(classifier, ["a", "b"], failing="b"))
    built, measured = tmp_path / "built", tmp_path / "measured"
    assert gate_cli("run", policy, "--stage", "build", "-o", built, "-q").exit_code == 0
    report = load_report(built)
    assert report["verdict"] == "pending" and report["stage"] == "build"
    assert [m["verdict"] for m in report["models"]] == ["pending", "pending"]
    assert (built / "models/a/stage/build.json").is_file()
    result = gate_cli("run", policy, "--stage", "measure", "--from", built, "-o", measured, "-q")
    assert result.exit_code == 1
    report = load_report(measured)
    assert [(m["name"], m["verdict"]) for m in report["models"]] == [("a", "pass"), ("b", "fail")]
    assert gate_cli("merge", measured, "-o", tmp_path / "merged").exit_code == 1


def test_compare_is_inconclusive_when_nothing_could_be_compared(classifier, gate_cli, tmp_path):
    good = classifier.write_policy(FAST)
    broken = classifier.write_policy({**FAST, "budgets": [{"metric": "size_mb", "max": 1e-9}]},
                                     name="broken.yaml")  # fmt: skip
    main, pull = tmp_path / "main", tmp_path / "pull"
    assert gate_cli("run", good, "-o", main, "-q").exit_code == 0
    assert gate_cli("run", broken, "-o", pull, "-q").exit_code == 1  # chose nothing
    result = gate_cli("compare", main, pull, "--no-side-by-side")
    assert result.exit_code == 4
    assert "the head report chose no model (verdict fail): nothing to compare" in result.stderr
    suite = _suite_policy(classifier, _models(classifier, ["x"]))
    assert gate_cli("run", suite, "-o", tmp_path / "suite", "-q").exit_code == 0
    result = gate_cli("compare", main, tmp_path / "suite", "--no-side-by-side")
    assert result.exit_code == 4 and "in the base report only: model" in result.stderr
