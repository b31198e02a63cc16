#!/usr/bin/env python3
"""Many models, many jobs, on real published models: one job against shards + merge,
stages as jobs, and how two runs of the same commit compare (the regression check).

    python3 bench/fetch_models.py && python3 bench/run_real_models.py   # models and data
    python3 bench/ci_matrix.py [--only NAME ...] [--max-seconds 2]

Builds one `models:` policy over the fetched models (their inputs, synthetic data and
budgets from bench/out/NAME/, written by run_real_models.py) and runs, through the CLI
as a CI job would:

1. **one job**: `onnx-gate run` over every model;
2. **shards**: `--shard 1/2` and `--shard 2/2` (one after the other here; two runners
   in CI), then `onnx-gate merge`;
3. **stages**: `--stage build`, then `--stage measure --from`;
4. **compare**: the one-job report against the merged one - the same commit on the
   same machine twice, so every regression it reports is noise: how many the
   interval rule calls `inconclusive` and how many a point-only rule would fail;
   then the same over every pair of several runs of the bundled demo, a model of
   tens of microseconds, where run-to-run noise is largest.

Prints Markdown tables for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
DEFAULT_MODELS = ["ppocr_cls", "magika", "silero_vad", "paraphrase_minilm_l3"]
# Recipes that won on some of these models in the issue-4 grid (bench/search.py).
CANDIDATES = [
    {
        "name": "dynamic-s8-pc",
        "quantize": {"plugin": "dynamic", "weight_type": "int8", "per_channel": True},
    },
    {
        "name": "static-qdq-mm",
        "quantize": {"plugin": "static", "op_types_to_quantize": ["MatMul", "Conv", "Gemm"]},
    },
]


def suite_policy(names: list[str], folder: Path, max_seconds: float) -> Path:
    models = []
    for name in names:
        source = BENCH / "out" / name
        single = yaml.safe_load((source / "policy.yaml").read_text())
        models.append(
            {
                "name": name,
                "path": single["model"]["path"],
                "inputs": single.get("inputs", {}),
                "data": {key: str(source / value) for key, value in single["data"].items()},
                "budgets": single["budgets"],
            }
        )
    policy = {
        "version": 1,
        "models": models,
        "target": {"provider": "cpu", "usd_per_hour": 0.096},
        "measure": {"max_seconds": max_seconds},
        "candidates": CANDIDATES,
        "search": {"fallback": False},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def gate(*args: str) -> tuple[int, float]:
    started = time.perf_counter()
    done = subprocess.run(
        ["onnx-gate", *args, "--quiet"] if args[0] == "run" else ["onnx-gate", *args],
        capture_output=True,
        text=True,
    )
    if "Traceback" in done.stderr:
        sys.exit(f"onnx-gate {' '.join(args)} crashed:\n{done.stderr}")
    return done.returncode, time.perf_counter() - started


def verdicts(folder: Path) -> dict[str, tuple[str, str | None]]:
    report = json.loads((folder / "report.json").read_text())
    return {m["name"]: (m["verdict"], m.get("chosen")) for m in report["models"]}


def junit_counts(folder: Path) -> tuple[int, int]:
    from junitparser import JUnitXml

    xml = JUnitXml.fromfile(str(folder / "junit.xml"))
    return xml.tests, xml.failures + xml.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--max-seconds", type=float, default=2.0)
    parser.add_argument("--demo-runs", type=int, default=5)
    args = parser.parse_args()
    missing = [n for n in args.only if not (BENCH / "out" / n / "policy.yaml").is_file()]
    if missing:
        sys.exit(f"run bench/run_real_models.py first (no bench/out/NAME/policy.yaml): {missing}")
    work = BENCH / "out" / "ci"
    policy = suite_policy(args.only, work, args.max_seconds)
    out = {key: work / key for key in ("single", "shard1", "shard2", "merged", "built", "measured")}

    rows: list[tuple[str, int, float]] = []
    code, seconds = gate("run", str(policy), "-o", str(out["single"]))
    rows.append(("one job: run", code, seconds))
    shard_seconds = []
    for index in (1, 2):
        code, seconds = gate(
            "run", str(policy), "--shard", f"{index}/2", "-o", str(out[f"shard{index}"])
        )
        rows.append((f"shard {index}/2", code, seconds))
        shard_seconds.append(seconds)
    code, seconds = gate("merge", str(out["shard1"]), str(out["shard2"]), "-o", str(out["merged"]))
    rows.append(("merge", code, seconds))
    code, seconds = gate("run", str(policy), "--stage", "build", "-o", str(out["built"]))
    rows.append(("stage build", code, seconds))
    code, seconds = gate(
        "run", str(policy), "--stage", "measure", "--from", str(out["built"]),
        "-o", str(out["measured"]),
    )  # fmt: skip
    rows.append(("stage measure", code, seconds))
    compared = subprocess.run(
        ["onnx-gate", "compare", str(out["single"]), str(out["merged"]), "--json"],
        capture_output=True,
        text=True,
    )
    comparison = json.loads(compared.stdout)
    by_reports = json.loads(
        subprocess.run(
            ["onnx-gate", "compare", str(out["single"]), str(out["merged"]), "--json",
             "--no-side-by-side"],
            capture_output=True,
            text=True,
        ).stdout
    )  # fmt: skip

    import onnxruntime

    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}; "
        f"{len(args.only)} models, {len(CANDIDATES)} candidates each, measure.max_seconds "
        f"{args.max_seconds}.\n"
    )
    print("| job | exit | wall s |\n|---|---:|---:|")
    for name, code, seconds in rows:
        print(f"| {name} | {code} | {seconds:.1f} |")
    print(
        f"\nSlowest shard / one job: {max(shard_seconds) / rows[0][2]:.2f} "
        "(two runners in CI would take the slowest shard's time).\n"
    )
    single, merged, measured = (verdicts(out[k]) for k in ("single", "merged", "measured"))
    print("| model | one job | shards + merge | build + measure |\n|---|---|---|---|")
    for name in args.only:
        cells = [f"{v[0]} ({v[1] or '-'})" for v in (single[name], merged[name], measured[name])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    tests, failed = junit_counts(out["merged"])
    print(f"\nMerged junit.xml: {tests} test cases, {failed} failed or errored.\n")
    print(
        "| model | chosen (run 1 -> run 2) | speedup run 1 | run 2 | change | "
        "point-only rule | intervals rule | p50 latency change | side by side (95% interval) | "
        "side-by-side rule |\n|---|---|---:|---:|---:|---|---|---:|---:|---|"
    )
    for model, reports in zip(comparison["models"], by_reports["models"], strict=True):
        row = next(r for r in reports["regressions"] if r["metric"] == "speedup")
        paired = next(r for r in model["regressions"] if r["metric"] == "speedup")
        if row["change"] is None:
            continue
        point_only = "fail" if -row["change"] > row["allowed"] else "pass"
        latency = next((m for m in model["metrics"] if m["metric"] == "latency_ms.p50"), {})
        drift = "" if latency.get("change") is None else f"{latency['change']:+.1%}"
        side = model.get("side_by_side") or {}
        ratio = (
            f"{side['speedup']:.3f}x ({side['interval'][0]:.3f}-{side['interval'][1]:.3f})"
            if "speedup" in side
            else side.get("error", "")[:60]
        )
        print(
            f"| {model['name']} | {model['base']['chosen']} -> {model['head']['chosen']} | "
            f"{row['base']:.3f} | {row['head']:.3f} | {row['change']:+.1%} | {point_only} | "
            f"{row['status']} | {drift} | {ratio} | {paired['status']} |"
        )
    print(f"\ncompare exit code: {compared.returncode} (same commit, same machine: 0 expected)")
    demo_pairs(work, args.demo_runs)


def demo_pairs(work: Path, runs: int) -> None:
    """The bundled demo (a model of tens of microseconds) run several times, every pair
    compared: where run-to-run noise is largest, what each rule would have failed."""
    import itertools

    folders = [work / f"demo{index}" for index in range(1, runs + 1)]
    for folder in folders:
        gate("demo", "--quiet", "-o", str(folder))
    counts = {"pairs": 0, "point-only rule fails": 0, "interval rule fails": 0,
              "side-by-side fails": 0}  # fmt: skip
    changes, ratios = [], []
    for base, head in itertools.combinations(folders, 2):
        rows = {}
        for mode in ("--no-side-by-side", "--side-by-side"):
            done = subprocess.run(
                ["onnx-gate", "compare", str(base), str(head), "--json", mode, "--seconds", "3"],
                capture_output=True,
                text=True,
            )
            model = json.loads(done.stdout)["models"][0]
            rows[mode] = next(r for r in model["regressions"] if r["metric"] == "speedup")
            if mode == "--side-by-side":
                ratios.append(model["side_by_side"]["speedup"])
                if rows[mode]["status"] != "pass":
                    low, high = model["side_by_side"]["interval"]
                    print(
                        f"side by side {rows[mode]['status']}: {model['base']['chosen']} -> "
                        f"{model['head']['chosen']} at {ratios[-1]:.3f}x ({low:.3f}-{high:.3f})"
                    )
        reports = rows["--no-side-by-side"]
        counts["pairs"] += 1
        changes.append(reports["change"])
        counts["point-only rule fails"] += -reports["change"] > reports["allowed"]
        counts["interval rule fails"] += reports["status"] == "fail"
        counts["side-by-side fails"] += rows["--side-by-side"]["status"] == "fail"
    print(
        f"\nBundled demo, {runs} runs, every pair compared (same commit): the reports' speedups "
        f"change {min(changes):+.1%} to {max(changes):+.1%}; the chosen models side by side "
        f"{min(ratios):.3f}x to {max(ratios):.3f}x; "
        + ", ".join(f"{key} {value}" for key, value in counts.items())
    )


if __name__ == "__main__":
    main()
