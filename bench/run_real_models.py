#!/usr/bin/env python3
"""Run onnx-gate end to end on real published models (fetched by fetch_models.py).

    python3 bench/fetch_models.py
    python3 bench/run_real_models.py [--only NAME ...] [--max-seconds 3]

For each model it writes a policy and synthetic calibration/validation data
(shapes and value ranges from bench/models.json) under bench/out/NAME/, runs
the gate through its library API, and prints one Markdown table row per
candidate for bench/RESULTS.md. Synthetic inputs mean the accuracy figures show
agreement with the original on random data, which is what the report says too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
DEFAULT_MODELS = [
    "magika",
    "ppocr_cls",
    "ppocr_rec",
    "silero_vad",
    "paraphrase_minilm_l3",
    "nudenet_320n",
]


def synthetic(inputs: list[dict[str, Any]], count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in inputs:
        low, high = spec["range"]
        shape = (count, *spec["shape"])
        if spec["dtype"].startswith("int"):
            arrays[spec["name"]] = rng.integers(
                int(low), max(int(high), int(low) + 1), size=shape
            ).astype(spec["dtype"])
        else:
            arrays[spec["name"]] = rng.uniform(low, high, size=shape).astype(spec["dtype"])
    return arrays


def write_case(name: str, entry: dict[str, Any], out: Path, max_seconds: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "calibration.npz", **synthetic(entry["inputs"], 16, seed=1))
    np.savez(out / "validation.npz", **synthetic(entry["inputs"], 16, seed=2))
    graph = {"level": "all"}
    policy = {
        "version": 1,
        "model": {"path": str((BENCH.parent / entry["path"]).resolve())},
        "inputs": {spec["name"]: {"shape": spec["shape"]} for spec in entry["inputs"]},
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
        "target": {"provider": "cpu", "usd_per_hour": 0.096},  # a 2-vCPU general-purpose instance
        "measure": {"max_seconds": max_seconds},
        "candidates": [
            {"name": "graph-disabled", "graph": {"level": "disabled"}},
            {"name": "graph-basic", "graph": {"level": "basic"}},
            {"name": "graph-extended", "graph": {"level": "extended"}},
            {
                "name": "dynamic-u8",
                "graph": graph,
                "quantize": {"plugin": "dynamic", "weight_type": "uint8"},
            },
            {
                "name": "dynamic-s8",
                "graph": graph,
                "quantize": {"plugin": "dynamic", "weight_type": "int8"},
            },
            {"name": "static-qdq", "graph": graph, "quantize": {"plugin": "static"}},
            {
                "name": "static-mm-conv",
                "graph": graph,
                "quantize": {
                    "plugin": "static",
                    "op_types_to_quantize": ["MatMul", "Conv", "Gemm"],
                },
            },
        ],
        "budgets": [
            {"metric": "cosine_similarity", "min": 0.99},
            # argmax agreement only means something for a classifier's scores
            *([{"metric": "top1_agreement", "min": 0.9}] if entry["kind"] == "classifier" else []),
            {"metric": "speedup", "min": 1.0, "level": "warn"},
        ],
    }
    path = out / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", action="append", help="model name from bench/models.json (repeatable)"
    )
    parser.add_argument("--max-seconds", type=float, default=3.0, help="timing time per candidate")
    args = parser.parse_args(argv)

    from gate.ci.suite import run_gate

    manifest = json.loads((BENCH / "models.json").read_text())["models"]
    names = args.only or DEFAULT_MODELS
    import onnxruntime

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}"
    )
    print()
    print(
        "| model | kind | candidate | status | speedup (95% interval) | p50 ms | MB | peak MB | cosine | top-1 | note |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    summary = []
    for name in names:
        entry = manifest[name]
        if not (BENCH.parent / entry["path"]).is_file():
            print(f"{name}: not fetched; run bench/fetch_models.py", file=sys.stderr)
            return 2
        out = BENCH / "out" / name
        policy = write_case(name, entry, out, args.max_seconds)
        started = time.perf_counter()
        result = run_gate(policy, out / "report")
        seconds = time.perf_counter() - started
        report = result.report
        for item in report["candidates"]:
            metrics = item["metrics"]
            note = item["error"] or "; ".join(item["reasons"]) or ""
            marker = " (chosen)" if item["chosen"] else ""
            interval = item.get("intervals", {}).get("speedup")
            speedup = fmt(metrics.get("speedup"), "{:.2f}x")
            if interval and interval[0] != interval[1]:
                speedup += f" ({interval[0]:.2f}-{interval[1]:.2f})"
            print(
                f"| {name} | {entry['kind']} | {item['name']}{marker} | {item['status']} | {speedup} | "
                f"{fmt(metrics.get('latency_ms.p50'), '{:.3f}')} | {fmt(metrics.get('size_mb'), '{:.1f}')} | "
                f"{fmt(metrics.get('peak_memory_mb'), '{:.0f}')} | {fmt(metrics.get('cosine_similarity'), '{:.4f}')} | "
                f"{fmt(metrics.get('top1_agreement'), '{:.2f}')} | {note[:120]} |"
            )
        summary.append((name, report["verdict"], report["chosen"], seconds, report["message"]))
        sys.stdout.flush()
    print()
    print("| model | verdict | chosen | gate wall time s |")
    print("|---|---|---|---:|")
    for name, verdict, chosen, seconds, message in summary:
        print(
            f"| {name} | {verdict} | {chosen or '-'} | {seconds:.1f} |"
            + ("" if chosen else f" {message}")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
