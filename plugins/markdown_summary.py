"""summary.md: the report as a Markdown table for a CI job summary or a PR comment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import Reporter, bounded, explain_budget, hookimpl, model_reports

COLUMNS = [
    ("latency_ms.p50", "p50 ms", "{:.3f}"),
    ("latency_ms.p95", "p95 ms", "{:.3f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("throughput_per_s", "per s", "{:.1f}"),
    ("size_mb", "MB", "{:.2f}"),
    ("usd_per_million", "USD / M", "{:.4f}"),
    ("top1_agreement", "top-1 agree", "{:.3f}"),
    ("cosine_similarity", "cosine", "{:.4f}"),
    ("accuracy_drop", "acc. drop", "{:.4f}"),
]
ICONS = {"pass": "✅", "fail": "❌", "error": "💥", "inconclusive": "❔"}


def runtime_lines(report: Mapping[str, Any]) -> list[str]:
    """The first lever: how much ONNX Runtime buys over the framework, original and chosen."""
    runtime = (report.get("export") or {}).get("runtime") or {}
    if "runtime_speedup" not in runtime:
        return []
    low, high = _bounds(runtime.get("interval"))
    threads = runtime.get("threads")
    ort_threads = runtime.get("onnxruntime_threads", threads)
    same = (
        "same input and threads"
        if threads == ort_threads
        else (
            f"same input; {runtime['framework']} on {threads} threads, ONNX Runtime on {ort_threads}"
        )
    )
    text = (
        f"Runtime: ONNX Runtime runs the export {runtime['runtime_speedup']:.2f}x as fast as "
        f"`{runtime['framework']}` (95% interval {low}-{high}; "
        f"{runtime['framework_p50_ms']:.3g} ms against {runtime['onnxruntime_p50_ms']:.3g} ms, "
        f"{same})"
    )
    chosen = next((c for c in report.get("candidates") or [] if c.get("chosen")), None)
    figure = ((chosen or {}).get("metrics") or {}).get("runtime_speedup")
    if chosen is not None and chosen.get("name") != "original" and figure is not None:
        low, high = _bounds((chosen.get("intervals") or {}).get("runtime_speedup"))
        text += f"; the chosen `{chosen['name']}` {figure:.2f}x ({low}-{high})"
    return [text + "."]


def _bounds(interval: Any) -> tuple[str, str]:
    """An interval's bounds for a line; one the samples could not give shows as '?'."""
    bounds = list(interval) if isinstance(interval, list | tuple) and len(interval) == 2 else []
    return tuple(  # type: ignore[return-value]
        f"{b:.2f}" if isinstance(b, int | float) and b == b and abs(b) != float("inf") else "?"
        for b in (bounds or [None, None])
    )


def render(report: Mapping[str, Any]) -> str:
    verdict = report.get("verdict", "error")
    lines = [f"## {ICONS.get(verdict, '')} onnx-gate: {verdict.upper()}", ""]
    model = report.get("model") or {}
    if model:
        lines.append(f"Model `{model.get('path')}` ({model.get('size_mb', 0):.2f} MB)")
    export = report.get("export") or {}
    if export.get("framework_vs_onnx"):
        agreement = ", ".join(
            f"{key} {value:.4g}" for key, value in sorted(export["framework_vs_onnx"].items())
        )
        lines.append(
            f"Exported with `{export['exporter']}`; the export against the framework model: "
            f"{agreement}. Candidates below are judged against the export."
        )
    lines.extend(runtime_lines(report))
    chosen = report.get("chosen")
    lines.append(
        f"**Chosen:** `{chosen}` - {report.get('decision', '')}"
        if chosen
        else f"**Nothing chosen:** {report.get('message', '')}"
    )
    lines.append("")
    candidates = report.get("candidates") or []
    present = [
        c for c in COLUMNS if any(c[0] in (item.get("metrics") or {}) for item in candidates)
    ]
    if candidates:
        lines.append("| candidate | status | " + " | ".join(c[1] for c in present) + " |")
        lines.append("|---|---|" + "---:|" * len(present))
        for item in candidates:
            metrics = item.get("metrics") or {}
            cells = [fmt.format(metrics[key]) if key in metrics else "" for key, _, fmt in present]
            interval = (item.get("intervals") or {}).get("speedup")
            if (
                interval
                and "speedup" in [key for key, _, _ in present]
                and interval[0] != interval[1]
            ):
                index = [key for key, _, _ in present].index("speedup")
                low, high = ("?" if v is None else f"{v:.2f}" for v in interval)
                cells[index] += f" ({low}-{high})"
            name = f"**{item['name']}** ⭐" if item.get("chosen") else item["name"]
            lines.append(f"| {name} | {item['status']} | " + " | ".join(cells) + " |")
        lines.append("")
    problems = []
    for item in candidates:
        if item.get("status") == "skipped":
            problems.append(f"- `{item['name']}` skipped: {item['error']}")
        elif item.get("error"):
            problems.append(f"- `{item['name']}` failed to {item.get('stage')}: {item['error']}")
        for result in item.get("budgets") or []:
            if not result["passed"] and result["level"] != "off":
                problems.append(f"- `{item['name']}` {result['level']}: {explain_budget(result)}")
    if problems:
        lines += [
            "<details><summary>Budgets missed and failures</summary>",
            "",
            *problems,
            "",
            "</details>",
            "",
        ]
    if candidates:
        lines += [
            "_Latencies come from each candidate's own timing block; compare candidates by "
            "speedup, which pairs each with the original in that block (95% interval in brackets)._",
            "",
        ]
    if report.get("recommendation"):
        lines += [f"**Recommendation:** {report['recommendation']}", ""]
    lines += _search(report.get("search") or {})
    lines += _final(report.get("final"))
    log = [f"- `{item['name']}`: {item['outcome']}" for item in candidates if item.get("outcome")]
    if log:
        lines += ["<details><summary>Decision log</summary>", "", *log, "", "</details>", ""]
    for warning in report.get("warnings") or []:
        lines.append(bounded(f"> ⚠️ {warning}"))
    for error in report.get("errors") or []:
        lines.append(bounded(f"> 💥 {error}"))
    validation = report.get("validation") or {}
    if validation.get("synthetic_inputs"):
        lines.append("")
        lines.append("_Accuracy metrics were measured on synthetic inputs._")
    # One line per problem, bounded: a decision over 1,000 budgets is not one line to read.
    return "\n".join(bounded(line) for line in lines).rstrip() + "\n"


STOPPED = {
    "exhausted": "every candidate was tried",
    "max_trials": "search.max_trials reached",
    "max_seconds": "search.max_seconds reached",
    "running": "interrupted",
}


def _search(search: Mapping[str, Any]) -> list[str]:
    """What the search tried and why it stopped, then its log in a fold."""
    if not search:
        return []
    mode = "candidates: auto" if search["mode"] == "auto" else "the policy's candidates"
    fallbacks = (
        f", {search['fallbacks']} of them accuracy fallbacks" if search.get("fallbacks") else ""
    )
    lines = [
        f"**Search** ({mode}): {search['tried']} candidate(s) tried{fallbacks} in "
        f"{search.get('seconds', 0):.0f} s; {STOPPED.get(search['stopped_by'], search['stopped_by'])}.",
        "",
    ]
    details = [f"- `{item['name']}` not tried: {item['not_tried']}" for item in search["not_tried"]]
    details += [
        f"- `{item['name']}` not proposed ({item['plugin'] or 'search'}): {item['reason']}"
        for item in search["declined"]
    ]
    details += [f"- {line}" for line in search.get("log") or []]
    if details:
        lines += ["<details><summary>Search log</summary>", "", *details, "", "</details>", ""]
    return lines


STATUS_ICONS = {"fail": "❌", "not_measured": "❌", "inconclusive": "❔", "waived": "🏳️"}


def render_suite(report: Mapping[str, Any], output_dir: Path) -> str:
    """Several models: one line each, the budgets that did not pass, then each model's
    own summary folded."""
    verdict = report.get("verdict", "error")
    lines = [f"## {ICONS.get(verdict, '')} onnx-gate: {verdict.upper()}", ""]
    shard = report.get("shard")
    where = f" (shard {shard['index']}/{shard['count']})" if shard else ""
    lines += [f"{report.get('message', '')}{where}", ""]
    models = model_reports(dict(report), output_dir)
    if models:
        lines += [
            "| model | verdict | chosen | speedup | budgets failed | waived |",
            "|---|---|---|---:|---:|---:|",
        ]
        for model in models:
            chosen = model.get("chosen")
            entry = next((c for c in model.get("candidates") or [] if c.get("name") == chosen), {})
            speedup = (entry.get("metrics") or {}).get("speedup")
            counts = model.get("counts") or {}
            lines.append(
                f"| {model.get('name')} | {ICONS.get(model.get('verdict', ''), '')} "
                f"{model.get('verdict')} | {f'`{chosen}`' if chosen else '-'} | "
                f"{'' if speedup is None else f'{speedup:.2f}x'} | {counts.get('fail', 0)} | "
                f"{counts.get('waived', 0)} |"
            )
        lines.append("")
    missed = [
        f"- {STATUS_ICONS[row['status']]} `{row['model']}` {row['level']}: {row['message']}"
        for row in report.get("budgets") or []
        if row["status"] in STATUS_ICONS and row["level"] != "off"
    ]
    lines += missed + ([""] if missed else [])
    for model in models:
        lines += [
            f"<details><summary>{model.get('name')}: {model.get('verdict')}</summary>",
            "",
            render(model).replace("\n## ", "\n#### ").replace("## ", "#### ", 1),
            "</details>",
            "",
        ]
    prefixes = tuple(f"{model.get('name')}: " for model in models)
    own = [w for w in report.get("warnings") or [] if not prefixes or not w.startswith(prefixes)]
    lines += [bounded(f"> ⚠️ {warning}") for warning in own]  # each model's own are in its fold
    lines += [bounded(f"> 💥 {error}") for error in report.get("errors") or []]
    return "\n".join(bounded(line) for line in lines).rstrip() + "\n"


def _render(report: Mapping[str, Any], output_dir: Path) -> str:
    return render_suite(report, output_dir) if report.get("kind") == "suite" else render(report)


@hookimpl
def onnx_gate_reporters() -> list[Reporter]:
    return [Reporter.file("markdown", "summary.md", _render, "a Markdown table for CI summaries")]


def _final(final: dict[str, Any] | None) -> list[str]:
    """The head-to-head final: each bout in one line, and the one who kept the place."""
    if not final or not final.get("bouts"):
        return []
    bouts = [
        f"- `{bout['challenger']}` against `{bout['holder']}`: `{bout['winner']}`, {bout['why']}"
        for bout in final["bouts"]
    ]
    return [
        f"**Head-to-head final:** `{final['chosen']}` ({final['why']})",
        "",
        "<details><summary>Bouts (paired blocks, challenger's speedup over the holder)</summary>",
        "",
        *bouts,
        "",
        "</details>",
        "",
    ]
