"""Names of the metrics the gate itself measures. Validators add their own."""

from __future__ import annotations

MEASURED_METRICS: dict[str, str] = {
    "latency_ms.p50": "median latency of one inference, milliseconds",
    "latency_ms.p95": "95th-percentile latency, milliseconds",
    "latency_ms.p99": "99th-percentile latency, milliseconds",
    "latency_ms.mean": "mean latency, milliseconds",
    "throughput_per_s": "samples per second, one stream at the measured batch",
    "speedup": "original median latency / candidate median latency, paired in one run",
    "size_mb": "model file size (with external data), 10^6 bytes",
    "usd_per_million": "instance USD per million samples, from target.usd_per_hour and throughput",
}

NEEDS_PRICE = {"usd_per_million"}
