"""Names of the metrics the gate itself measures. Validators add their own."""

from __future__ import annotations

MEASURED_METRICS: dict[str, str] = {
    "latency_ms.p50": "median latency of one inference, milliseconds",
    "latency_ms.p95": "95th-percentile latency, milliseconds",
    "latency_ms.p99": "99th-percentile latency, milliseconds",
    "latency_ms.mean": "mean latency, milliseconds",
    "throughput_per_s": "samples per second, one stream at the measured batch",
    "speedup": "how much faster than the original: median of paired (ABBA) latency ratios in one block",
    "runtime_speedup": "framework latency / ONNX Runtime latency, when the gate exported the "
    "model: paired blocks of the framework model against the original; a candidate's is the "
    "original's times its speedup",
    "size_mb": "model file size (with external data), 10^6 bytes",
    "usd_per_million": "instance USD per million samples, from target.usd_per_hour and throughput",
    "peak_memory_mb": "peak resident memory of a process that loads and runs the model, 10^6 bytes",
    "model_memory_mb": "peak_memory_mb less the same process's footprint before loading the model",
}

TIMING_METRICS = {
    "latency_ms.p50",
    "latency_ms.p95",
    "latency_ms.p99",
    "latency_ms.mean",
    "throughput_per_s",
    "speedup",
    "runtime_speedup",
    "usd_per_million",
}
"""Measured with a confidence interval; budgets on them may declare an aggregation."""

MEMORY_METRICS = {"peak_memory_mb", "model_memory_mb"}

NEEDS_PRICE = {"usd_per_million"}
