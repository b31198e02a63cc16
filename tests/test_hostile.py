"""Hostile input: model files, policies and data a stranger wrote are refused before they
are parsed or run, each with one line, the documented exit code and a report; secrets
never reach a report, and no report is ever half-written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FAST_MEASURE, load_report, save_graph
from onnx import TensorProto, helper, numpy_helper

ONE_CANDIDATE = {"candidates": [{"name": "basic", "graph": {"level": "basic"}}]}


def _add_model(folder: Path, *, external: str | None = None, length: int = 64) -> Path:
    """y = x + w, with w (16 floats) stored inline or as external data at ``external``."""
    weight = numpy_helper.from_array(np.ones((1, 16), np.float32), "w")
    if external is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(length))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [weight],
    )
    folder.mkdir(parents=True, exist_ok=True)
    return save_graph(folder / "model.onnx", graph)


def _policy(folder: Path, model: str = "model.onnx", **body: object) -> Path:
    path = folder / "policy.json"
    document = {
        "version": 1,
        "model": {"path": model},
        "measure": dict(FAST_MEASURE),
        **ONE_CANDIDATE,
        **body,
    }
    path.write_text(json.dumps(document))
    return path


def _refused(gate_cli, policy: Path, out: Path, code: int) -> str:
    """Run; assert the exit code, one error line, no traceback and a report saying so."""
    result = gate_cli("run", policy, "-o", out, "-q")
    assert result.exit_code == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    report = load_report(out)
    assert report["verdict"] == "error" and report["exit_code"] == code
    assert not (out / "model.onnx").exists()
    [error] = report["errors"]
    assert "\n" not in error
    return error


# -- model files ---------------------------------------------------------------


@pytest.mark.parametrize(
    "location, why",
    [
        ("../secret.bin", "outside the model's folder"),
        ("sub/../../secret.bin", "outside the model's folder"),
        ("/etc/passwd", "an absolute path"),
        ("link.bin", "a symbolic link"),
        ("missing.bin", "which does not exist"),
        ("short.bin", "bytes 0-64 asked for, the file has 8"),
    ],
)
def test_external_data_that_leaves_the_models_folder_is_refused(location, why, gate_cli, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    folder = tmp_path / "repo"
    _add_model(folder, external=location)
    (folder / "link.bin").symlink_to(secret)
    (folder / "short.bin").write_bytes(b"\0" * 8)
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error.startswith(f"model model.onnx: tensor 'w' keeps its data in '{location}'")
    assert why in error


def test_external_data_beside_the_model_is_read(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    _add_model(folder, external="weights.bin")
    (folder / "weights.bin").write_bytes(np.ones(16, np.float32).tobytes())
    result = gate_cli("run", _policy(folder), "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stdout


def test_size_node_and_tensor_limits_are_named(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    _add_model(folder)
    error = _refused(gate_cli, _policy(folder, limits={"nodes": "many"}), tmp_path / "o0", 2)
    assert "limits.nodes: 'many' is not of type 'integer'" in error
    error = _refused(gate_cli, _policy(folder, limits={"model_mb": 0.0001}), tmp_path / "o1", 3)
    assert error.startswith("model model.onnx is 0.0 MB, over limits.model_mb (0.0001)")
    # a graph of 40 nodes against a limit of 10
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(40)]
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("t40", TensorProto.FLOAT, [1, 4])],
    )
    save_graph(folder / "deep.onnx", graph)
    error = _refused(
        gate_cli, _policy(folder, "deep.onnx", limits={"nodes": 10}), tmp_path / "o2", 3
    )
    assert error == (
        "model deep.onnx has more than limits.nodes (10) nodes, with its subgraphs and "
        "function calls expanded"
    )
    # a tensor whose dims claim two billion floats while holding 64 bytes
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.initializer[0].dims[:] = [1, 1 << 31]
    onnx.save(model, str(folder / "liar.onnx"))
    error = _refused(gate_cli, _policy(folder, "liar.onnx"), tmp_path / "o3", 3)
    assert (
        error
        == "model liar.onnx: tensor 'w' declares 8,589.9 MB of data, over limits.model_mb (4096)"
    )
    model.graph.initializer[0].dims[:] = [1, 32]
    onnx.save(model, str(folder / "short.onnx"))
    error = _refused(gate_cli, _policy(folder, "short.onnx"), tmp_path / "o4", 3)
    assert error == "model short.onnx: tensor 'w' declares 128 bytes but holds 64"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "model model.onnx is empty (0 bytes)"),
        (
            b"\x08\x07\x12\xff\xff\xff\xff\x0f",
            "model model.onnx is not a valid ONNX model: protobuf",
        ),
    ],
    ids=["empty", "garbage"],
)
def test_files_that_are_not_models_are_named(content, message, gate_cli, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(content)
    assert _refused(gate_cli, _policy(folder), tmp_path / "out", 3).startswith(message)


def test_ops_without_a_kernel_are_named(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    save_graph(folder / "model.onnx", graph, {"": 17, "com.example": 1})
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error == (
        "ONNX Runtime cannot run the original model: it uses ops from domains ONNX Runtime "
        "has no kernels for: com.example:Mystery (1 node) (they need a custom-op library)"
    )


def test_an_original_that_asks_for_all_memory_fails_in_its_child(gate_cli, tmp_path):
    """ConstantOfShape asking for 40 GB when run: the gate's own process never tries."""
    folder = tmp_path / "repo"
    folder.mkdir()
    fill = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fill),
            helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([100_000, 100_000], np.int64), "shape")],
    )
    save_graph(folder / "model.onnx", graph)
    policy = _policy(folder, build={"memory_mb": 1024})
    error = _refused(gate_cli, policy, tmp_path / "out", 3)
    assert error.startswith("ONNX Runtime cannot run the original model: ")
    assert "build.memory_mb is 1024: it may" in error


def _counting_body() -> onnx.GraphProto:
    """A Loop body adding one each iteration: as slow as its trip count is large."""
    return helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
        ],
        [numpy_helper.from_array(np.ones((1, 4), np.float32), "step")],
    )


def _input_counted_loop(folder: Path) -> Path:
    """A model whose Loop runs as many times as its input ``n`` says: a sample's run
    time (or a hang) comes from the data, not the graph."""
    folder.mkdir()
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["n"], ["trips"]),
            helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=_counting_body()),
        ],
        "counted",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(True), "cond")],
    )
    save_graph(folder / "model.onnx", graph)
    return folder


def test_an_original_that_hangs_is_cut_off_by_the_build_timeout(gate_cli, tmp_path):
    """A Loop of 10^15 iterations: the child running it once is killed, the run reports."""
    folder = tmp_path / "repo"
    folder.mkdir()
    body = _counting_body()
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
        "forever",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "cond"),
        ],
    )
    save_graph(folder / "model.onnx", graph)
    error = _refused(gate_cli, _policy(folder, build={"timeout_s": 3}), tmp_path / "out", 3)
    assert error == (
        "ONNX Runtime cannot run the original model: timed out after 3 s (build.timeout_s); "
        "one sample's run was killed"
    )


# -- policies ------------------------------------------------------------------


def test_policy_paths_stay_in_the_repository_unless_the_job_allows_more(
    gate_cli, tmp_path, monkeypatch
):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    _add_model(elsewhere)
    (repo / "configs").mkdir()
    policy = _policy(repo / "configs", "../../elsewhere/model.onnx")
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: policy.json:1: model.path: '../../elsewhere/model.onnx' leads outside the "
        "repository; refused (the person running the gate can allow a folder with "
        "--allow-path or ONNX_GATE_ALLOW_PATHS)"
    )
    assert gate_cli("check", policy, "--allow-path", elsewhere).exit_code == 0
    monkeypatch.setenv("ONNX_GATE_ALLOW_PATHS", str(elsewhere))
    assert gate_cli("check", policy).exit_code == 0
    monkeypatch.delenv("ONNX_GATE_ALLOW_PATHS")
    # a path inside the repository through a link that leads out is outside too
    (repo / "models").symlink_to(elsewhere)
    policy = _policy(repo, "models/model.onnx")
    assert _refused(gate_cli, policy, tmp_path / "out", 2).startswith(
        "policy.json:1: model.path: 'models/model.onnx' leads outside the repository"
    )
    # Data files too, and in a policy outside any repository its own folder is the limit.
    loose = tmp_path / "loose"
    _add_model(loose)
    np.savez(tmp_path / "validation.npz", x=np.zeros((4, 1, 16), np.float32))
    policy = _policy(loose, data={"validation": "../validation.npz"})
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "data.validation: '../validation.npz' leads outside the policy's folder" in result.stderr


def test_outside_any_repository_the_working_directory_holding_the_policy_is_the_project(
    gate_cli, tmp_path, monkeypatch
):
    """A source tarball or a Docker build context has no .git: run from the project's
    folder, a policy in a subfolder may use the project's files, and nothing beyond."""
    project = tmp_path / "unpacked"
    _add_model(project / "models")
    np.savez(project / "validation.npz", x=np.zeros((4, 1, 16), np.float32))
    (project / "configs").mkdir()
    policy = _policy(
        project / "configs", "../models/model.onnx", data={"validation": "../validation.npz"}
    )
    monkeypatch.chdir(project)
    assert gate_cli("check", policy).exit_code == 0
    _add_model(tmp_path / "beyond")
    beyond = _policy(project / "configs", "../../beyond/model.onnx")
    result = gate_cli("check", beyond)
    assert result.exit_code == 2
    assert (
        "model.path: '../../beyond/model.onnx' leads outside the working directory "
        "(no repository holds the policy); refused"
    ) in result.stderr
    # Run from elsewhere, the policy's own folder is the limit again...
    monkeypatch.chdir(tmp_path / "beyond")
    result = gate_cli("check", policy)
    assert result.exit_code == 2 and "leads outside the policy's folder" in result.stderr
    # ...and a working directory that holds everything (the filesystem's root) never counts.
    monkeypatch.chdir("/")
    assert gate_cli("check", policy).exit_code == 2


def test_the_bundled_example_policies_are_valid_in_an_unpacked_git_archive(tmp_path) -> None:
    """`git archive` of the project (no .git inside): the examples under examples/ name
    the bundled demo two folders up, inside the unpacked project."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and the project's git checkout")
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", "HEAD", "examples", "gate/demo"],
        capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    unpacked = tmp_path / "src"
    unpacked.mkdir()
    subprocess.run(["tar", "-x", "-C", str(unpacked)], input=archive, check=True, timeout=120)
    assert not (unpacked / ".git").exists()
    policies = sorted((unpacked / "examples").rglob("*.yaml"))
    policies = [path for path in policies if "version:" in path.read_text(encoding="utf-8")]
    assert policies
    # The console script, not `python -m gate`: the unpacked gate/demo must not shadow the
    # installed package.
    gate = shutil.which("onnx-gate", path=str(Path(sys.executable).parent))
    assert gate
    for policy in policies:
        done = subprocess.run(
            [gate, "check", str(policy.relative_to(unpacked))],
            cwd=unpacked, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, (policy, done.stderr)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "version: 1\nmodel: !!python/object/apply:os.system ['touch PWNED']\n",
            "policy.yaml:2: invalid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        (
            "version: 1\nmodel: {path: model.onnx}\nbudgets: []\nbudgets: []\n",
            "policy.yaml:4: key 'budgets' appears twice in one mapping",
        ),
        (
            "version: 1\nmodel: {path: model.onnx}\nx: " + "[" * 200 + "]" * 200 + "\n",
            "policy.yaml:3: the policy nests deeper than 64 levels; refused",
        ),
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(
                f"{name}: &{name} [{', '.join(['*' + previous] * 10)}]\n"
                for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            "policy.yaml:5: the policy expands to over 100,000 values (YAML aliases included); "
            "refused",
        ),
        (
            "version: 1\n# " + "x" * (1 << 20) + "\n",
            "policy.yaml: the policy is 1.0 MB; a policy over 1.0 MB is refused",
        ),
    ],
    ids=["python-tag", "duplicate-key", "deep", "alias-bomb", "huge"],
)
def test_hostile_policies_are_refused_before_they_are_walked(text, message, gate_cli, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_a_duplicate_key_in_json_is_refused(gate_cli, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text('{"version": 1, "model": {"path": "a.onnx", "path": "b.onnx"}}')
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: policy.json: key 'path' appears twice in one object"


# -- data files ----------------------------------------------------------------


def _zip_bomb(path: Path) -> None:
    """An .npz whose one member's .npy header declares 8 GB: numpy would allocate that first."""
    import zipfile

    from numpy.lib import format as npy

    header = {"descr": "<f4", "fortran_order": False, "shape": (2_000_000_000, 1, 16)}
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("x.npy", "w") as member,
    ):
        npy.write_array_header_1_0(member, header)
        member.write(b"\0" * 4096)


def test_hostile_data_files_are_refused_before_numpy_reads_them(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    _add_model(folder)
    _zip_bomb(folder / "bomb.npz")
    error = _refused(gate_cli, _policy(folder, data={"validation": "bomb.npz"}), tmp_path / "o1", 2)
    assert error == (
        "data.validation: bomb.npz holds 128,000.0 MB of arrays, over limits.data_mb (2048)"
    )
    np.savez(folder / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    error = _refused(
        gate_cli, _policy(folder, data={"validation": "objects.npz"}), tmp_path / "o2", 2
    )
    assert error == (
        "data.validation: cannot read objects.npz as .npz: it holds object arrays (pickled "
        "data), which the gate never loads"
    )
    (folder / "empty.npz").write_bytes(b"")
    error = _refused(
        gate_cli, _policy(folder, data={"validation": "empty.npz"}), tmp_path / "o3", 2
    )
    assert error == "data.validation: empty.npz is empty (0 bytes)"


# -- reports -------------------------------------------------------------------


def test_secrets_in_the_environment_never_reach_a_report(
    classifier, gate_cli, tmp_path, monkeypatch
):
    token = "ghp_" + "s3cr3tV4lue" * 3
    monkeypatch.setenv("GITHUB_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws/" + "K3y" * 8)
    # A message that would carry one: the model's file name holds the token.
    policy = classifier.write_policy({**ONE_CANDIDATE, "model": {"path": f"{token}.onnx"}})
    out = tmp_path / "out"
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 2
    texts = [path.read_text(errors="replace") for path in out.iterdir() if path.is_file()]
    assert texts and all(token not in text and "K3yK3y" not in text for text in texts)
    assert "***.onnx" in (out / "report.json").read_text()


def test_report_files_are_complete_and_readable_by_the_group(classifier, gate_cli, tmp_path):
    """Under the usual umask 022 reports are 0644 (mkstemp alone would make them 0600)."""
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        result = gate_cli("run", classifier.write_policy(ONE_CANDIDATE), "-o", out, "-q")
    finally:
        os.umask(previous)
    assert result.exit_code == 0
    names = sorted(path.name for path in out.iterdir())
    assert not [name for name in names if name.endswith(".tmp") or ".tmp." in name], names
    for name in ("report.json", "summary.md", "junit.xml", "model.onnx"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_a_full_disk_while_writing_the_chosen_model_is_an_error_not_a_pass(
    classifier, gate_cli, tmp_path, monkeypatch
):
    """Fault injection: the copy of the chosen model fails with ENOSPC."""
    import errno
    import shutil

    real = shutil.copyfile

    def full(source, destination, *args, **kwargs):
        if ".model.onnx" in str(destination):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, destination, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full)
    out = tmp_path / "out"
    result = gate_cli("run", classifier.write_policy(ONE_CANDIDATE), "-o", out, "-q")
    assert result.exit_code == 3
    report = load_report(out)
    assert report["chosen"] is None and not (out / "model.onnx").exists()
    assert report["errors"] == [
        f"cannot write the chosen model (original) into {out}: No space left on device"
    ]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# -- found by bench/robustness.py ----------------------------------------------


@pytest.mark.parametrize(
    "path, message",
    [
        (
            "model\0.onnx",
            "policy.json: the path 'model\\x00.onnx' is not usable: embedded null byte",
        ),
        ("m" * 5000 + ".onnx", "policy.json: the path 'mmmm"),
    ],
    ids=["nul-byte", "too-long"],
)
def test_unusable_paths_are_policy_errors(path, message, gate_cli, tmp_path):
    folder = tmp_path / "repo"
    _add_model(folder)
    policy = _policy(folder, path)
    result = gate_cli("check", policy)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {message}")
    assert len(result.stderr) < 400
    assert _refused(gate_cli, policy, tmp_path / "out", 2).startswith(message)


def test_labels_and_data_of_the_wrong_kind_are_named(classifier, gate_cli, tmp_path):
    folder = classifier.folder
    policy = classifier.write_policy(
        {**ONE_CANDIDATE, "data": {"validation": "validation.npz", "labels": "calibration.npz"}}
    )
    error = _refused(gate_cli, policy, tmp_path / "o1", 2)
    assert error == (
        "data.labels: calibration.npz is an .npz archive; labels are one .npy array (numpy.save)"
    )
    policy = classifier.write_policy({**ONE_CANDIDATE, "data": {"validation": "labels.npy"}})
    error = _refused(gate_cli, policy, tmp_path / "o2", 2)
    assert error == (
        "data.validation: labels.npy is not an .npz archive (numpy.savez writes one, an array "
        "per model input)"
    )
    assert (folder / "labels.npy").is_file()


def test_a_range_the_input_type_cannot_hold_is_refused(classifier, gate_cli, tmp_path):
    policy = classifier.write_policy({**ONE_CANDIDATE, "inputs": {"x": {"range": [-1e300, 1e300]}}})
    error = _refused(gate_cli, policy, tmp_path / "out", 2)
    assert (
        error
        == "policy.yaml:17: inputs.x.range: [-1e+300, 1e+300] does not fit the input's type, float32"
    )


def test_a_model_without_outputs_is_named(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "silent",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [],
    )
    save_graph(folder / "model.onnx", graph)
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error == "model model.onnx has no outputs: there is nothing to validate"


def test_a_refused_run_replaces_the_previous_report(classifier, gate_cli, tmp_path):
    """Usage errors found before the run starts still write report.json, and the earlier
    run's chosen model goes: a stale pass must never be read as this run's."""
    out = tmp_path / "out"
    policy = classifier.write_policy(ONE_CANDIDATE)
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    assert (out / "model.onnx").is_file()
    result = gate_cli("run", policy, "-o", out, "-q", "--shard", "3/2")
    assert result.exit_code == 2
    assert load_report(out)["verdict"] == "error" and not (out / "model.onnx").exists()
    assert gate_cli("run", policy, "-o", out, "-q").exit_code == 0
    result = gate_cli("run", classifier.folder, "-o", out, "-q")  # a folder, not a policy
    assert result.exit_code == 2
    assert load_report(out)["errors"] == [f"the policy {classifier.folder} is a folder, not a file"]
    assert not (out / "model.onnx").exists()


def test_an_unexpected_crash_is_exit_3_in_one_line(tmp_path):
    """A bug in the gate must never exit 1, which CI reads as a failed budget."""
    import subprocess
    import sys

    script = (
        "import sys, gate.cli, gate.run.check\n"
        "def broken(*args, **kwargs): raise ZeroDivisionError('boom')\n"
        "gate.run.check.check_policy = broken\n"
        "sys.argv = ['onnx-gate', 'check', sys.argv[1]]\n"
        "gate.cli.main()\n"
    )
    folder = tmp_path / "repo"
    _add_model(folder)
    done = subprocess.run(
        [sys.executable, "-c", script, str(_policy(folder))],
        capture_output=True, text=True, timeout=60, env={**os.environ, "ONNX_GATE_DEBUG": ""},
    )  # fmt: skip
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: internal error: ZeroDivisionError: boom (at ")
    assert "ONNX_GATE_DEBUG=1 shows the traceback" in done.stderr


def test_a_single_file_over_protobufs_limit_is_named_before_parsing(gate_cli, tmp_path):
    """A 2.5 GB model file (sparse: it takes no disk) is refused from its size alone."""
    folder = tmp_path / "repo"
    folder.mkdir()
    with (folder / "model.onnx").open("wb") as handle:
        handle.truncate(2_500_000_000)
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error.startswith(
        "model model.onnx is 2,500.0 MB in one file, over protobuf's 2 GB limit: save it "
        "with its weights as external data"
    )


def test_report_paths_are_relative_to_the_repository(gate_cli, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    _add_model(repo / "models")
    policy = _policy(repo / "models")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the job runs from outside the checkout
    assert gate_cli("run", policy, "-o", tmp_path / "out", "-q").exit_code == 0
    report = load_report(tmp_path / "out")
    assert report["policy"] == "models/policy.json"
    assert report["model"]["path"] == "models/model.onnx"
    assert str(tmp_path) not in (tmp_path / "out" / "report.json").read_text()


# -- found by the independent review ---------------------------------------------


def test_external_data_in_a_hidden_file_such_as_git_config_is_refused(gate_cli, tmp_path):
    """.git/config holds the checkout's credentials, and the chosen model (weights
    inlined) is uploaded as an artifact."""
    folder = tmp_path / "repo"
    _add_model(folder, external=".git/config")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_bytes(b"extraheader = AUTHORIZATION: basic " + b"x" * 40)
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error == (
        "model model.onnx: tensor 'w' keeps its data in '.git/config', a hidden file or "
        "folder (.git, say); refused"
    )
    policy = _policy(folder, ".git/config")
    result = gate_cli("check", policy)
    assert result.exit_code == 2
    assert "model.path: '.git/config' is inside .git; refused" in result.stderr


def test_every_range_read_from_external_data_counts_towards_the_limit(gate_cli, tmp_path):
    """Two hundred tensors naming one 1 MB file read 200 MB, not 1."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\0" * 1_000_000)
    tensors = []
    for index in range(200):
        tensor = TensorProto(name=f"w{index}", data_type=TensorProto.UINT8, dims=[1_000_000])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "1000000")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensors.append(tensor)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "aliases",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        tensors,
    )
    save_graph(folder / "model.onnx", graph)
    error = _refused(gate_cli, _policy(folder, limits={"model_mb": 5}), tmp_path / "out", 3)
    assert error.startswith("model model.onnx with its external data is 200.0 MB, over")


def test_functions_calling_functions_count_as_the_nodes_they_expand_to(gate_cli, tmp_path):
    """Seven levels of ten calls each: a 2 KB file that inlines to ten million nodes."""
    folder = tmp_path / "repo"
    folder.mkdir()
    functions = [
        helper.make_function(
            "local", "f0", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
            [helper.make_opsetid("", 17)],
        )
    ]  # fmt: skip
    for level in range(1, 8):
        calls = [
            helper.make_node(f"f{level - 1}", [f"t{i}" if i else "a"], [f"t{i + 1}" if i < 9 else "b"], domain="local")
            for i in range(10)
        ]  # fmt: skip
        functions.append(
            helper.make_function(
                "local",
                f"f{level}",
                ["a"],
                ["b"],
                calls,
                [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
            )
        )
    graph = helper.make_graph(
        [helper.make_node("f7", ["x"], ["y"], domain="local")],
        "expanding",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=functions,
    )
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    assert (folder / "model.onnx").stat().st_size < 5000
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error.startswith("model model.onnx has more than limits.nodes (1,000,000) nodes")


def test_an_encrypted_npz_is_a_data_error(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    _add_model(folder)
    np.savez(folder / "validation.npz", x=np.zeros((4, 1, 16), np.float32))
    data = bytearray((folder / "validation.npz").read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 6] |= 1  # general-purpose flag bit 0: encrypted
    data[central + 8] |= 1
    (folder / "validation.npz").write_bytes(bytes(data))
    error = _refused(
        gate_cli, _policy(folder, data={"validation": "validation.npz"}), tmp_path / "out", 2
    )
    assert error.startswith("data.validation: cannot read validation.npz: ")
    assert "encrypted" in error


def test_the_probe_runs_every_validation_sample_not_just_the_first(gate_cli, tmp_path):
    """A Loop whose trip count comes from the input: harmless on sample 1, endless on
    sample 3. The child probe meets it; the gate's own process never does."""
    folder = _input_counted_loop(tmp_path / "repo")
    np.savez(
        folder / "validation.npz",
        x=np.zeros((3, 1, 4), np.float32),
        n=np.array([[1], [1], [10**15]], np.int64),
    )
    policy = _policy(folder, data={"validation": "validation.npz"}, build={"timeout_s": 3})
    error = _refused(gate_cli, policy, tmp_path / "out", 3)
    assert error.endswith("timed out after 3 s (build.timeout_s); one sample's run was killed")


def test_a_declared_input_too_big_to_feed_is_refused_before_data_is_made(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10**12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10**12])],
    )
    save_graph(folder / "model.onnx", graph)
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error == (
        "model model.onnx: input 'x' of shape [1, 1000000000000] takes 4,000,000.0 MB per "
        "sample, over limits.data_mb (2048)"
    )


def test_secret_masking_leaves_ordinary_values_and_valid_json(
    classifier, gate_cli, tmp_path, monkeypatch
):
    """Short or numeric values, and names that only look like secrets, are not masked."""
    monkeypatch.setenv("CACHE_KEY", "999999")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "original")
    monkeypatch.setenv("DESKTOP_SESSION", "passed")
    out = tmp_path / "out"
    assert gate_cli("run", classifier.write_policy(ONE_CANDIDATE), "-o", out, "-q").exit_code == 0
    report = json.loads((out / "report.json").read_text())  # still JSON
    assert report["chosen"] in ("original", "basic")
    assert "***" not in (out / "report.json").read_text()
    assert "ONNX_GATE_CHOSEN=" + report["chosen"] in (out / "gate.env").read_text()


def test_a_signal_while_reports_are_written_waits_for_them_then_stops_the_run(tmp_path):
    """CI sends SIGTERM (often twice): the files being written are finished first, and
    the run still stops (a suite does not go on to its next model)."""
    import signal

    from gate.cli import _terminate
    from gate.report.document import signals_held, write_atomic

    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _terminate)  # as `onnx-gate` installs them
    signal.signal(signal.SIGINT, _terminate)
    try:
        with pytest.raises(KeyboardInterrupt), signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            write_atomic(tmp_path / "report.json", '{"verdict": "pass"}')
        assert json.loads((tmp_path / "report.json").read_text()) == {"verdict": "pass"}
        # once unwinding, later signals are ignored rather than cutting the partial report
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# -- found by the second review ----------------------------------------------------


def test_sparse_initializers_get_the_same_external_data_checks(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    _add_model(folder)
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_bytes(b"url = https://x-access-token:ghs_" + b"s" * 40)
    model = onnx.load(str(folder / "model.onnx"))
    values = TensorProto(name="sv", data_type=TensorProto.UINT8, dims=[16])
    values.data_location = TensorProto.EXTERNAL
    for key, value in (("location", ".git/config"), ("offset", "0"), ("length", "16")):
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    indices = numpy_helper.from_array(np.arange(16, dtype=np.int64), "si")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [64]))
    onnx.save(model, str(folder / "model.onnx"))
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error.startswith("model model.onnx: tensor 'sv' keeps its data in '.git/config'")


def test_external_data_without_a_length_is_held_to_the_declared_size(gate_cli, tmp_path):
    folder = tmp_path / "repo"
    _add_model(folder, external="weights.bin")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    del model.graph.initializer[0].external_data[2]  # the length entry
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "weights.bin").write_bytes(b"\0" * 16)  # 16 bytes for a 64-byte tensor
    error = _refused(gate_cli, _policy(folder), tmp_path / "out", 3)
    assert error.endswith("bytes 0-64 asked for, the file has 16")


def test_the_probe_bounds_each_sample_not_the_whole_validation_set(gate_cli, tmp_path):
    """Fifteen samples of a fifth of a second each under a 1.5 s timeout: a probe that
    timed the whole set would refuse a model that is merely validated thoroughly."""
    folder = _input_counted_loop(tmp_path / "repo")
    import time

    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    trips, started = 20_000, time.perf_counter()
    session.run(None, {"x": np.zeros((1, 4), np.float32), "n": np.array([trips], np.int64)})
    trips = int(trips * 0.2 / (time.perf_counter() - started))  # about 0.2 s per sample
    np.savez(
        folder / "validation.npz",
        x=np.zeros((15, 1, 4), np.float32),
        n=np.full((15, 1), trips, np.int64),
    )
    policy = _policy(folder, data={"validation": "validation.npz"}, build={"timeout_s": 1.5})
    policy.write_text(
        policy.read_text().replace('"min_runs": 80, "max_runs": 80', '"min_runs": 5, "max_runs": 5')
    )
    result = gate_cli("run", policy, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stdout


def test_a_model_with_external_data_is_chosen_from_its_own_folder(gate_cli, tmp_path, monkeypatch):
    """onnx.save_model looks for an existing data file in the working directory: running
    beside the user's model.onnx.data made writing the chosen model fail."""
    folder = tmp_path / "repo"
    _add_model(folder)
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.ones((1, 16), np.float32) * 2, "w")
    )
    big = numpy_helper.from_array(np.zeros(1024, np.float32), "unused")
    model.graph.initializer.append(big)
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    monkeypatch.chdir(folder)
    policy = _policy(folder, selection={"min_gain": 5})  # the original is chosen
    result = gate_cli("run", policy.name, "-o", "out", "-q")
    assert result.exit_code == 0, result.stdout
    assert (folder / "out" / "model.onnx").is_file() and (
        folder / "out" / "model.onnx.data"
    ).is_file()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "out" / "model.onnx"))
    [y] = session.run(None, {"x": np.zeros((1, 16), np.float32)})
    assert (y == 2).all()


def test_a_signal_while_a_finished_runs_reports_are_written_keeps_its_verdict(tmp_path):
    """The report is whole and says pass: the command exits 0 as it says, not 3."""
    import subprocess
    import sys

    folder = tmp_path / "repo"
    _add_model(folder)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "signalling_reporter.py").write_text(
        "import os, signal\n"
        "from gate import Reporter, hookimpl\n"
        "def write(report, output_dir):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # CI's timeout, mid-write\n"
        "    return []\n"
        "@hookimpl\n"
        "def onnx_gate_reporters():\n"
        "    return [Reporter('signalling', write)]\n"
    )
    env = {**os.environ, "ONNX_GATE_PLUGINS": "signalling_reporter", "PYTHONPATH": str(plugins)}
    done = subprocess.run(
        [sys.executable, "-m", "gate", "run", str(_policy(folder)), "-o", str(tmp_path / "out"), "-q"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    report = load_report(tmp_path / "out")
    assert report["verdict"] == "pass" and not report.get("partial")
    assert done.returncode == 0, done.stderr
    assert "interrupted after report.json was complete" in done.stderr


HANGING_VALIDATOR = '''
import os
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from gate import Validator, hookimpl


def _endless_loop():
    """A Loop of 2**62 additions: ONNX Runtime runs it natively, with Python's lock released."""
    scalar = lambda name, kind: helper.make_tensor_value_info(name, kind, [])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [scalar("i", TensorProto.INT64), scalar("cond_in", TensorProto.BOOL),
         scalar("v_in", TensorProto.FLOAT)],
        [scalar("cond_out", TensorProto.BOOL), scalar("v_out", TensorProto.FLOAT)],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "c", "v"], ["out"], body=body)], "hang",
        [scalar("n", TensorProto.INT64), scalar("c", TensorProto.BOOL),
         scalar("v", TensorProto.FLOAT)],
        [scalar("out", TensorProto.FLOAT)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def validate(context):
    import onnxruntime

    session = onnxruntime.InferenceSession(_endless_loop(), providers=["CPUExecutionProvider"])
    Path(os.environ["HANG_MARKER"]).write_text("hanging")
    session.run(None, {"n": np.array(2**62), "c": np.array(True), "v": np.array(0.0, np.float32)})
    return {"never": 1.0}


@hookimpl
def onnx_gate_validators():
    return [Validator("hang", {"never": "never returned"}, validate)]
'''


def test_a_native_hang_still_ends_in_a_partial_report_when_ci_sends_sigterm(tmp_path):
    """ONNX Runtime stuck in native code never lets Python's signal handler run; the
    watchdog writes the report and exits 3 before the runner's SIGKILL would lose it."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "repo"
    _add_model(folder)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hanging_validator.py").write_text(HANGING_VALIDATOR)
    marker = tmp_path / "hanging"
    env = {
        **os.environ,
        "ONNX_GATE_PLUGINS": "hanging_validator",
        "PYTHONPATH": str(plugins),
        "HANG_MARKER": str(marker),
    }
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "gate", "run", str(_policy(folder)), "-o", str(out), "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), process.communicate(timeout=5)
        time.sleep(0.5)  # inside session.run now
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 3, stderr
    assert time.monotonic() - sent < 10  # inside GitLab's and GitHub's 10 s before SIGKILL
    report = load_report(out)
    assert report["partial"] is True and report["verdict"] == "error" and report["exit_code"] == 3
    assert report["message"] == (
        "SIGTERM arrived while the gate was stuck in native code (ONNX Runtime did not return "
        "within 3 s); this report is partial"
    )
    assert report["testbed"] and report["model"]  # what was known before the hang is kept
