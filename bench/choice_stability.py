#!/usr/bin/env python3
"""How often repeated runs choose the same candidate, with and without the head-to-head final.

    python3 bench/choice_stability.py --model demo --runs 10
    python3 bench/fetch_models.py --only magika && python3 bench/choice_stability.py --model magika
    python3 bench/choice_stability.py --model magika --runs 10 --finals 3   # the default only

Runs the same policy (``candidates: auto``) ``--runs`` times with ``selection.final: 3``
and ``--runs`` times with ``selection.final: 0``, the two interleaved so that both see
the same machine. Then every distinct model the runs chose is timed against the one
chosen most often, in one paired block each (the gate's own ABBA harness, in this
process): a different choice is harmless when it is not surely slower.

Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def demo_policy(folder: Path) -> dict[str, Any]:
    demo = ROOT / "gate" / "demo"
    for name in ("classifier.onnx", "calibration.npz", "validation.npz", "labels.npy"):
        shutil.copy(demo / name, folder / name)
    return yaml.safe_load((demo / "policy.yaml").read_text())


def magika_policy(folder: Path) -> dict[str, Any]:
    from run_real_models import BENCH, synthetic

    entry = json.loads((BENCH / "models.json").read_text())["models"]["magika"]
    np.savez(folder / "calibration.npz", **synthetic(entry["inputs"], 16, seed=1))
    np.savez(folder / "validation.npz", **synthetic(entry["inputs"], 16, seed=2))
    model = (BENCH.parent / entry["path"]).resolve()
    if not model.is_file():
        raise SystemExit("run bench/fetch_models.py --only magika first")
    shutil.copy(model, folder / "model.onnx")
    return {
        "version": 1,
        "model": {"path": "model.onnx"},
        "inputs": {spec["name"]: {"shape": spec["shape"]} for spec in entry["inputs"]},
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
        "target": {"provider": "cpu", "usd_per_hour": 0.096},
        "budgets": [
            {"metric": "cosine_similarity", "min": 0.99},
            {"metric": "top1_agreement", "min": 0.9},
        ],
    }


def run_once(folder: Path, policy: dict[str, Any], final: int, label: str) -> dict[str, Any]:
    from gate.ci.suite import run_gate

    document = {**policy, "selection": {**policy.get("selection", {}), "final": final}}
    path = folder / f"{label}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    started = time.perf_counter()
    report = run_gate(path, folder / label).report
    seconds = time.perf_counter() - started
    chosen = report.get("chosen")
    print(f"  {label}: {chosen} in {seconds:.0f} s ({report['decision'][:110]})", file=sys.stderr)
    return {
        "label": label,
        "chosen": chosen,
        "sha256": (report.get("output_model") or {}).get("sha256"),
        "model": folder / label / "model.onnx",
        "session": (report.get("output_model") or {}).get("session") or {},
        "seconds": seconds,
        "bouts": len((report.get("final") or {}).get("bouts") or []),
    }


def against_most_chosen(runs: list[dict[str, Any]], feed: dict[str, np.ndarray]) -> list[str]:
    """Each distinct choice timed against the most frequent one: speedup > 1 = faster."""
    from gate.policy.loading import MeasureSettings
    from gate.run.measure import time_pair, timing_estimates
    from gate.run.runtime import Target, make_session
    from gate.run.testbed import physical_cores

    by_sha: dict[str, dict[str, Any]] = {}
    for run in runs:
        by_sha.setdefault(run["sha256"], run)
    common = collections.Counter(run["sha256"] for run in runs).most_common(1)[0][0]
    target = Target("CPUExecutionProvider", {}, physical_cores())
    settings = MeasureSettings(max_seconds=6.0, min_runs=200, max_runs=50000, min_seconds=6.0)
    base = make_session(by_sha[common]["model"], by_sha[common]["session"], target)
    lines = []
    for sha, run in by_sha.items():
        if sha == common:
            continue
        other = make_session(run["model"], run["session"], target)
        timing = time_pair(base, other, feed, settings)
        turns = (timing.original_turns, timing.candidate_turns)
        estimate = timing_estimates(timing.candidate_ms, turns, 1, None)["speedup"]
        verdict = (
            "surely faster"
            if estimate.low > 1.0
            else "surely slower"
            if estimate.high < 1.0
            else "within noise"
        )
        lines.append(
            f"{run['chosen']} against {by_sha[common]['chosen']}: {estimate.point:.3f}x "
            f"[{estimate.low:.3f}, {estimate.high:.3f}], {verdict}"
        )
    return lines


def main() -> int:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["demo", "magika"], default="demo")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--finals", default="3,0", help="selection.final values to compare (3: the default)"
    )
    args = parser.parse_args()
    finals = [int(value) for value in args.finals.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="choice-stability-"))
    policy = (demo_policy if args.model == "demo" else magika_policy)(folder)
    runs: dict[int, list[dict[str, Any]]] = {final: [] for final in finals}
    for index in range(args.runs):
        order = finals if index % 2 == 0 else finals[::-1]
        for final in order:
            runs[final].append(run_once(folder, policy, final, f"final{final}-{index}"))
    with np.load(folder / "validation.npz") as data:
        feed = {name: data[name][:1] for name in data.files}
    print(f"\n{args.model}: {args.runs} runs each; {platform.processor() or platform.machine()}, "
          f"onnxruntime {onnxruntime.__version__}\n")  # fmt: skip
    print("| selection.final | chosen (times) | distinct models | median run (s) | bouts per run |")
    print("|---|---|---|---|---|")
    for final, done in runs.items():
        chosen = collections.Counter(run["chosen"] for run in done)
        shown = ", ".join(f"{name} ({count})" for name, count in chosen.most_common())
        distinct = len({run["sha256"] for run in done})
        seconds = float(np.median([run["seconds"] for run in done]))
        bouts = float(np.median([run["bouts"] for run in done]))
        print(f"| {final} | {shown} | {distinct} | {seconds:.0f} | {bouts:.0f} |")
    for final, done in runs.items():
        for line in against_most_chosen(done, feed):
            print(f"- final {final}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
