"""The wheel: no generic top-level names, schemas and demo inside, plugins as entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_contents(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("onnx_gate-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert top_level == {"gate", "gate_plugins"}
    for needed in (
        "gate/schemas/policy.schema.json",
        "gate/schemas/report.schema.json",
        "gate/demo/policy.yaml",
        "gate/demo/classifier.onnx",
        "gate/demo/validation.npz",
        "gate_plugins/static_quant.py",
    ):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[onnx_gate]" in text and "static = gate_plugins.static_quant" in text
    assert "onnx-gate = gate.cli:main" in text
