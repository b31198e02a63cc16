"""A third-party quantiser shipped as a pip package (examples/plugins/onnx-gate-weight-int8):
installed with pip, discovered through its entry point, searched, built, validated, timed and
reported like the built-ins - and held to the contract in gate.testing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import load_report

from gate.testing import QuantizerContract

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "onnx-gate-weight-int8"


@pytest.fixture(scope="module", autouse=True)
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install`` the example into a folder of its own and put it on sys.path: its
    entry point is then found exactly as in a user's environment, for this module only."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("onnx_gate_weight_int8", None)


def test_it_is_listed_with_its_distribution(gate_cli):
    listing = json.loads(gate_cli("plugins", "--json").stdout)
    item = next(item for item in listing if item["name"] == "weight-int8")
    assert (item["distribution"], item["version"]) == ("onnx-gate-weight-int8", "0.1.0")
    assert item["registers"] == {"quantizer": ["weight-int8"]}
    assert item["hooks"] == ["onnx_gate_quantizers"]


def test_candidates_auto_searches_it_and_the_report_shows_it(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {
            "data": {"validation": "validation.npz", "calibration": "calibration.npz"},
            "search": {"exclude": ["static", "fp16", "transformer", "ort"], "fallback": False},
        }
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code in (0, 1)
    report = load_report(out)
    entry = next(c for c in report["candidates"] if c["name"] == "weight-int8")
    assert entry["search"]["origin"] == "proposed"
    assert entry["recipe"]["quantize"]["plugin"] == "weight-int8"
    assert entry["status"] in ("passed", "rejected")
    original = next(c for c in report["candidates"] if c["name"] == "original")
    assert entry["metrics"]["size_mb"] < original["metrics"]["size_mb"] / 2  # int8 weights
    assert entry["metrics"]["cosine_similarity"] > 0.99
    assert any("stored as int8" in note for note in entry["notes"])


class TestWeightInt8Contract(QuantizerContract):
    quantizer = "weight-int8"
