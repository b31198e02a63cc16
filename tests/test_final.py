"""The head-to-head final: before choosing, the leader is timed against the next fastest
passing candidates in paired blocks of their own; the one surely faster holds the place,
and a tie goes by the documented order (accuracy, quantised operators, size)."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import candidate, load_report

from gate.policy.loading import Budget
from gate.run.decide import (
    Final,
    Standing,
    TieBreak,
    evaluate,
    final_contenders,
    run_final,
)
from gate.stats import Estimate

DEMO = Path(__file__).resolve().parents[1] / "gate" / "demo"
SIZE = Budget("size_mb", "<=", 10.0, "error", "budgets[0]")


def standing(name: str, point: float, low: float, high: float, size: float = 1.0) -> Standing:
    results = evaluate([SIZE], {"size_mb": size}, {})
    return Standing(name, Estimate(point, low, high, 100), results)


def ties(**overrides: object) -> TieBreak:
    figures: dict[str, object] = {
        "metric": "top1_agreement",
        "higher_is_better": True,
        "accuracy": {"a": 0.99, "b": 0.99},
        "quantised_ops": {"a": 3, "b": 3},
        "size_mb": {"a": 0.40, "b": 0.40},
    }
    figures.update(overrides)
    return TieBreak(**figures)  # type: ignore[arg-type]


def timed(speedups: dict[tuple[str, str], Estimate | None]):
    """Stands in for the Judge's paired block: the challenger's speedup over the holder."""
    return lambda holder, challenger: (speedups[holder, challenger], "RuntimeError: boom")


def test_the_leader_meets_the_next_fastest_candidates_that_may_replace_the_original():
    everyone = [
        standing("original", 1.0, 1.0, 1.0),
        standing("leader", 1.40, 1.36, 1.44),
        # Not overlapping the leader's interval, and still in the final: separate blocks
        # against the original drift apart by more than their intervals say.
        standing("second", 1.20, 1.17, 1.23),
        standing("third", 1.10, 1.07, 1.13),
        standing("fourth", 1.08, 1.06, 1.10),
        standing("noise", 1.03, 0.99, 1.07),  # not surely faster than the original
        standing("marginal", 1.03, 1.01, 1.05),  # faster by less than min_gain
        standing("big", 3.0, 2.9, 3.1, size=50.0),  # misses a budget
    ]
    chosen = final_contenders(everyone, "leader", 0.05, 2)
    assert [s.name for s in chosen] == ["second", "third"]
    assert [s.name for s in final_contenders(everyone, "leader", 0.05, 10)] == [
        "second",
        "third",
        "fourth",
    ]


def test_a_surely_faster_challenger_takes_the_place_and_the_report_says_how():
    final = run_final(
        "a",
        ["b"],
        timed({("a", "b"): Estimate(1.06, 1.03, 1.09, 400)}),
        ties(),
    )
    assert final.chosen == "b"
    assert final.why == "b took the place of a: surely faster (1.06x, 95% interval 1.03-1.09)"
    document = final.to_json()
    assert document["bouts"] == [
        {
            "holder": "a",
            "challenger": "b",
            "speedup": 1.06,
            "interval": [1.03, 1.09],
            "rounds": 400,
            "winner": "b",
            "why": "surely faster (1.06x, 95% interval 1.03-1.09)",
        }
    ]
    assert Final.from_json(document).to_json() == document  # the decide stage replays it


def test_the_place_passes_from_one_winner_to_the_next():
    final = run_final(
        "a",
        ["b", "c"],
        timed(
            {
                ("a", "b"): Estimate(1.10, 1.05, 1.15, 300),  # b beats a
                ("b", "c"): Estimate(0.90, 0.85, 0.95, 300),  # c is surely slower than b
            }
        ),
        ties(accuracy={"a": 1, "b": 1, "c": 1}, quantised_ops={"a": 1, "b": 1, "c": 1}),
    )
    assert final.chosen == "b"
    assert [bout.winner for bout in final.bouts] == ["b", "b"]
    assert final.bouts[1].why == "c is surely slower (0.90x, 95% interval 0.85-0.95)"


def test_a_tie_goes_by_accuracy_then_quantised_operators_then_size():
    tied = timed({("a", "b"): Estimate(1.01, 0.98, 1.04, 300)})
    by_accuracy = run_final("a", ["b"], tied, ties(accuracy={"a": 0.97, "b": 0.99}))
    assert by_accuracy.chosen == "b"
    assert by_accuracy.bouts[0].why == (
        "tied (1.01x, 95% interval 0.98-1.04); higher top1_agreement (0.99 against 0.97)"
    )
    # A lower-is-better accuracy budget (max) turns the order round.
    drop = ties(metric="accuracy_drop", higher_is_better=False, accuracy={"a": 0.0, "b": 0.01})
    assert run_final("a", ["b"], tied, drop).chosen == "a"
    by_operators = run_final("a", ["b"], tied, ties(quantised_ops={"a": 9, "b": 3}))
    assert by_operators.chosen == "b"
    assert "fewer quantised operators (3 against 9)" in by_operators.bouts[0].why
    by_size = run_final("a", ["b"], tied, ties(size_mb={"a": 0.40, "b": 0.41}))
    assert by_size.chosen == "a" and by_size.why == (
        "a kept its place: against b, tied (1.01x, 95% interval 0.98-1.04); "
        "smaller (0.4 MB against 0.41 MB)"
    )
    # Builds of the same arithmetic differ by a few hundred bytes (the demo's dynamic s8 and
    # static percentile: 0.4047 and 0.4049 MB): that is no reason to pick either.
    same_size = run_final("a", ["b"], tied, ties(size_mb={"a": 0.4049, "b": 0.4047}))
    assert same_size.chosen == "a"
    assert same_size.bouts[0].why.endswith("so it keeps its place")
    even = run_final("a", ["b"], tied, ties())
    assert even.chosen == "a"
    assert even.bouts[0].why.endswith(
        "equal on every count of the tie order, so it keeps its place"
    )


def test_a_block_that_cannot_run_leaves_the_holder_in_place():
    final = run_final("a", ["b"], timed({("a", "b"): None}), ties())
    assert final.chosen == "a"
    assert final.bouts[0].why == "the block could not be run (RuntimeError: boom)"


def _demo(tmp_path: Path) -> Path:
    for name in ("classifier.onnx", "calibration.npz", "validation.npz", "labels.npy"):
        shutil.copy(DEMO / name, tmp_path / name)
    return tmp_path


def _policy(folder: Path, final: int) -> Path:
    import yaml

    int8 = {"plugin": "dynamic", "weight_type": "int8"}
    policy = {
        "version": 1,
        "model": {"path": "classifier.onnx"},
        "inputs": {"x": {"shape": [1, 256]}},
        "data": {"validation": "validation.npz", "labels": "labels.npy"},
        # One thread: int8 is then clearly faster than float, and the middle layer's
        # 512x512 MatMul left in float clearly slower than int8 throughout.
        "target": {"threads": 1},
        "candidates": [
            {"name": "int8", "quantize": int8},
            {"name": "int8-but-middle", "quantize": {**int8, "nodes_to_exclude": ["matmul1"]}},
        ],
        "budgets": [{"metric": "top1_agreement", "min": 0.9}],
        "selection": {"min_gain": 0.0, "final": final},
        "measure": {"max_seconds": 2.0, "memory": False},
    }
    path = folder / f"final-{final}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def test_the_final_separates_two_fast_candidates_and_the_reports_show_it(tmp_path, gate_cli):
    folder = _demo(tmp_path)
    out = tmp_path / "out"
    result = gate_cli("run", _policy(folder, 3), "-o", out)
    assert result.exit_code == 0, result.stdout
    report = load_report(out)
    final = report["final"]
    both = {"int8", "int8-but-middle"}
    assert final is not None and {final["leader"], *final["contenders"]} == both, final
    [bout] = final["bouts"]
    # Head to head the whole-int8 model is surely faster, whichever led against the original.
    assert bout["winner"] == "int8", bout
    assert "surely" in bout["why"] and bout["rounds"] > 0
    low, high = bout["interval"]
    assert (low > 1.0) if bout["challenger"] == "int8" else (high < 1.0)
    assert report["chosen"] == "int8" == final["chosen"]
    assert candidate(report, "int8")["chosen"]
    loser = candidate(report, "int8-but-middle")
    assert loser["outcome"].startswith("passes, but lost the head-to-head final to int8: ")
    assert f"final: {bout['challenger']} against {bout['holder']}: int8, " in result.stdout
    summary = (out / "summary.md").read_text()
    assert "**Head-to-head final:** `int8`" in summary
    assert f"- `{bout['challenger']}` against `{bout['holder']}`: `int8`" in summary

    # selection.final 0: chosen by each one's speedup over the original alone.
    off = tmp_path / "off"
    assert gate_cli("run", _policy(folder, 0), "-o", off, "-q").exit_code == 0
    report = load_report(off)
    assert report["final"] is None
    assert "head-to-head" not in report["decision"]


def test_the_decide_stage_takes_the_measure_stages_final(tmp_path, gate_cli):
    """The decide stage cannot time: it keeps the final the measure stage ran."""
    folder = _demo(tmp_path)
    policy = _policy(folder, 3)
    built, measured, decided = tmp_path / "built", tmp_path / "measured", tmp_path / "decided"
    assert gate_cli("run", policy, "--stage", "build", "-o", built, "-q").exit_code == 0
    stage = ("run", policy, "--stage", "measure", "--from", built, "-o", measured, "-q")
    assert gate_cli(*stage).exit_code == 0
    final = load_report(measured)["final"]
    assert final is not None and final["leader"] in ("int8", "int8-but-middle"), final
    stage = ("run", policy, "--stage", "decide", "--from", measured, "-o", decided, "-q")
    assert gate_cli(*stage).exit_code == 0
    report = load_report(decided)
    assert report["final"] == final
    assert report["chosen"] == final["chosen"] == load_report(measured)["chosen"]
