#!/usr/bin/env python3
"""Are verdicts trustworthy on this noisy machine? (issue 3)

    python3 bench/fetch_models.py --only ppocr_cls
    python3 bench/verdicts.py [--runs 30]

For the bundled demo model and one real published model (ppocr_cls):
- A/A: RUNS separate `onnx-gate run` processes timing the model against an
  identical copy, budget `speedup min 0.95`: count pass / fail / inconclusive.
- Detection: RUNS runs against a copy made truly ~15% slower by the bench-only
  `slowdown` plugin (real extra work, outputs unchanged), same budget.
- How slow the slower copy really is, measured independently: separate
  processes, each timing a bare `session.run` loop, alternated.
- The harness's own cost per inference against a bare `session.run` loop.
Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
GATE = [sys.executable, "-m", "gate"]
BUDGET = {"metric": "speedup", "min": 0.95}
# Side work calibrated on this machine to cost about 15% of each model's latency.
CASES = {
    "demo (bundled MLP, ~0.06 ms)": (
        ROOT / "gate/demo/classifier.onnx",
        {"x": [1, 256]},
        {"size": 160, "extra": 1},
    ),
    "ppocr_cls (PyPI rapidocr-onnxruntime, ~1.1 ms)": (
        BENCH / ".models/ppocr_cls/model.onnx",
        {"x": [1, 3, 48, 192]},
        {"size": 512, "extra": 3},
    ),
}


def write_policy(folder: Path, model: Path, shape: dict, candidate: dict) -> Path:
    policy = {
        "version": 1,
        "model": {"path": str(model)},
        "inputs": {name: {"shape": dims} for name, dims in shape.items()},
        "candidates": [candidate],
        "budgets": [BUDGET],
        "measure": {"memory": False},
    }
    path = folder / f"{candidate['name']}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def gate_runs(policy: Path, runs: int, env: dict) -> list[dict]:
    results = []
    for index in range(runs):
        out = policy.parent / f"out-{policy.stem}-{index}"
        started = time.perf_counter()
        subprocess.run(
            [*GATE, "run", str(policy), "-o", str(out), "-q"],
            env=env,
            capture_output=True,
            check=False,
        )
        wall = time.perf_counter() - started
        report = json.loads((out / "report.json").read_text())
        item = next(c for c in report["candidates"] if c["name"] != "original")
        budget = item["budgets"][0] if item["budgets"] else {"decision": item["status"]}
        results.append(
            {
                "decision": budget["decision"],
                "speedup": item["metrics"].get("speedup"),
                "interval": item["intervals"].get("speedup"),
                "block_s": (item["timing"] or {}).get("seconds"),
                "stopped_by": (item["timing"] or {}).get("stopped_by"),
                "wall_s": wall,
            }
        )
    return results


def summarise(results: list[dict]) -> str:
    decisions = [r["decision"] for r in results]
    speedups = np.array([r["speedup"] for r in results if r["speedup"] is not None])
    widths = np.array([r["interval"][1] - r["interval"][0] for r in results if r["interval"]])
    blocks = np.array([r["block_s"] for r in results if r["block_s"] is not None])
    walls = np.array([r["wall_s"] for r in results])
    stopped = {
        key: sum(r["stopped_by"] == key for r in results)
        for key in ("decided", "max_seconds", "max_runs")
    }
    return (
        f"{decisions.count('pass')} | {decisions.count('fail')} | {decisions.count('inconclusive')} | "
        f"{np.median(speedups):.3f} ({speedups.min():.3f}-{speedups.max():.3f}) | {np.median(widths):.3f} | "
        f"{np.median(blocks):.2f} | {np.median(walls):.1f} | {stopped['decided']}/{len(results)}"
    )


PROBE = """
import sys, time, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
shape = [int(d) for d in sys.argv[2].split(",")]
feed = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
for _ in range(20): s.run(None, feed)
times = []; end = time.perf_counter() + 1.5
while time.perf_counter() < end:
    t = time.perf_counter_ns(); s.run(None, feed); times.append(time.perf_counter_ns() - t)
print(np.median(times) / 1e6)
"""


def independent_ratio(original: Path, slower: Path, shape: list[int], rounds: int = 8) -> float:
    """Median latency of separate processes, alternated; original / slower."""
    medians: dict[str, list[float]] = {"original": [], "slower": []}
    for index in range(rounds):
        order = [("original", original), ("slower", slower)]
        for name, path in order if index % 2 == 0 else order[::-1]:
            out = subprocess.run(
                [sys.executable, "-c", PROBE, str(path), ",".join(map(str, shape))],
                capture_output=True,
                text=True,
                check=True,
            )
            medians[name].append(float(out.stdout))
    return float(np.median(medians["original"]) / np.median(medians["slower"]))


def harness_overhead(
    model: Path, shape: list[int], blocks: int = 20, per_block: int = 500
) -> dict[str, float]:
    """Per-inference cost of the gate's timed call against a bare session.run loop (same session)."""
    import onnxruntime as ort

    from gate.run.measure import BoundRunner, timer_overhead_ns

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    feed = {
        session.get_inputs()[0].name: np.random.default_rng(0)
        .standard_normal(shape)
        .astype(np.float32)
    }
    runner = BoundRunner(session, feed)
    bare, harness, harness_sum = [], [], []
    for index in range(blocks):

        def bare_block() -> None:
            start = time.perf_counter_ns()
            for _ in range(per_block):
                session.run(None, feed)
            bare.append((time.perf_counter_ns() - start) / per_block)

        def harness_block() -> None:
            start = time.perf_counter_ns()
            total = 0.0
            for _ in range(per_block):
                total += runner.timed_run()
            harness.append((time.perf_counter_ns() - start) / per_block)
            harness_sum.append(total * 1e6 / per_block)

        for block in (bare_block, harness_block) if index % 2 == 0 else (harness_block, bare_block):
            block()
    return {
        "bare_us": float(np.median(bare)) / 1e3,
        "harness_wall_us": float(np.median(harness)) / 1e3,
        "harness_reported_us": float(np.median(harness_sum)) / 1e3,
        "timer_overhead_ns": timer_overhead_ns(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    import onnxruntime

    env = dict(
        os.environ,
        PYTHONPATH=f"{BENCH}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        ONNX_GATE_PLUGINS="slowdown_plugin",
    )
    print(
        f"{platform.machine()}, {os.cpu_count()} logical cores, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}; {args.runs} runs each; budget `speedup min 0.95`; default `measure` settings (max_seconds 4, confidence 0.95)\n"
    )
    print(
        "| model | comparison | pass | fail | inconclusive | median speedup (range) | median interval width | median block s | median run wall s | decided before cap |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    extra_rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-gate-bench-") as scratch:
        for label, (model, shape, slowdown) in CASES.items():
            if not model.is_file():
                print(f"{model} missing: run bench/fetch_models.py", file=sys.stderr)
                return 2
            folder = Path(scratch) / model.parent.name
            folder.mkdir()
            same = write_policy(folder, model, shape, {"name": "same", "graph": {"level": "all"}})
            slower = write_policy(
                folder,
                model,
                shape,
                {"name": "slower", "graph": {"plugin": "slowdown", **slowdown}},
            )
            print(
                f"| {label} | A/A (identical copy) | {summarise(gate_runs(same, args.runs, env))} |",
                flush=True,
            )
            print(
                f"| {label} | 15% slower copy | {summarise(gate_runs(slower, args.runs, env))} |",
                flush=True,
            )
            # Build the slower model once more, keep it, and measure it independently.
            kept = folder / "kept"
            subprocess.run(
                [*GATE, "run", str(slower), "-o", str(kept), "-q", "--keep-candidates"],
                env=env,
                capture_output=True,
                check=False,
            )
            ratio = independent_ratio(
                model, kept / "candidates" / "slower.onnx", next(iter(shape.values()))
            )
            overhead = harness_overhead(model, next(iter(shape.values())))
            extra_rows.append((label, ratio, overhead))
    print(
        "\n| model | slower copy, independent separate-process ratio | bare session.run µs | gate harness µs (wall) | of which reported as model time µs | timer overhead ns |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, ratio, o in extra_rows:
        print(
            f"| {label} | {ratio:.3f} | {o['bare_us']:.1f} | {o['harness_wall_us']:.1f} | {o['harness_reported_us']:.1f} | {o['timer_overhead_ns']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
