"""Robustness suite: hostile inputs and injected faults thrown at the real onnx-gate CLI.

Every case is generated at run time into a temporary folder (tiny models made
with onnx.helper, data with numpy) and run as a subprocess of its own, in its
own process group, under a per-case timeout. Nothing is trusted: the suite
counts what happened - exit codes against the documented range and the
code each case should give, tracebacks, whether report.json survived (parses,
fits schemas/report.schema.json, says ``partial`` when interrupted, is not a
stale one from an earlier run), half-written or temporary files left behind,
processes that outlive the gate, files a hostile input should never create
or read, and how the error was worded.

    python bench/robustness.py --quick            # fixed cases + 10 random policies
    python bench/robustness.py --random 200       # fixed cases + 200 random policies
    python bench/robustness.py --only fault-      # cases whose name contains 'fault-'

Faults come from bench/fault_plugin.py, loaded with ONNX_GATE_PLUGINS. Results
go to stdout as a markdown table and to bench/out/robustness.json. Exit status
0 when no case showed a traceback, a lost or half-written report, or a hang.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, external_data_helper, helper, numpy_helper

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REPORT_SCHEMA = REPO / "schemas" / "report.schema.json"
OUT_JSON = BENCH / "out" / "robustness.json"

FEATURES, HIDDEN, CLASSES, SAMPLES = 16, 32, 4, 32
# Tiny timing settings: these cases test behaviour, never speed.
MEASURE = {"max_seconds": 1, "min_runs": 20, "max_runs": 20, "memory": False}
STALE_MODEL = b"STALE-MODEL-FROM-AN-EARLIER-RUN"
SECRET = b"ONNXGATE-SECRET!"  # 16 bytes; tiled to fill an external tensor exactly
DEFAULT_TIMEOUT = 60.0
# Lines a well-behaved gate may print on stderr; anything else is noise or a leak.
KNOWN_STDERR = re.compile(
    r"^(error: |Error: |warning: |report: |onnx-gate: |Usage: |Try '|\[\s*[0-9.]+s\] |$)"
)
MAX_CONSOLE_LINE = 400  # gate.errors.MAX_LINE: every line a CI log shows stays readable
TEMP_NAME = re.compile(r"(\.tmp|\.temp|\.part|\.partial|~)$|^\.|^tmp", re.IGNORECASE)


# -- what a case is ------------------------------------------------------------------


@dataclass
class SignalPlan:
    """Send ``signum`` once stderr matches ``after`` (a progress line), ``delay`` later."""

    signum: int
    after: str
    delay: float = 0.3
    group: bool = False  # Ctrl-C reaches the whole foreground process group; CI's SIGTERM the pid
    repeat_after: float | None = None  # a second, impatient signal


Check = Callable[[Path, dict[str, Any]], list[str]]


@dataclass
class Run:
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    out: str | None = "out"  # output folder, relative to the case folder
    report: bool = True  # the README promises report.json for every run
    partial: bool = False
    stale: bool = True  # seed the output folder with an earlier run's files
    signal: SignalPlan | None = None
    timeout: float = DEFAULT_TIMEOUT
    failed_candidate: str | None = None  # this candidate must be reported failed, the run go on
    checks: list[Check] = field(default_factory=list)
    cwd: str = "."  # relative to the case folder
    memory_cap_gb: float | None = None  # a tighter address-space cap than --memory-cap-gb


@dataclass
class Case:
    name: str
    category: str
    expected: tuple[int, ...]
    make: Callable[[Path], Run]
    note: str = ""


@dataclass
class Result:
    case: str
    category: str
    expected: list[int]
    note: str
    command: str
    exit: int | None = None
    in_range: bool = False
    as_expected: bool = False
    hung: bool = False
    traceback: bool = False
    internal_error: bool = False
    report: str = "-"
    report_ok: bool | None = None
    leftovers: list[str] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)
    error_line: str = ""
    error_stream: str = ""
    error_lines: int = 0
    stray_stderr: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0  # the gate's, or a child's it waited for (wait4's rusage)
    memory_cap_gb: float = 0.0  # the soft address-space cap the gate ran under (0: none)
    defects: list[str] = field(default_factory=list)
    policy: str = ""
    stderr_tail: str = ""


# -- tiny models and data ------------------------------------------------------------


def mlp(opset: int = 17, external: str | None = None) -> onnx.ModelProto:
    """x[N,16] -> MatMul -> Add -> Relu -> MatMul -> y[N,4]; W1 in external data when asked."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(HIDDEN, CLASSES)).astype(np.float32), "w2")
    if external is not None:
        size = len(w1.raw_data)
        external_data_helper.set_external_data(w1, location=external, offset=0, length=size)
        w1.ClearField("raw_data")  # the bytes live (or not) wherever the location says
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        [w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def with_extra(model: onnx.ModelProto, nodes: list[Any], inits: list[Any]) -> onnx.ModelProto:
    """Add a side branch whose scalar result ``side`` is added to y (so nothing prunes it)."""
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["y_main" if name == "y" else name for name in node.output]
    graph.node.extend([*nodes, helper.make_node("Add", ["y_main", "side"], ["y"])])
    graph.initializer.extend(inits)
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    # Serialise by hand: onnx.save_model would check or move external data we set on purpose.
    path.write_bytes(model.SerializeToString())


def write_data(folder: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    np.savez(folder / "validation.npz", x=x)
    np.savez(folder / "calibration.npz", x=x[:8])
    np.save(folder / "labels.npy", rng.integers(0, CLASSES, size=SAMPLES).astype(np.int64))


def base_policy(**overrides: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "version": 1,
        "model": {"path": "model.onnx"},
        "inputs": {"x": {"shape": [1, FEATURES]}},
        "data": {"validation": "validation.npz", "labels": "labels.npy"},
        "measure": dict(MEASURE),
        "candidates": [{"name": "int8", "quantize": {"plugin": "dynamic"}}],
        "budgets": [{"metric": "accuracy_drop", "max": 0.5}],
    }
    policy.update(overrides)
    return {key: value for key, value in policy.items() if value is not None}


def write_policy(folder: Path, policy: dict[str, Any], name: str = "policy.yaml") -> Path:
    path = folder / name
    if path.suffix == ".json":
        path.write_text(json.dumps(policy))
    else:
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def standard(folder: Path, model: onnx.ModelProto | None = None, **overrides: Any) -> Path:
    """The well-behaved setup (model, data, policy), with the policy's keys overridden."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model or mlp(), folder / "model.onnx")
    write_data(folder)
    return write_policy(folder, base_policy(**overrides))


def run_policy(policy: Path | str = "policy.yaml", *extra: str, **run: Any) -> Run:
    return Run(["run", str(policy), "-o", "out", *extra], **run)


# -- extra checks --------------------------------------------------------------------


def no_file_named(prefix: str) -> Check:
    def check(folder: Path, result: dict[str, Any]) -> list[str]:
        hits = [p for p in folder.rglob(f"{prefix}*")]
        return [f"{p.relative_to(folder)} was created: code in the input ran" for p in hits]

    return check


def secret_not_read(folder: Path, result: dict[str, Any]) -> list[str]:
    """External data outside the model folder must be refused, never read into an output."""
    problems = []
    if result["exit"] in (0, 1, 4):
        problems.append("model with external data outside its folder was accepted and run")
    out = folder / "m" / "out"
    if out.is_dir():
        for path in out.rglob("*"):
            if path.is_file() and SECRET in path.read_bytes():
                problems.append(f"out/{path.relative_to(out)} contains the outside file's bytes")
    return problems


def under_seconds(limit: float) -> Check:
    def check(folder: Path, result: dict[str, Any]) -> list[str]:
        if result["seconds"] > limit:
            return [f"took {result['seconds']:.1f} s; a bounded gate needs under {limit:g} s"]
        return []

    return check


def short_messages(limit: int = 2000) -> Check:
    """No message in report.json may carry a flood of a child's output."""

    def check(folder: Path, result: dict[str, Any]) -> list[str]:
        report = folder / "out" / "report.json"
        if not report.is_file():
            return []
        longest = max((len(s) for s in _strings(json.loads(report.read_text()))), default=0)
        return [f"report.json holds a {longest}-character string"] if longest > limit else []

    return check


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


# -- model cases ---------------------------------------------------------------------


def model_case(
    name: str,
    expected: tuple[int, ...],
    note: str,
    writer: Callable[[Path], None],
    **overrides: Any,
) -> Case:
    def make(folder: Path) -> Run:
        standard(folder, **overrides)
        writer(folder / "model.onnx")
        return run_policy()

    return Case(name, "model", expected, make, note)


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(4096))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def opset(version: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        save_model(mlp(opset=version), path)

    return write


def custom_op(path: Path) -> None:
    model = mlp()
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model = with_extra(
        model, [helper.make_node("Mystery", ["y_main"], ["side"], domain="com.example")], []
    )
    save_model(model, path)


def expand_bomb(path: Path) -> None:
    # A 4 TB float tensor at run time from a 16-byte shape: ConstantOfShape then ReduceSum.
    shape = numpy_helper.from_array(np.array([1_000_000, 1_000_000], np.int64), "bomb_shape")
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["bomb_shape"],
            ["bomb"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
        ),
        helper.make_node("ReduceSum", ["bomb"], ["side"], keepdims=0),
    ]
    save_model(with_extra(mlp(), nodes, [shape]), path)


def expand_bomb_input(path: Path) -> None:
    # The same bomb expanded from a value of the input, so no constant folding can see it.
    shape = numpy_helper.from_array(np.array([1_000_000, 1_000_000], np.int64), "bomb_shape")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["x_sum"], keepdims=0),
        helper.make_node("Expand", ["x_sum", "bomb_shape"], ["bomb"]),
        helper.make_node("ReduceSum", ["bomb"], ["side"], keepdims=0),
    ]
    save_model(with_extra(mlp(), nodes, [shape]), path)


def lying_initializer(path: Path) -> None:
    # dims claim 10^10 float32 elements (40 GB); raw_data holds 4 bytes.
    tensor = TensorProto(name="liar", data_type=TensorProto.FLOAT, dims=[100_000, 100_000])
    tensor.raw_data = b"\0\0\0\0"  # helper.make_tensor would refuse the lie
    nodes = [helper.make_node("ReduceSum", ["liar"], ["side"], keepdims=0)]
    save_model(with_extra(mlp(), nodes, [tensor]), path)


def zero_inputs(path: Path) -> None:
    value = numpy_helper.from_array(np.ones((1, CLASSES), np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["y"])],
        "constant",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])],
        [value],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, path)


def zero_outputs(path: Path) -> None:
    model = mlp()
    del model.graph.output[:]
    save_model(model, path)


def cyclic(path: Path) -> None:
    model = mlp()
    model.graph.node[0].input[0] = "y"  # the first MatMul eats the last one's output
    save_model(model, path)


def ir_version_99(path: Path) -> None:
    model = mlp()
    model.ir_version = 99
    save_model(model, path)


def nan_weights(path: Path) -> None:
    model = mlp()
    weights = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weights[:] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "w1"))
    save_model(model, path)


def string_input(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", FEATURES])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, path)


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "model.onnx").write_bytes(b"")


def external_case(
    name: str, location: Callable[[Path], str], note: str, symlink: bool = False
) -> Case:
    """The model folder is CASE/m/; the secret lies outside it, in CASE/ (or /etc)."""

    def make(folder: Path) -> Run:
        models = folder / "m"
        secret = folder / "secret.bin"
        secret.write_bytes(SECRET * (FEATURES * HIDDEN * 4 // len(SECRET)))
        where = location(folder)
        if symlink:
            (models).mkdir(parents=True)
            (models / "weights.bin").symlink_to(secret)
            where = "weights.bin"
        standard(models, model=mlp(external=where))
        return Run(["run", "m/policy.yaml", "-o", "m/out"], out="m/out", checks=[secret_not_read])

    return Case(name, "model", (2, 3), make, note)


def git_config_case() -> Case:
    """External data naming .git/config inside the model's own folder: the checkout's
    credentials would be inlined into the model.onnx artifact."""

    def make(folder: Path) -> Run:
        models = folder / "m"
        (models / ".git").mkdir(parents=True)
        (models / ".git" / "config").write_bytes(SECRET * (FEATURES * HIDDEN * 4 // len(SECRET)))
        standard(models, model=mlp(external=".git/config"))
        return Run(["run", "m/policy.yaml", "-o", "m/out"], out="m/out", checks=[secret_not_read])

    return Case("model-external-git-config", "model", (3,), make, "expect 3: .git is refused")


def function_bomb(path: Path) -> None:
    """Seven levels of ten calls to local functions: a 2 KB file inlining to 10^7 nodes."""
    functions = [
        helper.make_function(
            "local", "f0", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
            [helper.make_opsetid("", 17)],
        )
    ]  # fmt: skip
    for level in range(1, 8):
        names = ["a", *(f"t{i}" for i in range(1, 10)), "b"]
        calls = [
            helper.make_node(f"f{level - 1}", [names[i]], [names[i + 1]], domain="local")
            for i in range(10)
        ]
        imports = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
        functions.append(helper.make_function("local", f"f{level}", ["a"], ["b"], calls, imports))
    graph = helper.make_graph(
        [helper.make_node("f7", ["x"], ["y"], domain="local")],
        "expanding",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", FEATURES])],
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=imports, functions=functions)
    model.ir_version = 8
    save_model(model, path)


def huge_declared_input(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10**12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10**12])],
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def aliased_external(path: Path) -> None:
    """Five hundred tensors reading one 1 MB file: 500 MB once loaded, against a 50 MB limit."""
    (path.parent / "w.bin").write_bytes(b"\0" * 1_000_000)
    model = mlp()
    for index in range(500):
        tensor = TensorProto(name=f"alias{index}", data_type=TensorProto.UINT8, dims=[1_000_000])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "1000000")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        model.graph.initializer.append(tensor)
    save_model(model, path)


def model_cases() -> list[Case]:
    bad = "expect 3: unreadable or invalid model"
    return [
        git_config_case(),
        model_case(
            "model-function-call-bomb",
            (3,),
            "expect 3: over limits.nodes once inlined",
            function_bomb,
            inputs=None,
            data=None,
            budgets=None,
        ),
        model_case(
            "model-declared-input-1e12",
            (3,),
            "expect 3: one sample over limits.data_mb",
            huge_declared_input,
            inputs=None,
            data=None,
            budgets=None,
        ),
        model_case(
            "model-external-aliases",
            (3,),
            "expect 3: 500 ranges of one file over model_mb",
            aliased_external,
            limits={"model_mb": 50},
        ),
        model_case("model-truncated", (3,), bad, truncated),
        model_case("model-random-bytes", (3,), bad, random_bytes),
        model_case("model-empty-file", (3,), bad, empty),
        model_case("model-opset-99", (3,), "expect 3: ONNX Runtime has no opset 99", opset(99)),
        model_case("model-opset-1", (3,), "expect 3: no ORT kernels for opset 1", opset(1)),
        model_case("model-ir-version-99", (3,), bad, ir_version_99),
        model_case(
            "model-custom-op", (3,), "expect 3: com.example Mystery has no kernel", custom_op
        ),
        model_case("model-zero-outputs", (3,), bad, zero_outputs),
        model_case("model-cyclic-graph", (3,), bad, cyclic),
        model_case(
            "model-constantofshape-bomb",
            (3,),
            "expect 3: a 4 TB tensor at run time must fail cleanly",
            expand_bomb,
        ),
        model_case(
            "model-expand-bomb-from-input",
            (3,),
            "expect 3: a 4 TB tensor at run time must fail cleanly",
            expand_bomb_input,
        ),
        model_case(
            "model-initializer-dims-lie",
            (3,),
            "expect 3: dims claim 10^10 elements, data has 1",
            lying_initializer,
        ),
        model_case(
            "model-zero-inputs",
            (0, 2, 3),
            "valid ONNX with nothing to feed: a clean pass or a clean refusal",
            zero_inputs,
            inputs=None,
            data=None,
            budgets=None,
        ),
        model_case(
            "model-nan-weights",
            (0, 1),
            "valid model whose outputs are NaN: judged, never a crash",
            nan_weights,
        ),
        model_case(
            "model-string-input",
            (2, 3),
            "string tensors: refused cleanly",
            string_input,
            inputs=None,
            data=None,
            budgets=None,
        ),
        model_case("model-is-directory", (2, 3), "model.path names a folder", directory),
        model_case(
            "model-missing",
            (2,),
            "expect 2: a file the policy names is missing",
            lambda path: path.unlink(),
        ),
        external_case(
            "model-external-dotdot",
            lambda f: "../secret.bin",
            "external data '../secret.bin': outside the model folder, must be refused",
        ),
        external_case(
            "model-external-absolute",
            lambda f: str(f / "secret.bin"),
            "external data at an absolute path outside the folder (the right size)",
        ),
        external_case(
            "model-external-etc-passwd",
            lambda f: "/etc/passwd",
            "external data location /etc/passwd",
        ),
        external_case(
            "model-external-symlink",
            lambda f: "",
            symlink=True,
            note="weights.bin in the model folder is a symlink to a file outside it",
        ),
    ]


# -- policy cases --------------------------------------------------------------------


def text_policy(
    name: str,
    expected: tuple[int, ...],
    note: str,
    text: str | bytes,
    filename: str = "policy.yaml",
    checks: list[Check] | None = None,
    check: bool = True,
) -> list[Case]:
    """A policy written verbatim, run with `run` and (when ``check``) with `check`."""

    def setup(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_model(mlp(), folder / "model.onnx")
        write_data(folder)
        path = folder / filename
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    def make_run(folder: Path) -> Run:
        setup(folder)
        return run_policy(filename, checks=list(checks or []))

    def make_check(folder: Path) -> Run:
        setup(folder)
        return Run(
            ["check", filename], out=None, report=False, stale=False, checks=list(checks or [])
        )

    cases = [Case(name, "policy", expected, make_run, note)]
    if check:
        cases.append(Case(f"check:{name}", "check", expected, make_check, note))
    return cases


def dict_policy(
    name: str,
    expected: tuple[int, ...],
    note: str,
    filename: str = "policy.yaml",
    check: bool = True,
    **overrides: Any,
) -> list[Case]:
    policy = base_policy(**overrides)
    text = json.dumps(policy) if filename.endswith(".json") else yaml.safe_dump(policy)
    return text_policy(name, expected, note, text, filename, check=check)


VALID_HEAD = "version: 1\nmodel: {path: model.onnx}\ninputs: {x: {shape: [1, 16]}}\n" + (
    "measure: {max_seconds: 1, min_runs: 20, max_runs: 20, memory: false}\n"
)


def alias_bomb() -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        items = ",".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{items}]")
    # Under a known key, so a validator walks it and an error message may try to print it.
    return (
        VALID_HEAD
        + "x-anchors:\n"
        + "\n".join("  " + line for line in lines)
        + "\n"
        + ("budgets: *l9\n")
    )


def policy_cases() -> list[Case]:
    two = "expect 2: invalid policy"
    big_name = json.dumps(
        {
            "version": 1,
            "model": {"path": "model.onnx", "name": "A" * (20 << 20)},
            "measure": MEASURE,
        }
    )
    cases = [
        *text_policy("policy-invalid-yaml", (2,), two, VALID_HEAD + "budgets: [{metric: x\n"),
        *text_policy(
            "policy-alias-bomb", (2,), "billion laughs: must be refused, fast", alias_bomb()
        ),
        *text_policy(
            "policy-deep-yaml",
            (2,),
            "10000 nested lists",
            VALID_HEAD + "budgets: " + "[" * 10000 + "]" * 10000 + "\n",
        ),
        *text_policy(
            "policy-deep-json",
            (2,),
            "100000 nested JSON arrays",
            '{"version": 1, "model": {"path": "model.onnx"}, "budgets": '
            + "[" * 100000
            + "]" * 100000
            + "}",
            "policy.json",
        ),
        *text_policy(
            "policy-20mb",
            (2,),
            "20 MB JSON: a 20 MB model.name; the error must not echo it",
            big_name,
            "policy.json",
        ),
        *text_policy(
            "policy-python-tag",
            (2,),
            "!!python/object/apply:os.system must never run",
            VALID_HEAD + 'x: !!python/object/apply:os.system ["touch PWNED"]\n',
            checks=[no_file_named("PWNED")],
        ),
        *text_policy(
            "policy-python-name-tag",
            (2,),
            "!!python/name tag refused",
            VALID_HEAD + "budgets: !!python/name:os.system\n",
        ),
        *text_policy(
            "policy-wrong-types",
            (2,),
            two,
            'version: "1"\nmodel: {path: 7}\nbudgets: {metric: x}\nmeasure: 3\n',
        ),
        *text_policy("policy-unknown-key", (2,), two, VALID_HEAD + "modle: {path: x.onnx}\n"),
        *text_policy(
            "policy-model-path-dotdot",
            (2, 3),
            "model.path ../../etc/passwd",
            "version: 1\nmodel: {path: ../../../../../../../../etc/passwd}\n",
        ),
        *text_policy(
            "policy-model-path-absolute",
            (2, 3),
            "model.path /etc/passwd",
            "version: 1\nmodel: {path: /etc/passwd}\n",
        ),
        *text_policy(
            "policy-model-path-dev-zero",
            (2, 3),
            "model.path /dev/zero: endless",
            "version: 1\nmodel: {path: /dev/zero}\n",
            check=False,
        ),
        *text_policy(
            "policy-model-path-nul",
            (2,),
            "a NUL byte in model.path",
            'version: 1\nmodel: {path: "model\\0.onnx"}\n',
        ),
        *text_policy(
            "policy-model-path-long",
            (2,),
            "a 100000-character model.path",
            "version: 1\nmodel: {path: " + "a" * 100000 + ".onnx}\n",
        ),
        *text_policy(
            "policy-json-duplicate-key",
            (2,),
            "duplicate 'budgets' key: ambiguous",
            '{"version": 1, "model": {"path": "model.onnx"}, "budgets": [], '
            '"budgets": [{"metric": "accuracy_drop", "max": 0.5}]}',
            "policy.json",
        ),
        *text_policy(
            "policy-yaml-duplicate-key",
            (2,),
            "duplicate 'model' key: ambiguous",
            VALID_HEAD + "model: {path: other.onnx}\n",
        ),
        *text_policy("policy-empty", (2,), two, ""),
        *text_policy("policy-is-list", (2,), two, "- version: 1\n"),
        *text_policy(
            "policy-binary", (2,), "random bytes, invalid UTF-8", random.Random(3).randbytes(2048)
        ),
        *text_policy(
            "policy-utf16",
            (0, 2),
            "UTF-16 with a BOM: read or refused cleanly",
            VALID_HEAD.encode("utf-16"),
        ),
        *text_policy(
            "policy-nan-threshold",
            (2,),
            "max: .nan can never be decided",
            VALID_HEAD + "budgets: [{metric: top1_agreement, min: .nan}]\n",
        ),
        *text_policy(
            "policy-inf-runs",
            (2,),
            "min_runs: 1e400 (inf)",
            "version: 1\nmodel: {path: model.onnx}\nmeasure: {min_runs: 1e400}\n",
        ),
        *text_policy("policy-version-2", (2,), two, VALID_HEAD.replace("version: 1", "version: 2")),
        *text_policy(
            "policy-waiver-bad-date",
            (2,),
            "expires 9999-99-99 fits the pattern only",
            VALID_HEAD + "budgets: [{metric: top1_agreement, min: 0.5}]\n"
            "waivers: [{budget: top1_agreement, reason: because, owner: me, "
            "expires: '9999-99-99'}]\n",
        ),
        *dict_policy(
            "policy-unknown-quantizer",
            (2,),
            "expect 2: unknown plugin name",
            candidates=[{"name": "q", "quantize": {"plugin": "nope"}}],
        ),
        *dict_policy(
            "policy-unknown-metric",
            (1, 2),
            "a budget on a metric nobody produces",
            budgets=[{"metric": "no_such_metric", "max": 1}],
        ),
        *dict_policy(
            "policy-duplicate-candidates",
            (2,),
            "two candidates named int8",
            candidates=[{"name": "int8", "quantize": {"plugin": "dynamic"}}] * 2,
        ),
        *dict_policy(
            "policy-candidate-named-original",
            (2,),
            "'original' is reserved",
            candidates=[{"name": "original", "quantize": {"plugin": "dynamic"}}],
        ),
        *dict_policy(
            "policy-threads-overflow",
            (2, 3),
            "target.threads 2^31 overflows int32",
            target={"threads": 2**31},
        ),
        *dict_policy(
            "policy-timeout-huge",
            (0,),
            "build.timeout_s 1e300 is valid",
            build={"timeout_s": 1e300},
            check=False,
        ),
        *dict_policy(
            "policy-search-tiny",
            (0,),
            "search.max_seconds 1e-300 is valid",
            search={"max_seconds": 1e-300},
            check=False,
        ),
        *dict_policy(
            "policy-data-etc-passwd",
            (2,),
            "data.validation /etc/passwd",
            data={"validation": "/etc/passwd"},
            check=False,
        ),
        *dict_policy(
            "policy-data-dev-zero",
            (2,),
            "data.validation /dev/zero: endless",
            data={"validation": "/dev/zero"},
            check=False,
        ),
        *dict_policy(
            "policy-models-duplicate-names",
            (2,),
            "two models named a",
            model=None,
            models=[{"name": "a", "path": "model.onnx"}] * 2,
        ),
    ]
    cases += [
        Case(
            "policy-models-over-single-output",
            "policy",
            (0,),
            suite_over_single,
            "a models: run into a folder where a single-model run left model.onnx",
        ),
        Case(
            "policy-missing",
            "policy",
            (2,),
            lambda f: _mkdir_run(f, "nope.yaml"),
            "expect 2: the policy file does not exist",
        ),
        Case(
            "policy-is-directory",
            "policy",
            (2,),
            lambda f: _mkdir_run(f, "adir", mkdir=True),
            "expect 2: the policy is a folder",
        ),
    ]
    return cases


def suite_over_single(folder: Path) -> Run:
    standard(folder)
    write_policy(folder, base_policy(model=None, models=[{"name": "a", "path": "model.onnx"}]))
    return run_policy()


def _mkdir_run(folder: Path, policy: str, mkdir: bool = False) -> Run:
    folder.mkdir(parents=True, exist_ok=True)
    if mkdir:
        (folder / policy).mkdir()
    return run_policy(policy)


# -- command-line cases --------------------------------------------------------------


def cli_cases() -> list[Case]:
    def out_is_file(folder: Path) -> Run:
        standard(folder)
        (folder / "out").write_text("not a folder")
        return run_policy(report=False, stale=False)

    def out_is_model_folder(folder: Path) -> Run:
        standard(folder)
        return Run(["run", "policy.yaml", "-o", "."], out=None, report=False, stale=False)

    def shard(folder: Path) -> Run:
        standard(folder)
        return run_policy("policy.yaml", "--shard", "3/2")

    def from_missing(folder: Path) -> Run:
        standard(folder)
        return run_policy("policy.yaml", "--stage", "measure", "--from", "nowhere")

    def from_garbage(folder: Path) -> Run:
        standard(folder)
        stage = folder / "built" / "stage"
        stage.mkdir(parents=True)
        (folder / "built" / "report.json").write_text("{not json")
        (stage / "build.json").write_text('{"candidates": 7}')
        (stage / "original.onnx").write_bytes(b"garbage")
        return run_policy("policy.yaml", "--stage", "measure", "--from", "built")

    def compare_garbage(folder: Path) -> Run:
        for side, text in (("base", "{not json"), ("head", "[]")):
            (folder / side).mkdir(parents=True)
            (folder / side / "report.json").write_text(text)
        return Run(["compare", "base", "head", "-o", "cmp"], out=None, report=False, stale=False)

    def merge_garbage(folder: Path) -> Run:
        (folder / "s1").mkdir(parents=True)
        (folder / "s1" / "report.json").write_text('{"kind": "suite", "models": 5}')
        (folder / "s2").mkdir()
        return Run(["merge", "s1", "s2", "-o", "out"], report=False, stale=False)

    return [
        Case("cli-output-dir-is-file", "cli", (2,), out_is_file, "-o names a file"),
        Case(
            "cli-output-dir-holds-model",
            "cli",
            (2,),
            out_is_model_folder,
            "-o . would overwrite the policy's model.onnx",
        ),
        Case("cli-shard-3-of-2", "cli", (2,), shard, "--shard 3/2"),
        Case("cli-from-missing", "cli", (2,), from_missing, "--stage measure --from nowhere"),
        Case("cli-from-garbage", "cli", (2, 3), from_garbage, "--from a folder of garbage"),
        Case("cli-compare-garbage", "cli", (2,), compare_garbage, "compare two broken reports"),
        Case("cli-merge-garbage", "cli", (2, 3), merge_garbage, "merge broken shard folders"),
    ]


# -- data cases ----------------------------------------------------------------------


class Pwn:
    """Unpickling this runs a shell command: an .npz must never be loaded with pickle."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED_BY_NPZ",))


def npz_bomb_header(path: Path) -> None:
    """An .npz whose x.npy header claims 4 GB while the member holds 1 MB of zeros."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (64_000_000, FEATURES)}
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("x.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        member.write(bytes(1 << 20))


def npz_bomb_deflate(path: Path, gigabytes: float) -> None:
    """A real deflate bomb: gigabytes of zeros in ~1 MB per GB, written in chunks."""
    count = int(gigabytes * (1 << 30)) // 4
    chunk = bytes(16 << 20)
    header = {"descr": "<f4", "fortran_order": False, "shape": (1, count)}
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("x.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        left = count * 4
        while left > 0:
            member.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


def encrypted_npz(folder: Path) -> None:
    """A valid .npz with the zip 'encrypted' flag set on its member: zipfile refuses it."""
    x = np.random.default_rng(1).normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    np.savez(folder / "validation.npz", x=x)
    data = bytearray((folder / "validation.npz").read_bytes())
    data[data.find(b"PK\x03\x04") + 6] |= 1
    data[data.find(b"PK\x01\x02") + 8] |= 1
    (folder / "validation.npz").write_bytes(bytes(data))


def data_case(
    name: str,
    expected: tuple[int, ...],
    note: str,
    writer: Callable[[Path], None],
    checks: list[Check] | None = None,
    **overrides: Any,
) -> Case:
    def make(folder: Path) -> Run:
        standard(folder, **overrides)
        writer(folder)
        return run_policy(checks=list(checks or []))

    return Case(name, "data", expected, make, note)


def data_cases(bomb_gb: float) -> list[Case]:
    x = np.random.default_rng(1).normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    val = "validation.npz"

    def npz(**arrays: Any) -> Callable[[Path], None]:
        return lambda folder: np.savez(folder / val, **arrays)

    def labels(array: Any) -> Callable[[Path], None]:
        return lambda folder: np.save(folder / "labels.npy", array, allow_pickle=True)

    def raw(data: bytes, name: str = val) -> Callable[[Path], None]:
        return lambda folder: (folder / name).write_bytes(data)

    pickled = np.array([Pwn(), 1], dtype=object)
    nan = x.copy()
    nan[0, 0], nan[1, 1] = np.nan, np.inf
    two = "expect 2: data does not fit the model"
    static = [{"name": "static", "quantize": {"plugin": "static"}}]
    return [
        data_case(
            "data-npz-pickled-object",
            (2,),
            "object array whose unpickling runs code",
            npz(x=pickled),
            [no_file_named("PWNED")],
        ),
        data_case("data-npz-empty", (2,), "an .npz with no arrays", npz()),
        data_case("data-npz-encrypted", (2,), "an .npz flagged encrypted", encrypted_npz),
        data_case("data-npz-empty-file", (2,), "a 0-byte .npz", raw(b"")),
        data_case(
            "data-npz-not-zip",
            (2,),
            "random bytes named .npz",
            raw(random.Random(5).randbytes(1000)),
        ),
        data_case("data-npz-wrong-shape", (2,), two, npz(x=x[:, :15])),
        data_case("data-npz-wrong-key", (2,), "array named y, input is x", npz(y=x)),
        data_case("data-npz-extra-key", (0, 2), "an extra array z", npz(x=x, z=x)),
        data_case(
            "data-npz-float64",
            (0, 2),
            "float64 for a float input: cast or refuse",
            npz(x=x.astype(np.float64)),
        ),
        data_case("data-npz-strings", (2,), two, npz(x=x.astype(str))),
        data_case("data-npz-complex", (2,), two, npz(x=x.astype(np.complex64))),
        data_case("data-npz-nan-inf", (0, 1, 2), "NaN and Inf inputs", npz(x=nan)),
        data_case("data-npz-zero-samples", (2,), "shape [0, 16]", npz(x=x[:0])),
        data_case(
            "data-npy-not-npz",
            (2,),
            "an .npy where an .npz belongs",
            lambda folder: (
                np.save(folder / val, x) or os.replace(folder / (val + ".npy"), folder / val)
            ),
        ),
        data_case(
            "data-npz-bomb-header",
            (2,),
            "x.npy header claims 4 GB, holds 1 MB",
            lambda folder: npz_bomb_header(folder / val),
            [under_seconds(30)],
        ),
        data_case(
            "data-npz-bomb-deflate",
            (2,),
            f"{bomb_gb:g} GB of zeros deflated, wrong shape: refuse without inflating it",
            lambda folder: npz_bomb_deflate(folder / val, bomb_gb),
            [under_seconds(30)],
        ),
        data_case(
            "data-labels-wrong-length",
            (2,),
            "31 labels for 32 samples",
            labels(np.zeros(SAMPLES - 1, np.int64)),
        ),
        data_case(
            "data-labels-pickled",
            (2,),
            "object labels whose unpickling runs code",
            labels(pickled),
            [no_file_named("PWNED")],
        ),
        data_case("data-labels-float", (2,), "float labels", labels(np.zeros(SAMPLES) + 0.5)),
        data_case(
            "data-labels-2d", (2,), "labels [32, 4]", labels(np.zeros((SAMPLES, CLASSES), np.int64))
        ),
        data_case(
            "data-labels-out-of-range",
            (0, 1, 2),
            "labels 999 for 4 classes",
            labels(np.full(SAMPLES, 999, np.int64)),
        ),
        data_case(
            "data-calibration-wrong-shape",
            (0, 2),
            "static candidate; calibration [8, 15]",
            lambda folder: np.savez(folder / "calibration.npz", x=x[:8, :15]),
            candidates=static,
            data={"validation": val, "labels": "labels.npy", "calibration": "calibration.npz"},
        ),
        data_case(
            "data-path-outside",
            (2,),
            "data.validation ../../../../etc/passwd",
            lambda folder: None,
            data={"validation": "../../../../../../../etc/passwd"},
        ),
    ]


# -- injected faults -----------------------------------------------------------------


def fault_policy(folder: Path, mode: str, **build: Any) -> Path:
    candidates = [
        {"name": "fault", "quantize": {"plugin": "fault", "mode": mode}},
        {"name": "int8", "quantize": {"plugin": "dynamic"}},
    ]
    return standard(folder, candidates=candidates, build={"timeout_s": 30, **build})


def fault_env(folder: Path, **extra: str) -> dict[str, str]:
    return {
        "ONNX_GATE_PLUGINS": "fault_plugin",
        "ONNX_GATE_FAULT_PIDFILE": str(folder / "pids.txt"),
        **extra,
    }


def fault_case(mode: str, note: str, checks: list[Check] | None = None, **build: Any) -> Case:
    def make(folder: Path) -> Run:
        fault_policy(folder, mode, **build)
        return run_policy(
            env=fault_env(folder), failed_candidate="fault", checks=list(checks or [])
        )

    return Case(
        f"fault-{mode}" + ("-inprocess" if build.get("isolate") is False else ""),
        "fault",
        (0, 1, 4),
        make,
        note,
    )


def plugin_case(name: str, env: dict[str, str], note: str) -> Case:
    def make(folder: Path) -> Run:
        fault_policy(folder, "ok")
        return run_policy(env={**fault_env(folder), **env})

    return Case(name, "fault", (3,), make, note)


def fault_cases() -> list[Case]:
    survive = "the candidate fails, the run goes on"
    return [
        fault_case("exception", survive),
        fault_case("segfault", "SIGSEGV in the build child: " + survive),
        fault_case("abort", "SIGABRT in the build child: " + survive),
        fault_case("sigkill", "SIGKILL (as the OOM killer): " + survive),
        fault_case(
            "oom", "build.memory_mb 1024, quantiser allocates until MemoryError", memory_mb=1024
        ),
        # 8 s, not less: the real int8 candidate after the fault imports
        # onnxruntime.quantization in a fresh child (about 2 s), which a loaded 2-core
        # runner must not take for a hang.
        fault_case("hang", "build.timeout_s 8: killed at 8 s", [under_seconds(35)], timeout_s=8),
        fault_case(
            "hang-child",
            "build.timeout_s 8; the grandchild must die too",
            [under_seconds(35)],
            timeout_s=8,
        ),
        fault_case(
            "spin",
            "busy loop ignoring SIGTERM/SIGINT; build.timeout_s 8",
            [under_seconds(35)],
            timeout_s=8,
        ),
        fault_case("exit0", "the build child exits 0 without a result"),
        fault_case("garbage", "the quantiser writes random bytes as the model"),
        fault_case("no-output", "the quantiser writes nothing"),
        fault_case("stderr-flood", "20 MB on stderr without a newline, exit 1", [short_messages()]),
        fault_case("exception", "build.isolate false: " + survive, isolate=False),
        plugin_case(
            "plugin-import-error",
            {"ONNX_GATE_FAULT_IMPORT": "1"},
            "expect 3: a plugin failed to load",
        ),
        plugin_case(
            "plugin-register-error",
            {"ONNX_GATE_FAULT_REGISTER": "1"},
            "expect 3: a plugin's hook raised",
        ),
        plugin_case(
            "plugin-missing-module",
            {"ONNX_GATE_PLUGINS": "no_such_plugin_module"},
            "expect 3: ONNX_GATE_PLUGINS names a module that does not exist",
        ),
    ]


# -- signals -------------------------------------------------------------------------


SLOW_MEASURE = {
    "max_seconds": 60,
    "min_seconds": 60,
    "min_runs": 10**6,
    "max_runs": 10**6,
    "memory": False,
}


def signal_case(
    name: str,
    signum: int,
    phase: str,
    group: bool = False,
    repeat: float | None = None,
    suite: bool = False,
) -> Case:
    def make(folder: Path) -> Run:
        if phase == "build":
            fault_policy(folder, "hang-child", timeout_s=120)
            pattern = r"building fault"
        else:
            standard(folder, measure=dict(SLOW_MEASURE))
            pattern = r"measuring"
        if suite:
            policy = base_policy(
                model=None,
                measure=dict(SLOW_MEASURE),
                models=[{"name": "a", "path": "model.onnx"}, {"name": "b", "path": "model.onnx"}],
            )
            write_policy(folder, policy)
        plan = SignalPlan(signum, pattern, 0.5, group, repeat)
        return run_policy(
            env=fault_env(folder), partial=True, signal=plan, checks=[under_seconds(30)]
        )

    how = "to the process group (Ctrl-C)" if group else "to the gate's pid (CI timeout)"
    twice = f", again {repeat:g} s later" if repeat else ""
    note = f"{signal.Signals(signum).name} {how} while {phase}ing{twice}: exit 3, partial report"
    return Case(name, "signal", (3,), make, note)


def signal_cases() -> list[Case]:
    return [
        signal_case("sigterm-while-building", signal.SIGTERM, "build"),
        signal_case("sigint-while-building", signal.SIGINT, "build", group=True),
        signal_case("sigterm-while-measuring", signal.SIGTERM, "measur"),
        signal_case("sigint-while-measuring", signal.SIGINT, "measur", group=True),
        signal_case("sigint-twice-while-measuring", signal.SIGINT, "measur", True, 0.05),
        signal_case("sigterm-twice-while-building", signal.SIGTERM, "build", False, 0.05),
        signal_case("sigterm-suite-while-measuring", signal.SIGTERM, "measur", suite=True),
    ]


# -- files that are not regular files, and lists without end -------------------------

CANARY = "ONNXGATE-CANARY-7f3a9c"
"""Set in the gate's environment: it must never reach an output (/proc/self/environ)."""
SPECIAL_CAP_GB = 2.0
"""Address space for the cases that read without end if a limit is missing."""


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the file stays after the socket is closed


def _link(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


SPECIAL_FILES: dict[str, Callable[[Path], None]] = {
    "dev-zero": _link("/dev/zero"),
    "dev-urandom": _link("/dev/urandom"),
    "fifo": _fifo,
    "socket": _socket,
    "proc-environ": _link("/proc/self/environ"),
    "proc-mem": _link("/proc/self/mem"),
    "proc-kmsg": _link("/proc/kmsg"),
}


def canary_absent(folder: Path, result: dict[str, Any]) -> list[str]:
    """The gate's environment (read through /proc/self/environ) must not reach any output."""
    found = [
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and CANARY.encode() in path.read_bytes()
    ]
    return [f"the environment's canary is in {', '.join(found[:3])}"] if found else []


def special_run(*args: str, checks: list[Check] | None = None, **run: Any) -> Run:
    return Run(
        list(args),
        env={"ONNX_GATE_CANARY": CANARY},
        memory_cap_gb=SPECIAL_CAP_GB,
        checks=[under_seconds(30), canary_absent, *(checks or [])],
        **run,
    )


def special_policy_case(kind: str, command: str) -> Case:
    def make(folder: Path) -> Run:
        standard(folder)
        (folder / "policy.yaml").unlink()
        SPECIAL_FILES[kind](folder / "policy.yaml")
        if command == "check":
            return special_run("check", "policy.yaml", out=None, report=False, stale=False)
        # No output folder yet: the report must still be written where it was meant to be.
        return special_run("run", "policy.yaml", "-o", "new/out", out="new/out", stale=False)

    prefix = "check:" if command == "check" else ""
    return Case(
        f"{prefix}file-policy-{kind}", "file", (2,), make,
        f"policy.yaml is {kind}: one line, exit 2, report, bounded memory",
    )  # fmt: skip


def special_data_case(key: str, kind: str) -> Case:
    """model.path or data.KEY is a special file; devices and /proc need --allow-path to get
    past the repository fence, so they are allowed here to reach the file check itself."""

    def make(folder: Path) -> Run:
        standard(folder)
        name = "thing.onnx" if key == "model" else "thing.npz"
        SPECIAL_FILES[kind](folder / name)
        policy = base_policy()
        if key == "model":
            policy["model"] = {"path": name}
        else:
            policy["data"] = {**policy["data"], key: name}
        write_policy(folder, policy)
        allow = ["--allow-path", "/dev", "--allow-path", "/proc"]
        return special_run("run", "policy.yaml", "-o", "out", *allow)

    return Case(
        f"file-{key}-{kind}", "file", (2,), make, f"{key} is {kind}: exit 2 on its policy line"
    )


def file_cases() -> list[Case]:
    def external_fifo(folder: Path) -> Run:
        standard(folder, model=mlp(external="w1.bin"))
        (folder / "w1.bin").unlink(missing_ok=True)
        _fifo(folder / "w1.bin")
        return special_run("run", "policy.yaml", "-o", "out")

    def link_out_of_repo(folder: Path) -> Run:
        repo, elsewhere = folder / "repo", folder / "elsewhere"
        (repo / ".git").mkdir(parents=True)
        standard(elsewhere)
        (repo / "policy.yaml").symlink_to(elsewhere / "policy.yaml")
        return special_run("run", "policy.yaml", "-o", "out", cwd="repo")

    def report_fifo(folder: Path) -> Run:
        standard(folder)
        (folder / "out").mkdir()
        _fifo(folder / "out" / "report.json")  # read to find the earlier run's model
        return special_run("run", "policy.yaml", "-o", "out", checks=[under_seconds(120)])

    def output_links(folder: Path) -> Run:
        standard(folder)
        (folder / "out").mkdir()
        for name in ("model.onnx", "timing-input.npz"):
            (folder / f"victim-{name}").write_text("untouched")
            (folder / "out" / name).symlink_to(folder / f"victim-{name}")

        def untouched(folder: Path, result: dict[str, Any]) -> list[str]:
            hit = [p.name for p in folder.glob("victim-*") if p.read_text() != "untouched"]
            return [f"written through a link in the output folder: {', '.join(hit)}"] if hit else []

        return special_run(
            "run", "policy.yaml", "-o", "out", checks=[untouched, under_seconds(120)]
        )

    def compare_fifo(folder: Path) -> Run:
        for side in ("base", "head"):
            (folder / side).mkdir()
            _fifo(folder / side / "report.json")
        return special_run("compare", "base", "head", "-o", "cmp", out=None, report=False)

    def from_fifo(folder: Path) -> Run:
        standard(folder)
        (folder / "built" / "stage").mkdir(parents=True)
        _fifo(folder / "built" / "report.json")
        _fifo(folder / "built" / "stage" / "build.json")
        return special_run(
            "run", "policy.yaml", "--stage", "measure", "--from", "built", "-o", "out"
        )

    def many_arrays(folder: Path) -> Run:
        standard(folder)
        arrays = {f"a{i}": np.zeros(1, np.float32) for i in range(20_000)}
        np.savez(folder / "validation.npz", **arrays)
        return special_run("run", "policy.yaml", "-o", "out", checks=[short_messages(1000)])

    def long_line(folder: Path) -> Run:
        standard(folder)
        text = VALID_HEAD + "budgets: [{metric: '" + "m" * 900_000 + "', max: 1}]\n"
        (folder / "policy.yaml").write_text(text)
        return special_run("run", "policy.yaml", "-o", "out")

    def million_budgets(folder: Path) -> Run:
        standard(folder)
        budgets = [{"metric": "size_mb", "max": 5}] * 1_000_000
        write_policy(folder, base_policy(budgets=budgets), "policy.json")
        return special_run("run", "policy.json", "-o", "out")

    def thousand_budgets(folder: Path) -> Run:
        standard(folder, budgets=[{"metric": "size_mb", "max": 100 + i} for i in range(1000)])
        return special_run("run", "policy.yaml", "-o", "out", checks=[under_seconds(120)])

    def failing_budgets(folder: Path) -> Run:
        standard(
            folder, budgets=[{"metric": "size_mb", "max": 1e-9 * (i + 1)} for i in range(1000)]
        )

        def summary_bounded(folder: Path, result: dict[str, Any]) -> list[str]:
            summary = folder / "out" / "summary.md"
            longest = max(map(len, summary.read_text().splitlines()), default=0)
            return (
                [f"summary.md has a line of {longest:,} characters"]
                if longest > MAX_CONSOLE_LINE
                else []
            )

        return special_run(
            "run", "policy.yaml", "-o", "out", checks=[summary_bounded, under_seconds(120)]
        )

    def same_model(count: int) -> Callable[[Path], Run]:
        def make(folder: Path) -> Run:
            standard(folder)
            models = [{"name": f"m{i}", "path": "model.onnx"} for i in range(count)]
            write_policy(folder, base_policy(model=None, models=models), "policy.json")
            if count <= 1000:  # valid: the job's timeout is the backstop; SIGTERM it early
                plan = SignalPlan(signal.SIGTERM, r"model 3/", 0.2)
                return special_run("run", "policy.json", "-o", "out", partial=True, signal=plan)
            return special_run("run", "policy.json", "-o", "out")

        return make

    cases = [
        *(
            special_policy_case(kind, command)
            for kind in SPECIAL_FILES
            for command in ("run", "check")
        ),
        *(
            special_data_case(key, kind)
            for key in ("model", "validation", "calibration", "labels")
            for kind in ("fifo", "socket", "dev-zero", "proc-environ")
        ),
        Case("file-external-data-fifo", "file", (3,), external_fifo, "external data is a FIFO"),
        Case(
            "file-policy-link-out-of-repo",
            "file",
            (2,),
            link_out_of_repo,
            "policy.yaml in a repository links to a policy outside it",
        ),
        Case(
            "file-output-report-fifo",
            "file",
            (0,),
            report_fifo,
            "the output folder holds a FIFO named report.json: the run replaces it",
        ),
        Case(
            "file-output-links",
            "file",
            (0,),
            output_links,
            "the output folder holds links named model.onnx and timing-input.npz: replaced",
        ),
        Case("file-compare-fifo", "file", (2,), compare_fifo, "compare two FIFOs"),
        Case("file-from-fifo", "file", (2,), from_fifo, "--from a folder of FIFOs"),
        Case(
            "long-data-20000-arrays",
            "long",
            (2,),
            many_arrays,
            "20,000 arrays and no 'x': names capped ('and N more')",
        ),
        Case("long-policy-line", "long", (2,), long_line, "a 900,000-character metric name"),
        Case("long-10^6-budgets", "long", (2,), million_budgets, "10^6 budgets (33 MB of JSON)"),
        Case(
            "long-1000-budgets",
            "long",
            (0,),
            thousand_budgets,
            "1,000 distinct budgets, all met: bounded time and console",
        ),
        Case(
            "long-1000-failing-budgets",
            "long",
            (1,),
            failing_budgets,
            "1,000 budgets, all missed: the console, summary.md and annotations stay bounded",
        ),
        Case(
            "long-models-same-file-10000",
            "long",
            (2,),
            same_model(10_000),
            "models: names one file 10,000 times (over the schema's 1,000)",
        ),
        Case(
            "long-models-same-file-1000",
            "long",
            (3,),
            same_model(1000),
            "models: names one file 1,000 times (valid): SIGTERM on the third, partial report",
        ),
    ]
    return cases


# -- random policies -----------------------------------------------------------------

RANDOM_STRINGS = [
    "",
    "a",
    "auto",
    "model.onnx",
    "validation.npz",
    "labels.npy",
    "../../etc/passwd",
    "/etc/passwd",
    "cpu",
    "cuda",
    "dynamic",
    "static",
    "fp16",
    "ort",
    "all",
    "off",
    "warn",
    "accuracy_drop",
    "speedup",
    "latency_ms.p95",
    "budgets[0]",
    "2024-01-01",
    "9999-12-31",
    "ünïcødé ✓",
    "\u202e",
    "${HOME}",
    "%s%n",
    "-1",
    "nan",
    "null",
    "~",
    "a" * 5000,
    "\t\n",
]
RANDOM_NUMBERS = [
    0,
    1,
    -1,
    2,
    3,
    7,
    0.5,
    -0.5,
    1e-300,
    1e300,
    2**31,
    2**63,
    -(2**63),
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
]
KEYS = [
    "version",
    "model",
    "models",
    "inputs",
    "data",
    "target",
    "baseline",
    "candidates",
    "search",
    "build",
    "validation",
    "budgets",
    "waivers",
    "regressions",
    "measure",
    "selection",
    "path",
    "name",
    "metric",
    "max",
    "min",
    "level",
    "plugin",
    "quantize",
    "graph",
    "shape",
    "range",
    "threads",
    "provider",
    "timeout_s",
    "memory_mb",
    "isolate",
    "exclude",
    "x",
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.35:
        return rng.choice(RANDOM_NUMBERS)
    if roll < 0.65:
        return rng.choice(RANDOM_STRINGS)
    if roll < 0.8:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def mutate(document: dict[str, Any], rng: random.Random) -> None:
    path = rng.choice(_paths(document)[1:])
    parent: Any = document
    for step in path[:-1]:
        parent = parent[step]
    key, roll = path[-1], rng.random()
    if roll < 0.5:
        parent[key] = random_value(rng)
    elif roll < 0.65 and isinstance(parent, dict):
        del parent[key]
    elif roll < 0.8 and isinstance(parent, dict):
        parent[rng.choice(KEYS)] = random_value(rng)
    elif roll < 0.9:
        parent[key] = [parent[key]]
    else:
        parent[key] = {rng.choice(KEYS): parent[key]}


def bounded(document: Any) -> Any:
    """Keep random policies quick: mutations test validation, not patience."""
    if not isinstance(document, dict):
        return document
    measure = document.get("measure")
    if isinstance(measure, dict):
        for key, cap in (
            ("max_seconds", 1),
            ("min_seconds", 0.5),
            ("warmup_runs", 5),
            ("min_runs", 20),
            ("max_runs", 20),
        ):
            value = measure.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
                measure[key] = cap
    for section, key, cap in (
        ("data", "samples", 256),
        ("target", "threads", 8),
        ("search", "max_trials", 4),
    ):
        part = document.get(section)
        if isinstance(part, dict):
            value = part.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                part[key] = cap
    if document.get("candidates") == "auto" or (
        "candidates" not in document and isinstance(document.get("search"), dict)
    ):
        document.setdefault("search", {})
        if isinstance(document["search"], dict):
            document["search"]["max_trials"] = 2
    return document


NAN, INF = float("nan"), float("inf")
BUDGET = {"metric": "accuracy_drop", "max": 0.5}
WAIVER = {"budget": "budgets[0]", "reason": "because", "owner": "me", "expires": "2999-01-01"}
# Edits that keep the policy plausible, so random documents get past the schema and reach
# the code behind it: each (path, values) sets one setting to a value of the right kind.
PLAUSIBLE: list[tuple[tuple[str, ...], list[Any]]] = [
    (("target", "threads"), [0, 1, 2, 3, 64]),
    (("target", "provider"), ["cpu", "cuda", "tensorrt", "openvino", "coreml", "nope"]),
    (("target", "usd_per_hour"), [0.1, 1e-300, 1e300]),
    (("target", "fallback"), [True, False]),
    (("target", "provider_options"), [{}, {"ort": {"x": "1"}}, {"device_id": 7}]),
    (("build", "timeout_s"), [0.001, 1, 30, 1e300]),
    (("build", "memory_mb"), [64, 100, 1024, 2**40]),
    (("build", "isolate"), [True, False]),
    (("selection", "min_gain"), [0, 0.05, 1e300]),
    (("measure", "burst"), [0, 1, 5, 1000]),
    (("measure", "warmup_runs"), [0, 1, 5]),
    (("measure", "confidence"), [0.5, 0.999]),
    (("measure", "session_noise"), [0, 0.5]),
    (("measure", "on_inconclusive"), ["inconclusive", "warn", "fail"]),
    (("measure", "batch"), [1, 2, 1000]),
    (("measure", "min_seconds"), [0, 0.5]),
    (("measure", "memory"), [True, False]),
    (("search", "fallback"), [True, False]),
    (("search", "max_fallbacks"), [0, 1, 20]),
    (("search", "exclude"), [["fp16"], ["dynamic"], ["nope"]]),
    (
        ("candidates",),
        [
            "auto",
            [{"name": "s", "quantize": {"plugin": "static", "per_channel": True}}],
            [
                {
                    "name": "d",
                    "quantize": {
                        "plugin": "dynamic",
                        "weight_type": "uint8",
                        "nodes_to_exclude": ["nope"],
                    },
                }
            ],
            [{"name": "g", "graph": {"level": "disabled"}}],
            [{"name": "t", "rewrite": {"plugin": "transformer"}}],
            [{"name": "f", "quantize": {"plugin": "fp16"}}],
            [{"name": "o", "graph": {"plugin": "ort", "level": "all", "save_optimized": True}}],
        ],
    ),
    (("validation", "output"), ["y", "nope"]),
    (("validation", "validators"), [["agreement"], ["nope"], []]),
    (("baseline", "graph", "level"), ["disabled", "basic", "all"]),
    (("inputs", "x", "shape"), [[1, 16], [2, 16], [1, 15], [16], [1, 1, 16], [1000, 16]]),
    (("inputs", "x", "range"), [[0, 1], [1, 0], [NAN, INF], [-1e300, 1e300]]),
    (("inputs", "nope"), [{"shape": [1]}]),
    (("data", "samples"), [1, 2, 256]),
    (("data", "seed"), [0, -1, 2**63]),
    (("data", "calibration"), ["calibration.npz", "validation.npz", "labels.npy", "model.onnx"]),
    (("data", "validation"), ["calibration.npz", "labels.npy", "model.onnx", "policy.yaml"]),
    (("data", "labels"), ["labels.npy", "validation.npz"]),
    (("data", "calibration_samples"), [0, 1, 2**31]),
    (
        ("budgets",),
        [
            [],
            [{"metric": "speedup", "min": 1.2}],
            [{"metric": "latency_ms.p99", "max": 0.001, "aggregation": "pessimistic"}],
            [{"metric": "peak_memory_mb", "max": 1}],
            [{"metric": "usd_per_million", "max": 1}],
            [{"metric": "accuracy", "min": 2}],
            [BUDGET, {"metric": "top1_agreement", "min": 0.9, "level": "off"}],
        ],
    ),
    (
        ("waivers",),
        [
            [WAIVER],
            [{**WAIVER, "budget": "budgets[99]"}],
            [{**WAIVER, "expires": "2000-01-01"}],
            [{**WAIVER, "model": "nope"}],
        ],
    ),
    (("regressions",), [[{"metric": "speedup", "max_drop": 0.05}]]),
    (("model", "name"), ["m", "a" * 64, "..", "-x"]),
    (("model", "exporter"), ["onnx", "sklearn", "torch", "nope"]),
    (("model", "options"), [{}, {"x": 1}]),
    (("model", "trusted"), [True, False]),
]


def plausible_edit(document: dict[str, Any], rng: random.Random) -> None:
    path, values = rng.choice(PLAUSIBLE)
    parent = document
    for step in path[:-1]:
        if not isinstance(parent.get(step), dict):
            parent[step] = {}
        parent = parent[step]
    parent[path[-1]] = json.loads(json.dumps(rng.choice(values)))  # a copy, NaN included


def random_policy_text(seed: int) -> tuple[str, str]:
    """Seeded: 40% plausible edits, 40% blind mutations of the base policy, 20% noise."""
    rng = random.Random(seed)
    roll = rng.random()
    if roll < 0.2:
        document: Any = random_value(rng)
    else:
        document = base_policy()
        for _ in range(rng.randint(1, 4)):
            (plausible_edit if roll < 0.6 else mutate)(document, rng)
    document = bounded(document)
    if rng.random() < 0.5:
        return "policy.json", json.dumps(document)
    return "policy.yaml", yaml.safe_dump(document, allow_unicode=True)


def random_cases(count: int) -> list[Case]:
    def case(seed: int) -> Case:
        def make(folder: Path) -> Run:
            save_model(mlp(), folder / "model.onnx")
            write_data(folder)
            filename, text = random_policy_text(seed)
            (folder / filename).write_text(text)
            return run_policy(filename, stale=seed % 2 == 0)

        return Case(
            f"random-{seed:04d}",
            "random",
            (0, 1, 2, 3, 4),
            make,
            f"seeded random policy {seed}: any documented code, cleanly",
        )

    return [case(seed) for seed in range(count)]


# -- running one case ----------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# Sets a soft address-space cap, then becomes the gate (same pid, so signals and wait4 hold).
# Only the soft limit: the gate's build children lower the hard one themselves (build.memory_mb).
LAUNCHER = (
    "import os, resource, sys\n"
    "cap = int(sys.argv[1])\n"
    "if cap > 0:\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'gate', *sys.argv[2:]])\n"
)


def run_case(case: Case, root: Path, memory_cap: int) -> Result:
    folder = root / re.sub(r"[^A-Za-z0-9_.-]", "_", case.name)
    folder.mkdir(parents=True)
    result = Result(case.name, case.category, list(case.expected), case.note, command="")
    try:
        spec = case.make(folder)
    except Exception as exc:  # a harness bug: say so, never count it as the gate's
        result.defects.append(f"HARNESS: could not build the case: {type(exc).__name__}: {exc}")
        return result
    cwd = folder / spec.cwd
    out = cwd / spec.out if spec.out else None
    if out is not None and spec.stale and not out.exists():
        out.mkdir(parents=True)
        # As an earlier passing run leaves them: the report records the model's digest,
        # which is what lets the gate know it may delete that model.
        (out / "model.onnx").write_bytes(STALE_MODEL)
        stale = {
            "stale": True,
            "verdict": "pass",
            "exit_code": 0,
            "output_model": {"sha256": hashlib.sha256(STALE_MODEL).hexdigest()},
        }
        (out / "report.json").write_text(json.dumps(stale))
    tmp = root / ".tmp" / folder.name  # the gate's TMPDIR: it must be empty afterwards
    tmp.mkdir(parents=True)
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "PYTHONPATH": os.pathsep.join([str(BENCH), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("ONNX_GATE_PLUGINS", None)
    env.update(spec.env)
    shown_env = " ".join(f"{k}={v}" for k, v in spec.env.items() if "PIDFILE" not in k)
    result.command = f"cd {folder.name} && {shown_env + ' ' if shown_env else ''}" + (
        "PYTHONPATH=bench onnx-gate "
        + " ".join(a if len(a) < 80 else a[:77] + "..." for a in spec.args)
    )
    for name in ("policy.yaml", "policy.json", "m/policy.yaml"):
        path = folder / name
        if path.is_file() and not path.is_symlink():  # never /proc/kmsg, which blocks
            with path.open("rb") as stream:
                result.policy = stream.read(1500).decode("utf-8", "replace")
            break
    stdout_path, stderr_path = folder / ".stdout", folder / ".stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        started = time.monotonic()
        if spec.memory_cap_gb is not None:
            tighter = int(spec.memory_cap_gb * (1 << 30))
            memory_cap = min(memory_cap, tighter) if memory_cap > 0 else tighter
        result.memory_cap_gb = round(memory_cap / (1 << 30), 2)
        process = _spawn(spec, cwd, env, stdout, stderr, memory_cap)
        status, rusage = _supervise(process.pid, spec, stderr_path, started, result)
        process.returncode = os.waitstatus_to_exitcode(status) if status is not None else -9
    result.seconds = round(time.monotonic() - started, 2)
    if status is not None and not result.hung:
        result.exit = os.waitstatus_to_exitcode(status)
    result.peak_rss_mb = round(rusage.ru_maxrss / 1024, 1) if rusage else 0.0
    _judge(result, spec, folder, out, tmp, stdout_path, stderr_path, case)
    return result


def _spawn(
    spec: Run, cwd: Path, env: dict[str, str], stdout: Any, stderr: Any, memory_cap: int
) -> Any:
    import subprocess

    # The cap keeps a bomb that works from taking the host down; no preexec_fn, since
    # this process has threads.
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(memory_cap), *spec.args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,  # its own group: a timeout kills everything it started
    )


def _supervise(
    pid: int, spec: Run, stderr_path: Path, started: float, result: Result
) -> tuple[int | None, Any]:
    """Wait for the gate (os.wait4 for its peak RSS), sending the planned signals."""
    sent: float | None = None
    repeated = False
    while True:
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            return status, rusage
        elapsed = time.monotonic() - started
        if elapsed > spec.timeout:
            result.hung = True
            _killpg(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            return None, rusage
        plan = spec.signal
        if plan is not None:
            if sent is None and re.search(plan.after, stderr_path.read_text(errors="replace")):
                time.sleep(plan.delay)
                _send(pid, plan)
                sent = time.monotonic()
            elif (
                sent is not None
                and plan.repeat_after is not None
                and not repeated
                and time.monotonic() - sent >= plan.repeat_after
            ):
                _send(pid, plan)
                repeated = True
        time.sleep(0.02)


def _send(pid: int, plan: SignalPlan) -> None:
    with contextlib.suppress(ProcessLookupError):
        if plan.group:
            os.killpg(pid, plan.signum)
        else:
            os.kill(pid, plan.signum)


def _killpg(pid: int, signum: int) -> bool:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _judge(
    result: Result,
    spec: Run,
    folder: Path,
    out: Path | None,
    tmp: Path,
    stdout_path: Path,
    stderr_path: Path,
    case: Case,
) -> None:
    stdout = stdout_path.read_text(errors="replace")
    stderr = stderr_path.read_text(errors="replace")
    result.stderr_tail = stderr[-1500:]
    result.in_range = result.exit is not None and 0 <= result.exit <= 4
    result.as_expected = result.exit in case.expected
    result.traceback = "Traceback (most recent call last)" in stdout + stderr
    result.internal_error = "internal error" in stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith(("error:", "Error:"))]
    if not errors:  # `run` prints its error lines with the verdict, on stdout
        errors = [line for line in stdout.splitlines() if line.startswith(("error:", "Error:"))]
        result.error_stream = "stdout" if errors else ""
    else:
        result.error_stream = "stderr"
    if not errors and spec.partial:  # an interrupted run says so on a line of its own
        errors = [line for line in stderr.splitlines() if line.startswith("onnx-gate: interr")]
        result.error_stream = "stderr" if errors else ""
    result.error_lines = len(errors)
    result.error_line = errors[0] if errors else ""
    result.stray_stderr = [
        line[:200] for line in stderr.splitlines() if not KNOWN_STDERR.match(line)
    ][:5]
    defects = result.defects
    if result.hung:
        defects.append(f"hung: killed after {spec.timeout:g} s")
    elif not result.in_range:
        defects.append(f"exit {result.exit} is outside the documented 0..4")
    elif not result.as_expected:
        defects.append(f"exit {result.exit}, expected {'/'.join(map(str, case.expected))}")
    if result.traceback:
        defects.append("traceback on the console")
    if result.internal_error:
        defects.append("'internal error': an unexpected exception inside the gate")
    if result.exit in (2, 3) and not result.hung:
        if not errors:
            defects.append("exit 2/3 without an 'error:' line")
        elif len(result.error_line) > 500:
            defects.append(f"error line is {len(result.error_line)} characters long")
    if len(stderr) > 200_000:
        defects.append(f"stderr is {len(stderr)} characters")
    longest = max((len(line) for line in (stdout + stderr).splitlines()), default=0)
    if longest > MAX_CONSOLE_LINE:
        defects.append(f"a console line of {longest:,} characters")
    if result.stray_stderr:
        defects.append(f"stray stderr: {result.stray_stderr[0][:100]}")
    if out is not None:
        _judge_output(result, spec, out)
    # onnxruntime itself drops a telemetry session file, .ses, in TMPDIR on import.
    left_tmp = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.name != ".ses")
    if left_tmp and not result.hung:
        defects.append(f"left in TMPDIR: {', '.join(left_tmp[:3])}")
    _judge_processes(result, folder)
    for check in spec.checks:
        defects += check(folder, asdict(result))


def _judge_output(result: Result, spec: Run, out: Path) -> None:
    defects = result.defects
    if out.is_dir():
        result.leftovers = sorted(
            str(p.relative_to(out)) for p in out.rglob("*") if TEMP_NAME.search(p.name)
        )
        if result.leftovers:
            defects.append(f"temporary file(s) left in the output: {', '.join(result.leftovers)}")
        stale_model = out / "model.onnx"
        if stale_model.is_file() and stale_model.read_bytes().startswith(STALE_MODEL):
            defects.append("an earlier run's model.onnx was left in the output")
    if not spec.report:
        return
    report = out / "report.json"
    if not report.is_file():
        result.report, result.report_ok = "missing", False
    else:
        try:
            document = json.loads(report.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            result.report, result.report_ok = f"not JSON ({exc})", False
        else:
            result.report, result.report_ok = _judge_report(document, spec, result)
    if not result.report_ok:
        defects.append(f"report.json: {result.report}")


def _judge_report(document: Any, spec: Run, result: Result) -> tuple[str, bool]:
    from jsonschema import Draft202012Validator

    if isinstance(document, dict) and document.get("stale"):
        return "an earlier run's report was left in place", False
    validator = Draft202012Validator(json.loads(REPORT_SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(document), key=str)
    if errors:
        first = errors[0]
        return f"invalid: {list(first.absolute_path)}: {first.message[:120]}", False
    if spec.partial and document.get("partial") is not True:
        return "interrupted run not marked partial", False
    if result.exit is not None and document.get("exit_code") != result.exit:
        return f"exit_code {document.get('exit_code')} but the gate exited {result.exit}", False
    if spec.failed_candidate:
        candidates = {c.get("name"): c for c in document.get("candidates", [])}
        fault = candidates.get(spec.failed_candidate)
        if fault is None or fault.get("status") != "failed":
            status = fault.get("status") if fault else "absent"
            return f"candidate {spec.failed_candidate} is {status}, not failed", False
        after = [c for name, c in candidates.items() if name not in ("original", "fault")]
        if not after or any(c.get("status") in (None, "failed") for c in after):
            return "the run did not go on past the failed candidate", False
    return "ok", True


def _judge_processes(result: Result, folder: Path) -> None:
    """Nothing the gate started may outlive it (the fault plugin logs every pid)."""
    pids_file = folder / "pids.txt"
    if not pids_file.is_file():
        return
    time.sleep(0.2)  # a group kill is not instant
    pids = [int(line) for line in pids_file.read_text().split() if line.strip()]
    result.orphans = [pid for pid in pids if _alive(pid)]
    for pid in result.orphans:
        with contextlib.suppress(ProcessLookupError):  # ours to clean up: the plugin started it
            os.kill(pid, signal.SIGKILL)
    if result.orphans:
        result.defects.append(f"{len(result.orphans)} process(es) outlived the gate")


# -- the suite -----------------------------------------------------------------------


def all_cases(random_count: int, bomb_gb: float) -> list[Case]:
    return [
        *model_cases(),
        *policy_cases(),
        *file_cases(),
        *cli_cases(),
        *data_cases(bomb_gb),
        *fault_cases(),
        *signal_cases(),
        *random_cases(random_count),
    ]


LOST = ("report.json", "temporary file", "earlier run's model", "TMPDIR")


def totals(results: list[Result]) -> dict[str, int]:
    def count(predicate: Callable[[Result], bool]) -> int:
        return sum(1 for r in results if predicate(r))

    return {
        "inputs_tried": len(results),
        # Clean: the expected code, cleanly worded, with its report: nothing to fix.
        "clean_errors": count(lambda r: not r.defects),
        "unexpected_exit_codes": count(
            lambda r: not r.hung and not r.as_expected and r.exit is not None
        ),
        "out_of_range_exit_codes": count(lambda r: not r.hung and not r.in_range),
        "tracebacks": count(lambda r: r.traceback),
        "internal_errors": count(lambda r: r.internal_error),
        "lost_or_half_written_reports": count(
            lambda r: any(d.startswith(LOST) or "left in" in d for d in r.defects)
        ),
        "hangs": count(lambda r: r.hung),
        "orphan_processes": count(lambda r: bool(r.orphans)),
        "cases_with_defects": count(lambda r: bool(r.defects)),
        "harness_errors": count(lambda r: any(d.startswith("HARNESS") for d in r.defects)),
    }


def markdown(results: list[Result], summary: dict[str, int], seconds: float) -> str:
    def cell(text: str, width: int = 100) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= width else text[: width - 3] + "..."

    lines = [
        "| case | category | exit | expected | traceback? | report ok? | seconds "
        "| first error line | defects |",
        "|---|---|---:|---|---|---|---:|---|---|",
    ]
    for r in results:
        exit_text = "hung" if r.hung else str(r.exit)
        report = "-" if r.report_ok is None else ("yes" if r.report_ok else "NO")
        lines.append(
            f"| {cell(r.case, 40)} | {r.category} | {exit_text} "
            f"| {'/'.join(map(str, r.expected))} | {'YES' if r.traceback else 'no'} | {report} "
            f"| {r.seconds:.1f} | {cell(r.error_line)} | {cell('; '.join(r.defects), 160)} |"
        )
    lines += ["", "| total | count |", "|---|---:|"]
    lines += [f"| {key.replace('_', ' ')} | {value} |" for key, value in summary.items()]
    lines.append(f"| wall seconds | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fixed cases + 10 random policies")
    parser.add_argument("--random", type=int, default=None, help="random policies (default 50)")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=max(2, min(4, (os.cpu_count() or 1) + 1)))
    parser.add_argument(
        "--bomb-gb",
        type=float,
        default=None,
        help="uncompressed size of the deflate-bomb .npz (1 quick, 4 otherwise)",
    )
    parser.add_argument(
        "--memory-cap-gb",
        type=float,
        default=8.0,
        help="soft address-space cap per gate process, 0 for none",
    )
    parser.add_argument("--keep", action="store_true", help="keep the case folders")
    parser.add_argument("--json", type=Path, default=OUT_JSON)
    args = parser.parse_args(argv)
    random_count = args.random if args.random is not None else (10 if args.quick else 50)
    bomb_gb = args.bomb_gb if args.bomb_gb is not None else (1.0 if args.quick else 4.0)
    cases = all_cases(random_count, bomb_gb)
    if args.only:
        cases = [case for case in cases if args.only in case.name]
    root = Path(tempfile.mkdtemp(prefix="onnx-gate-robustness-"))
    started = time.monotonic()
    cap = int(args.memory_cap_gb * (1 << 30))
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(run_case, case, root, cap) for case in cases]
            results = []
            for case, future in zip(cases, futures, strict=True):
                result = future.result()
                results.append(result)
                flag = "ok " if not result.defects else "BAD"
                print(
                    f"{flag} {case.name:<40} exit={result.exit} {result.seconds:6.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if args.keep:
            print(f"case folders kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - started
    summary = totals(results)
    print(markdown(results, summary, seconds))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "totals": summary,
                "seconds": round(seconds, 1),
                "quick": args.quick,
                "random": random_count,
                "cases": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    gate_ok = summary["tracebacks"] == 0 and summary["hangs"] == 0
    gate_ok = gate_ok and summary["lost_or_half_written_reports"] == 0
    return 0 if gate_ok and summary["harness_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
