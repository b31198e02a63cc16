"""The plugin host: entry points, third-party plugins, clashes and broken plugins."""

from __future__ import annotations

import json

from conftest import candidate, load_report
from plugin_kit import install_fake_distribution, use_plugin_modules, write_module

from gate.host.manager import KINDS, get_host

REVERSING_QUANTIZER = """
    from gate import Quantizer, copy_model, hookimpl

    def quantize(source, destination, options, context):
        copy_model(source, destination)
        context.note(f"identity quantiser, strength {options.get('strength', 1)}")

    @hookimpl
    def onnx_gate_quantizers():
        return [Quantizer(
            name="identity",
            quantize=quantize,
            options_schema={"type": "object", "additionalProperties": False,
                            "properties": {"strength": {"type": "integer"}}},
        )]
"""


def test_builtins_arrive_through_entry_points(gate_cli):
    result = gate_cli("plugins", "--json")
    assert result.exit_code == 0
    listing = {item["name"]: item for item in json.loads(result.stdout)}
    for name in (
        "onnx-file",
        "cpu",
        "ort-graph",
        "dynamic",
        "static",
        "fp16",
        "agreement",
        "labelled-accuracy",
        "markdown",
    ):
        assert listing[name]["source"] == "entry point"
        assert listing[name]["distribution"] == "onnx-gate"
    assert listing["static"]["kinds"] == ["quantizer"]
    assert listing["static"]["hooks"] == ["onnx_gate_quantizers"]
    assert listing["cpu"]["registers"] == {"execution_provider": ["cpu"]}
    kinds = {kind for item in listing.values() for kind in item["kinds"]}
    assert kinds == set(KINDS)
    text = gate_cli("plugins").stdout
    assert "static" in text and "quantizer: static" in text


def test_third_party_quantiser_is_discovered_gated_and_reported(
    classifier, gate_cli, tmp_path, monkeypatch
):
    install_fake_distribution(
        monkeypatch,
        tmp_path / "site",
        "onnx-gate-identity",
        {"identity": "identity_plugin"},
        {"identity_plugin": REVERSING_QUANTIZER},
    )
    listing = {i["name"]: i for i in json.loads(gate_cli("plugins", "--json").stdout)}
    assert listing["identity"]["distribution"] == "onnx-gate-identity"
    assert listing["identity"]["version"] == "1.2.3"

    bad = classifier.write_policy(
        {"candidates": [{"name": "id", "quantize": {"plugin": "identity", "strength": "max"}}]}
    )
    assert (
        "candidates[0].quantize.strength: 'max' is not of type 'integer'"
        in gate_cli("check", bad).stderr
    )

    policy = classifier.write_policy(
        {"candidates": [{"name": "id", "quantize": {"plugin": "identity", "strength": 3}}]}
    )
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    item = candidate(load_report(out), "id")
    assert item["status"] == "passed"
    assert item["notes"] == ["identity quantiser, strength 3"]
    assert item["metrics"]["max_abs_diff"] == 0.0


def test_a_quantiser_that_raises_fails_only_its_candidate(
    classifier, gate_cli, tmp_path, monkeypatch
):
    write_module(
        tmp_path,
        "boom_plugin",
        """
        from gate import Quantizer, hookimpl

        def quantize(source, destination, options, context):
            raise RuntimeError("simulated quantiser crash")

        @hookimpl
        def onnx_gate_quantizers():
            return [Quantizer(name="boom", quantize=quantize)]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "boom_plugin")
    policy = classifier.write_policy(
        {
            "candidates": [
                {"name": "explodes", "quantize": {"plugin": "boom"}},
                {"name": "fine", "graph": {"level": "basic"}},
            ]
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 0
    report = load_report(out)
    exploded = candidate(report, "explodes")
    assert exploded["status"] == "failed" and exploded["stage"] == "build"
    assert exploded["error"] == (
        "quantizer 'boom' (plugin 'boom_plugin') failed to quantize: RuntimeError: simulated quantiser crash"
    )
    assert candidate(report, "fine")["status"] == "passed"
    assert "explodes: failed to build: quantizer 'boom' (plugin 'boom_plugin')" in result.stdout
    assert "failed to build" in (out / "summary.md").read_text()


def test_a_validator_that_raises_fails_the_candidate_at_validate(
    classifier, gate_cli, tmp_path, monkeypatch
):
    write_module(
        tmp_path,
        "picky_plugin",
        """
        from gate import Validator, hookimpl

        def validate(context):
            raise ValueError("cannot judge this output")

        @hookimpl
        def onnx_gate_validators():
            return [Validator(name="picky", metrics={"pickiness": "how picky"}, validate=validate)]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "picky_plugin")
    policy = classifier.write_policy(
        {
            "candidates": [{"name": "b", "graph": {"level": "basic"}}],
            "validation": {"validators": ["agreement", "picky"]},
        }
    )
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    report = load_report(out)
    assert result.exit_code == 3  # the original itself could not be judged: an error, not a verdict
    assert report["verdict"] == "error"
    assert report["message"].startswith("the original model failed to validate: validator 'picky'")
    for item in report["candidates"]:
        assert item["status"] == "failed" and item["stage"] == "validate"
        assert (
            "validator 'picky' (plugin 'picky_plugin') failed to validate: ValueError"
            in item["error"]
        )


def test_two_plugins_registering_one_name_is_an_error_naming_both(gate_cli, tmp_path, monkeypatch):
    write_module(
        tmp_path,
        "clash_plugin",
        """
        from gate import Quantizer, hookimpl

        @hookimpl
        def onnx_gate_quantizers():
            return [Quantizer(name="dynamic", quantize=lambda *a: None)]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "clash_plugin")
    result = gate_cli("plugins")
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        "error: quantizer name 'dynamic' is registered by both plugin 'dynamic' and plugin 'clash_plugin'"
    )


def test_unknown_hook_is_rejected_by_plugin_name(gate_cli, tmp_path, monkeypatch):
    write_module(
        tmp_path,
        "typo_plugin",
        """
        from gate import hookimpl

        @hookimpl
        def onnx_gate_quantisers():
            return []
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "typo_plugin")
    result = gate_cli("plugins")
    assert result.exit_code == 3
    assert "plugin 'typo_plugin' implements an unknown hook" in result.stderr
    assert "onnx_gate_quantisers" in result.stderr


def test_broken_entry_point_is_named_and_can_be_disabled(
    classifier, gate_cli, tmp_path, monkeypatch
):
    install_fake_distribution(
        monkeypatch,
        tmp_path / "site",
        "onnx-gate-broken",
        {"broken": "broken_plugin"},
        {"broken_plugin": "import a_module_that_does_not_exist\n"},
    )
    policy = classifier.write_policy({"candidates": [{"name": "b", "graph": {"level": "basic"}}]})
    out = tmp_path / "out"
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == 3
    error = load_report(out)["errors"][0]
    assert error.startswith(
        "plugin 'broken' (broken_plugin, from onnx-gate-broken) failed to import: ModuleNotFoundError"
    )
    assert "ONNX_GATE_DISABLE_PLUGINS=broken" in error
    monkeypatch.setenv("ONNX_GATE_DISABLE_PLUGINS", "broken")
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0


def test_plugin_returning_the_wrong_record_type(tmp_path, monkeypatch):
    write_module(
        tmp_path,
        "wrong_plugin",
        """
        from gate import hookimpl

        @hookimpl
        def onnx_gate_validators():
            return ["not a record"]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "wrong_plugin")
    import pytest

    from gate.errors import PluginError

    with pytest.raises(
        PluginError,
        match="plugin 'wrong_plugin' returned str from onnx_gate_validators; expected Validator",
    ):
        get_host().records  # noqa: B018


def test_unknown_name_lists_the_valid_ones():
    import pytest

    from gate.errors import UnknownNameError

    host = get_host()
    with pytest.raises(
        UnknownNameError, match=r"unknown graph optimizer 'tvm' \(valid: ort, transformer\)"
    ):
        host.get("graph_optimizer", "tvm")


def test_a_validator_returning_garbage_is_named(classifier, gate_cli, tmp_path, monkeypatch):
    write_module(
        tmp_path,
        "sloppy_plugin",
        """
        from gate import Validator, hookimpl

        @hookimpl
        def onnx_gate_validators():
            return [
                Validator(name="words", metrics={"quality": "q"}, validate=lambda context: {"quality": "high"}),
                Validator(name="extra", metrics={"declared": "d"}, validate=lambda context: {"surprise": 1.0}),
            ]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "sloppy_plugin")
    for name, message in (
        (
            "words",
            "validator 'words' (plugin 'sloppy_plugin') failed to validate: ValueError: could not convert string to float",
        ),
        (
            "extra",
            "validator 'extra' (plugin 'sloppy_plugin') failed to validate: ValueError: returned undeclared metric(s) surprise",
        ),
    ):
        policy = classifier.write_policy({"validation": {"validators": [name]}})
        out = tmp_path / name
        assert gate_cli("run", policy, "-o", out, "-q").exit_code == 3
        assert message in load_report(out)["message"]


def test_a_validator_may_not_shadow_a_measured_metric(gate_cli, tmp_path, monkeypatch):
    write_module(
        tmp_path,
        "shadow_plugin",
        """
        from gate import Validator, hookimpl

        @hookimpl
        def onnx_gate_validators():
            return [Validator(name="fast", metrics={"speedup": "fake"}, validate=lambda context: {})]
    """,
    )
    use_plugin_modules(monkeypatch, tmp_path, "shadow_plugin")
    result = gate_cli("plugins")
    assert result.exit_code == 3
    assert (
        "validator 'fast' (plugin 'shadow_plugin') declares metric(s) the gate measures itself: speedup"
        in result.stderr
    )
