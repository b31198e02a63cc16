"""report.html: the run as one self-contained page a person opens from a CI artifact.

The charts (accuracy against speedup for every candidate, with the Pareto front, the
chosen model and the budgets drawn; the latency distributions of the original and the
chosen model) are static SVG drawn by matplotlib (``pip install onnx-gate[html]``) and
inlined, so the page needs no network and runs no script: its Content-Security-Policy
forbids both. Without matplotlib the page is written with its tables and says how to get
the charts. Every string from the policy or the model is escaped.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gate import MEASURED_METRICS, Reporter, hookimpl, model_reports

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1100px;
 color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: 3px 8px; text-align: left;
 border-bottom: 1px solid #eee; vertical-align: top; } th { background: #f6f6f6; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; }
.pass { background: #1a7f37; } .fail { background: #cf222e; } .error { background: #8250df; }
.inconclusive, .pending { background: #9a6700; } .chosen { font-weight: bold; }
.chart svg { max-width: 100%; height: auto; } .note { color: #666; } code { font-size: .95em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "-"


def _finite(value: Any) -> bool:
    import math

    return isinstance(value, int | float) and math.isfinite(value)


def accuracy_axis(report: Mapping[str, Any]) -> tuple[str | None, bool, float | None]:
    """The accuracy metric the chart plots: the first error-level accuracy budget's (the one
    the decision and the tie order use), else cosine or top-1 agreement; whether higher is
    better; and that budget's threshold."""
    for row in report.get("budgets") or []:
        if row.get("metric") not in MEASURED_METRICS and row.get("level") == "error":
            return row["metric"], row.get("op") == ">=", row.get("threshold")
    metrics = [set(c.get("metrics") or {}) for c in report.get("candidates") or []]
    seen = set().union(*metrics) if metrics else set()
    for metric in ("top1_agreement", "cosine_similarity"):
        if metric in seen:
            return metric, True, None
    return None, True, None


def pareto_front(points: Sequence[tuple[str, float, float]], higher: bool) -> list[str]:
    """Names of the candidates no other is both faster than and at least as accurate as."""
    front = []
    for name, speed, accuracy in points:
        better = [
            (s, a)
            for n, s, a in points
            if n != name
            and s >= speed
            and (a >= accuracy if higher else a <= accuracy)
            and (s > speed or a != accuracy)
        ]
        if not better:
            front.append(name)
    return front


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # inline: no XML declaration or doctype
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)  # names no URLs


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "onnx-gate"})
    from matplotlib.figure import Figure

    return Figure


def trade_off_chart(report: Mapping[str, Any], figure_type: Any) -> str | None:
    metric, higher, threshold = accuracy_axis(report)
    candidates = report.get("candidates") or []
    points = [
        (c["name"], c["metrics"]["speedup"], c["metrics"][metric])
        for c in candidates
        if metric
        and _finite((c.get("metrics") or {}).get("speedup"))
        and _finite(c["metrics"].get(metric))
    ]
    if not points or metric is None:
        return None
    front = set(pareto_front(points, higher))
    figure = figure_type(figsize=(8, 4.8))
    axes = figure.subplots()
    status = {c["name"]: c.get("status") for c in candidates}
    chosen = next((c["name"] for c in candidates if c.get("chosen")), None)
    intervals = {c["name"]: (c.get("intervals") or {}).get("speedup") for c in candidates}
    for name, speed, accuracy in points:
        passed = status.get(name) == "passed" or name == "original"
        bounds = intervals.get(name) or []
        drawable = len(bounds) == 2 and all(_finite(b) for b in bounds) and name != "original"
        error = [[max(0.0, speed - bounds[0])], [max(0.0, bounds[1] - speed)]] if drawable else None
        axes.errorbar(
            [speed], [accuracy], xerr=error, fmt="o", markersize=6,
            color="#1a7f37" if passed else "#cf222e", ecolor="#bbb", elinewidth=1,
            markeredgecolor="black" if name in front else "none", markeredgewidth=1.2, zorder=3,
        )  # fmt: skip
        if name in front or name in ("original", chosen):  # the table names the rest
            axes.annotate(
                name, (speed, accuracy), textcoords="offset points", xytext=(5, 5), fontsize=7,
                parse_math=False,
            )  # fmt: skip
    ordered = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    axes.plot(
        [p[1] for p in ordered], [p[2] for p in ordered], color="black", linewidth=0.8,
        linestyle=":", label="Pareto front", zorder=2,
    )  # fmt: skip
    if chosen is not None:
        best = next((p for p in points if p[0] == chosen), None)
        if best is not None:
            axes.scatter(
                [best[1]], [best[2]], s=220, facecolors="none", edgecolors="#0969da",
                linewidths=2.2, label=f"chosen: {chosen}", zorder=4,
            )  # fmt: skip
    if _finite(threshold):
        axes.axhline(
            threshold, color="#cf222e", linestyle="--", linewidth=1, label=f"budget: {metric}"
        )
    for row in report.get("budgets") or []:
        if (
            row.get("metric") == "speedup"
            and row.get("level") != "off"
            and _finite(row.get("threshold"))
        ):
            axes.axvline(
                row["threshold"], color="#9a6700", linestyle="--", linewidth=1,
                label=f"budget: speedup ({row.get('level')})",
            )  # fmt: skip
    axes.axvline(1.0, color="#999", linewidth=0.8)
    axes.set_xlabel("speedup over the original (x)")
    axes.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return _svg(figure)


def latency_chart(report: Mapping[str, Any], figure_type: Any) -> str | None:
    candidates = report.get("candidates") or []
    shown = [c for c in candidates if c.get("name") == "original" or c.get("chosen")]
    curves = [
        (c["name"], (c.get("timing") or {}).get("latency_quantiles_ms"))
        for c in sorted(shown, key=lambda c: c.get("name") != "original")
    ]
    curves = [
        (name, values)
        for name, values in curves
        if isinstance(values, list) and len(values) > 1 and all(_finite(v) for v in values)
    ]
    if not curves:
        return None
    figure = figure_type(figsize=(8, 3.6))
    axes = figure.subplots()
    for (name, values), color in zip(curves, ("#6e7781", "#0969da"), strict=False):
        fractions = [index / (len(values) - 1) for index in range(len(values))]
        axes.step(values, fractions, where="post", color=color, label=name, linewidth=1.6)
    axes.set_xlabel("latency of one inference (ms)")
    axes.set_ylabel("share of runs at or below")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _svg(figure)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{_e(classes[i]) if i < len(classes) else ""}">'
        + "".join(f"<td>{cell}</td>" for cell in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _interval(candidate: Mapping[str, Any], metric: str) -> str:
    value = (candidate.get("metrics") or {}).get(metric)
    bounds = (candidate.get("intervals") or {}).get(metric)
    text = _number(value)
    if bounds and all(isinstance(b, int | float) for b in bounds):
        text += f" ({_number(bounds[0], 3)}-{_number(bounds[1], 3)})"
    return _e(text)


def _outcome(candidate: Mapping[str, Any]) -> str:
    outcome = candidate.get("outcome")
    if isinstance(outcome, list):
        outcome = "; ".join(str(item) for item in outcome)
    return _e(outcome or candidate.get("error") or "")


def render_model(report: Mapping[str, Any]) -> str:
    figure_type = _matplotlib()
    verdict = str(report.get("verdict", "error"))
    metric, _, _ = accuracy_axis(report)
    parts = [
        f"<h1>onnx-gate: {_e(report.get('name') or '')} "
        f'<span class="verdict {_e(verdict)}">{_e(verdict.upper())}</span></h1>',
        f"<p>Model <code>{_e((report.get('model') or {}).get('path', ''))}</code>; exit code "
        f"{_e(report.get('exit_code'))}; chosen: <b>{_e(report.get('chosen') or 'nothing')}</b>.</p>",
        f"<p>{_e(report.get('decision') or report.get('message') or '')}</p>",
        "<h2>Accuracy against speedup</h2>",
    ]
    charts = []
    if figure_type is None:
        parts.append(
            '<p class="note">The charts need matplotlib: <code>pip install onnx-gate[html]</code>.</p>'
        )
    else:
        charts = [trade_off_chart(report, figure_type), latency_chart(report, figure_type)]
    if charts and charts[0]:
        parts.append(f'<div class="chart" id="trade-off">{charts[0]}</div>')
        parts.append(
            '<p class="note">Each candidate at its speedup (grey: its 95% interval) and its '
            "accuracy metric; green passed every error-level budget, red did not; black edges "
            "mark the Pareto front (named, with the original and the chosen model); the dashed "
            "lines are budgets.</p>"
        )
    elif figure_type is not None:
        parts.append('<p class="note">No candidate was both timed and validated.</p>')
    parts.append("<h2>Latency: original and chosen</h2>")
    if len(charts) > 1 and charts[1]:
        parts.append(f'<div class="chart" id="latency">{charts[1]}</div>')
    candidates = report.get("candidates") or []
    rows = [
        [
            _e(c.get("name")), _e(c.get("status")), _interval(c, "speedup"),
            _interval(c, metric) if metric else "-", _interval(c, "latency_ms.p50"),
            _interval(c, "latency_ms.p95"), _e(_number((c.get("metrics") or {}).get("size_mb"))),
            _outcome(c),
        ]
        for c in candidates
    ]  # fmt: skip
    parts += [
        "<h2>Candidates and the decision log</h2>",
        _table(
            ["candidate", "status", "speedup (interval)", metric or "accuracy", "p50 ms",
             "p95 ms", "MB", "outcome"],
            rows, ["chosen" if c.get("chosen") else "" for c in candidates],
        ),
    ]  # fmt: skip
    final = report.get("final") or {}
    if final.get("bouts"):
        parts.append(f"<p><b>Head-to-head final:</b> {_e(final.get('why', ''))}</p>")
        parts.append(
            _table(
                ["holder", "challenger", "speedup", "winner", "why"],
                [
                    [
                        _e(b.get("holder")),
                        _e(b.get("challenger")),
                        _e(_number(b.get("speedup"))),
                        _e(b.get("winner")),
                        _e(b.get("why")),
                    ]
                    for b in final["bouts"]
                ],
            )
        )
    budgets = report.get("budgets") or []
    if budgets:
        parts.append("<h2>Budgets</h2>")
        parts.append(
            _table(
                ["budget", "status", "message"],
                [[_e(b.get("id")), _e(b.get("status")), _e(b.get("message"))] for b in budgets],
            )
        )
    parts.append(_search(report))
    parts.append(_testbed(report))
    notes = [*(report.get("warnings") or []), *(report.get("errors") or [])]
    if notes:
        parts.append("<h2>Warnings and errors</h2><ul>")
        parts += [f"<li>{_e(note)}</li>" for note in notes]
        parts.append("</ul>")
    return _page(f"onnx-gate: {report.get('name') or ''}", parts)


def _search(report: Mapping[str, Any]) -> str:
    search = report.get("search") or {}
    candidates = sorted(
        (c for c in report.get("candidates") or [] if (c.get("search") or {}).get("order")),
        key=lambda c: c["search"]["order"],
    )
    head = (
        f"<p>mode {_e(search.get('mode'))}, {_e(search.get('tried'))} tried in "
        f"{_e(search.get('seconds'))} s, stopped by {_e(search.get('stopped_by'))}.</p>"
    )
    rows = [
        [
            _e(c["search"]["order"]), _e(c.get("name")), _e(c["search"].get("origin")),
            _e(_number(c["search"].get("expected_speedup"), 3)),
            _e(c["search"].get("reason") or c["search"].get("parent") or ""),
        ]
        for c in candidates
    ]  # fmt: skip
    return (
        "<h2>Search order</h2>"
        + head
        + _table(["#", "candidate", "origin", "expected", "why tried"], rows)
    )


def _testbed(report: Mapping[str, Any]) -> str:
    testbed = report.get("testbed") or {}
    cpu = testbed.get("cpu") or {}
    rows = [
        ["CPU", cpu.get("model")], ["flags", " ".join(cpu.get("flags") or [])],
        ["cores (physical / usable)", f"{testbed.get('physical_cores')} / {testbed.get('usable_cores')}"],
        ["memory MB", testbed.get("memory_mb")], ["OS", testbed.get("os")],
        ["Python", testbed.get("python")], ["onnxruntime", testbed.get("onnxruntime")],
        ["provider", testbed.get("provider")], ["intra-op threads", testbed.get("intra_op_threads")],
    ]  # fmt: skip
    return "<h2>Testbed</h2>" + _table(["", ""], [[_e(k), _e(v)] for k, v in rows])


def render_suite(report: Mapping[str, Any], output_dir: Path) -> str:
    verdict = str(report.get("verdict", "error"))
    rows = []
    for model in report.get("models") or []:
        folder = str(model.get("dir") or "")
        link = (
            f'<a href="{_e(folder)}/report.html">{_e(model.get("name"))}</a>'
            if folder
            else _e(model.get("name"))
        )
        rows.append([link, _e(model.get("verdict")), _e(model.get("chosen") or "-")])
    parts = [
        f'<h1>onnx-gate: {len(rows)} models <span class="verdict {_e(verdict)}">'
        f"{_e(verdict.upper())}</span></h1>",
        _table(["model", "verdict", "chosen"], rows),
    ]
    return _page("onnx-gate suite", parts)


def _page(title: str, parts: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def _render(report: Mapping[str, Any], output_dir: Path) -> str:
    if report.get("kind") == "suite":
        return render_suite(report, output_dir)
    return render_model(model_reports(dict(report), output_dir)[0])


@hookimpl
def onnx_gate_reporters() -> list[Reporter]:
    return [
        Reporter.file(
            "html",
            "report.html",
            _render,
            "one self-contained page: the trade-off and latency charts, the decision log",
        )
    ]
