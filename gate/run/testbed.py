"""The testbed fingerprint: what a measurement was taken on.

Speedups measured on one machine say little about another (outputs and
speed differ with and without VNNI, say), so every report carries this and a
comparison of reports from different testbeds warns.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

# CPU features that change which int8/fp16 kernels ONNX Runtime can use.
FLAGS_OF_INTEREST = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimddp", "asimdhp", "fphp", "sve", "i8mm",
)  # fmt: skip


@cache
def _cpu() -> dict[str, Any]:
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    except Exception:  # py-cpuinfo can fail in odd sandboxes; the fingerprint still has the rest
        info = {}
    flags = set(info.get("flags", []))
    return {
        "model": info.get("brand_raw") or platform.processor() or platform.machine(),
        "arch": info.get("arch_string_raw") or platform.machine(),
        "flags": sorted(flag for flag in FLAGS_OF_INTEREST if flag in flags),
        "vnni": bool(flags & {"avx512_vnni", "avx512vnni", "avx_vnni", "asimddp"}),
    }


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def physical_cores() -> int:
    """Physical cores this process may use (a container's CPU affinity counts)."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except Exception:
        count = None
    count = count or os.cpu_count() or 1
    usable = _usable_cores()
    return min(count, usable) if usable else count


def memory_limit_bytes() -> int | None:
    """The memory this process may use: the machine's, or its container's cgroup limit
    when lower (a runner pod sees the host's memory in psutil, not its own limit)."""
    limits = []
    try:
        import psutil

        limits.append(int(psutil.virtual_memory().total))
    except Exception:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max", or v1's huge "no limit"
            limits.append(int(text))
    return min(limits) if limits else None


def _memory_mb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 1e6)
    except Exception:
        return None


def fingerprint(target: dict[str, Any] | None = None) -> dict[str, Any]:
    """CPU, memory, OS, Python, ONNX Runtime build, provider and threads."""
    import onnxruntime

    target = target or {}
    return {
        "cpu": _cpu(),
        "physical_cores": physical_cores(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "memory_mb": _memory_mb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_build": onnxruntime.get_build_info()
        if hasattr(onnxruntime, "get_build_info")
        else None,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "provider": target.get("ort_provider"),
        "intra_op_threads": target.get("intra_op_threads"),
        "inter_op_threads": target.get("inter_op_threads"),
        "allow_spinning": target.get("allow_spinning"),
    }


COMPARED = (
    ("cpu", "model"), ("cpu", "flags"), ("physical_cores",), ("usable_cores",), ("memory_mb",),
    ("os",), ("python",), ("onnxruntime",), ("onnxruntime_build",), ("provider",),
    ("intra_op_threads",), ("inter_op_threads",), ("allow_spinning",),
)  # fmt: skip


def differences(base: dict[str, Any] | None, head: dict[str, Any] | None) -> list[str]:
    """Human-readable differences between two fingerprints; empty when comparable."""
    if not base or not head:
        return ["one of the reports has no testbed fingerprint"]
    found = []
    for path in COMPARED:
        a, b = base, head
        for key in path:
            a = a.get(key) if isinstance(a, dict) else None
            b = b.get(key) if isinstance(b, dict) else None
        if a != b:
            found.append(f"{'.'.join(path)}: {a} -> {b}")
    return found
