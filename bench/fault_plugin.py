"""A bench-only quantiser that misbehaves on purpose, for bench/robustness.py.

Loaded with ``ONNX_GATE_PLUGINS=fault_plugin`` and ``PYTHONPATH=bench``. A recipe
``quantize: {plugin: fault, mode: MODE}`` picks the fault (``ONNX_GATE_FAULT``
when the recipe gives none):

    ok          copy the model unchanged (a well-behaved quantiser)
    exception   raise RuntimeError
    segfault    dereference NULL through ctypes (a real SIGSEGV)
    abort       os.abort() (SIGABRT, as a failed C++ assertion does)
    sigkill     SIGKILL itself (what the kernel's OOM killer does)
    oom         allocate and touch memory until MemoryError
    hang        sleep forever
    hang-child  start a grandchild that sleeps forever, then sleep forever
    spin        burn CPU forever, ignoring SIGTERM and SIGINT
    exit0       os._exit(0) without writing anything
    garbage     write random bytes as the quantised model
    no-output   return without writing the destination
    stderr-flood  write 20 MB to stderr without a newline, then exit 1

Every process it starts appends its pid to ``ONNX_GATE_FAULT_PIDFILE`` (when set),
so the harness can check nothing outlives the gate. ``ONNX_GATE_FAULT_IMPORT=1``
makes importing this module fail; ``ONNX_GATE_FAULT_REGISTER=1`` makes the
registration hook raise.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate import BuildContext, Quantizer, hookimpl

MODES = (
    "ok",
    "exception",
    "segfault",
    "abort",
    "sigkill",
    "oom",
    "hang",
    "hang-child",
    "spin",
    "exit0",
    "garbage",
    "no-output",
    "stderr-flood",
)

if os.environ.get("ONNX_GATE_FAULT_IMPORT") == "1":
    raise ImportError("fault_plugin: injected import failure (ONNX_GATE_FAULT_IMPORT=1)")


def _record_pid(pid: int) -> None:
    path = os.environ.get("ONNX_GATE_FAULT_PIDFILE")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{pid}\n")


def _sleep_forever() -> None:
    while True:
        time.sleep(1)


def _oom() -> None:
    # Never let a harness mistake eat the host: without a cap from build.memory_mb, set one.
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.RLIM_INFINITY))
    blocks = []
    while True:
        block = bytearray(64 << 20)
        block[::4096] = b"\1" * len(block[::4096])  # touch every page: real memory, not promises
        blocks.append(block)


def _quantize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> None:
    mode = options.get("mode") or os.environ.get("ONNX_GATE_FAULT", "exception")
    _record_pid(os.getpid())
    if mode == "ok":
        shutil.copyfile(source, destination)
    elif mode == "exception":
        raise RuntimeError("fault_plugin: injected exception")
    elif mode == "segfault":
        ctypes.string_at(0)
    elif mode == "abort":
        os.abort()
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "oom":
        _oom()
    elif mode == "hang":
        _sleep_forever()
    elif mode == "hang-child":
        child = subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _record_pid(child.pid)
        _sleep_forever()
    elif mode == "spin":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            pass
    elif mode == "exit0":
        os._exit(0)
    elif mode == "garbage":
        destination.write_bytes(os.urandom(4096))
    elif mode == "no-output":
        return
    elif mode == "stderr-flood":
        sys.stderr.write("x" * (20 << 20))
        sys.stderr.flush()
        os._exit(1)
    else:
        raise ValueError(f"fault_plugin: unknown mode {mode!r}")


@hookimpl
def onnx_gate_quantizers() -> list[Quantizer]:
    if os.environ.get("ONNX_GATE_FAULT_REGISTER") == "1":
        raise RuntimeError("fault_plugin: injected registration failure")
    return [
        Quantizer(
            name="fault",
            quantize=_quantize,
            description="bench only: crashes, hangs or misbehaves on purpose",
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {"mode": {"enum": list(MODES)}},
            },
        )
    ]
