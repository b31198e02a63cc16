"""Execution-provider plugins: availability, option mapping, the clear error when one is
missing, target.fallback, and a session ONNX Runtime silently puts on the CPU.

GPU providers cannot run here: what needs no GPU is tested - and the fallback path runs
for real on the CPU."""

from __future__ import annotations

import pytest
from conftest import load_report
from plugin_kit import use_plugin_modules, write_module

from gate.host.manager import get_host

FAST = {"candidates": [{"name": "dyn", "quantize": {"plugin": "dynamic"}}]}
GPU_PROVIDERS = {
    "cuda": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "tensorrt": ("TensorrtExecutionProvider", "onnxruntime-gpu"),
    "openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "directml": ("DmlExecutionProvider", "onnxruntime-directml"),
    "coreml": ("CoreMLExecutionProvider", "onnxruntime"),
}


def test_every_provider_is_a_plugin_that_knows_its_package_and_availability():
    import onnxruntime

    host = get_host()
    here = set(onnxruntime.get_available_providers())
    for name, (ort_name, package) in {**GPU_PROVIDERS, "cpu": ("CPUExecutionProvider", "onnxruntime")}.items():  # fmt: skip
        record = host.get("execution_provider", name)
        assert (record.ort_name, record.package) == (ort_name, package)
        assert record.is_available() == (ort_name in here)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("cuda", {"device_id": 1, "gpu_mem_limit_mb": 512, "cudnn_conv_algo_search": "HEURISTIC"},
         {"device_id": 1, "gpu_mem_limit": 512 * 1024 * 1024, "cudnn_conv_algo_search": "HEURISTIC"}),
        ("tensorrt", {"fp16": True, "workspace_mb": 64, "engine_cache_dir": "/cache"},
         {"trt_fp16_enable": True, "trt_max_workspace_size": 64 * 1024 * 1024,
          "trt_engine_cache_enable": True, "trt_engine_cache_path": "/cache"}),
        ("openvino", {"device_type": "GPU.1", "precision": "FP16", "num_of_threads": 4},
         {"device_type": "GPU.1", "precision": "FP16", "num_of_threads": "4"}),
        ("directml", {"device_id": 0}, {"device_id": 0}),
        ("coreml", {"compute_units": "CPUAndNeuralEngine", "require_static_shapes": True},
         {"MLComputeUnits": "CPUAndNeuralEngine", "RequireStaticInputShapes": "1"}),
        # raw options reach ONNX Runtime unchanged, and win over the friendly ones
        ("cuda", {"device_id": 1, "ort": {"device_id": 3, "tunable_op_enable": "1"}},
         {"device_id": 3, "tunable_op_enable": "1"}),
    ],
)  # fmt: skip
def test_policy_options_map_to_onnxruntimes(name, options, expected):
    record = get_host().get("execution_provider", name)
    assert record.provider_options(options) == expected


def test_a_missing_provider_is_exit_3_naming_its_package(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy({**FAST, "target": {"provider": "cuda"}})
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 3
    report = load_report(out)
    assert report["verdict"] == "error"
    [error] = report["errors"]
    assert error.startswith(
        "execution provider 'cuda' (CUDAExecutionProvider) is not available here: it needs the "
        "package onnxruntime-gpu (pip install onnxruntime-gpu"
    )
    assert error.endswith("or set target.fallback: true to time on the CPU")
    assert "Traceback" not in result.stdout + result.stderr
    assert not (out / "model.onnx").exists()


def test_fallback_lets_the_cpu_stand_in_and_says_so(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy(
        {**FAST, "target": {"provider": "openvino", "fallback": True,
                            "provider_options": {"device_type": "NPU"}}}
    )  # fmt: skip
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0
    report = load_report(out)
    target = report["target"]
    assert (target["provider"], target["requested_provider"]) == ("cpu", "openvino")
    assert target["ort_provider"] == "CPUExecutionProvider" and target["provider_options"] == {}
    assert "onnxruntime-openvino" in target["fallback"]["reason"]
    assert any("timings say nothing about the target" in w for w in report["warnings"])
    assert report["testbed"]["provider"] == "CPUExecutionProvider"  # what compare matches on


def test_provider_options_are_checked_against_the_plugins_schema(classifier, gate_cli):
    policy = classifier.write_policy(
        {"target": {"provider": "cuda", "provider_options": {"gpu_mem_limit": 5, "device_id": -1}}}
    )
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "target.provider_options: Additional properties are not allowed ('gpu_mem_limit'" in (
        result.stderr
    )
    assert "target.provider_options.device_id: -1 is less than the minimum of 0" in result.stderr
    assert "policy.yaml:" in result.stderr


FAKE_GPU = """
from gate import ExecutionProvider, hookimpl

@hookimpl
def onnx_gate_execution_providers():
    # Fault injection: a provider that claims to be there; this onnxruntime has no CUDA,
    # so it puts every session on the CPU - as a CUDA build without cuDNN would.
    return [ExecutionProvider("fake-gpu", "CUDAExecutionProvider", "fake-gpu-package",
                              is_available=lambda: True)]
"""


def test_a_session_onnxruntime_silently_puts_on_the_cpu_is_caught(
    classifier, gate_cli, tmp_path, monkeypatch
):
    write_module(tmp_path, "fake_gpu", FAKE_GPU)
    use_plugin_modules(monkeypatch, tmp_path, "fake_gpu")
    policy = classifier.write_policy({**FAST, "target": {"provider": "fake-gpu"}})
    result = gate_cli("run", policy, "-o", tmp_path / "strict", "-q")
    assert result.exit_code == 3
    message = load_report(tmp_path / "strict")["message"]
    assert "put the session on CPUExecutionProvider, not CUDAExecutionProvider" in message
    assert "target.fallback: true" in message

    policy = classifier.write_policy({**FAST, "target": {"provider": "fake-gpu", "fallback": True}})
    assert gate_cli("run", policy, "-o", tmp_path / "lenient", "-q").exit_code == 0
