"""Peak resident memory of loading and running one model, in a process of its own.

A fresh child per model keeps one candidate's allocations (and the arena ONNX
Runtime never returns to the OS) out of the next one's figure.

    python -m gate.run.memory SPEC.json   # the child side; prints one JSON line
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RUNS = 5


def _proc_status() -> dict[str, int] | None:
    """Current (VmRSS) and peak (VmHWM) resident bytes on Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark so imports do not count (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return int(psutil.Process().memory_info().peak_wset)
        except Exception:
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def measure_memory(
    model: Path,
    session: Mapping[str, Any],
    target: Mapping[str, Any],
    feed: Mapping[str, np.ndarray],
    timeout: float = 300,
) -> dict[str, float]:
    """``{"peak_memory_mb", "model_memory_mb"}``; raises RuntimeError when the child fails."""
    with tempfile.TemporaryDirectory(prefix="onnx-gate-memory-") as folder:
        feed_path = Path(folder) / "feed.npz"
        np.savez(feed_path, **dict(feed))
        spec = Path(folder) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "model": str(model),
                    "session": dict(session),
                    "target": dict(target),
                    "feed": str(feed_path),
                }
            )
        )
        completed = subprocess.run(
            [sys.executable, "-m", "gate.run.memory", str(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe exited {completed.returncode}: {tail}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _child(spec_path: str) -> None:
    import onnxruntime  # noqa: F401 - part of the baseline, not of the model's figure

    from gate.run.runtime import Target, make_session

    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["feed"], allow_pickle=False) as archive:
        feed = {key: archive[key] for key in archive.files}
    exact = _reset_peak() and _proc_status() is not None
    status = _proc_status() if exact else None
    baseline = status["VmRSS"] if status else _peak_rss_bytes()
    target = spec["target"]
    session = make_session(
        Path(spec["model"]),
        spec["session"],
        Target(
            target["provider"], target["options"], target["threads"], target.get("fallback", False)
        ),
    )
    for _ in range(RUNS):
        session.run(None, feed)
    status = _proc_status() if exact else None
    peak = status["VmHWM"] if status else _peak_rss_bytes()
    if peak is None or baseline is None:
        raise SystemExit("peak memory is not measurable on this platform")
    print(
        json.dumps(
            {
                "peak_memory_mb": peak / 1e6,
                "model_memory_mb": max(peak - baseline, 0) / 1e6,
                "memory_method": "VmHWM after reset" if exact else "ru_maxrss",
            }
        )
    )


if __name__ == "__main__":
    _child(sys.argv[1])
