"""The GitHub Action (action.yml) run as a runner would, and its helper gate/ci/github.py.

The composite action's `run` steps execute with bash in a temporary workspace, with
GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_ENV, RUNNER_TEMP, GITHUB_ACTION_PATH and
GITHUB_WORKSPACE pointing at temporary files and folders, and the `${{ ... }}`
expressions of `env:`, `if:` and `outputs:` evaluated by a small evaluator. `uses:` steps
are skipped: the action is given this interpreter (`python` input) and
`version: preinstalled`, so nothing is downloaded. The gate itself is real.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import urllib.error
from collections.abc import Mapping
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FAST_MEASURE

from gate.ci import github

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action.yml"
EXAMPLE = REPO / "examples" / "github" / "onnx-gate.yml"
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


# --- a tiny evaluator for GitHub expressions ---------------------------------------------

TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)"
    r"|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<name>[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*))"
)


class Expression:
    """Literals, context paths (inputs.x, steps.id.outputs.y, github.action_path,
    runner.temp, env.X), always() / success() / failure(), !, ==, !=, &&, || and brackets."""

    def __init__(self, text: str, context: Mapping[str, Any], failed: bool = False) -> None:
        self.tokens: list[tuple[str, str]] = []
        position, text = 0, text.strip()
        while position < len(text):
            match = TOKEN.match(text, position)
            if not match or match.end() == position:
                raise ValueError(f"cannot parse expression {text!r} at {position}")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.index = 0
        self.context = context
        self.failed = failed

    def value(self) -> Any:
        result = self._or()
        if self.index != len(self.tokens):
            raise ValueError(f"trailing tokens in expression: {self.tokens[self.index :]}")
        return result

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self, op: str) -> bool:
        if self._peek() == ("op", op):
            self.index += 1
            return True
        return False

    def _or(self) -> Any:
        left = self._and()
        while self._take("||"):
            right = self._and()
            left = left if truthy(left) else right
        return left

    def _and(self) -> Any:
        left = self._equality()
        while self._take("&&"):
            right = self._equality()
            left = right if truthy(left) else left
        return left

    def _equality(self) -> Any:
        left = self._unary()
        for op in ("==", "!="):
            if self._take(op):
                same = loose(left) == loose(self._unary())
                return same if op == "==" else not same
        return left

    def _unary(self) -> Any:
        if self._take("!"):
            return not truthy(self._unary())
        return self._primary()

    def _primary(self) -> Any:
        token = self._peek()
        if token is None:
            raise ValueError("unexpected end of expression")
        self.index += 1
        kind, text = token
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text)
        if token == ("op", "("):
            inner = self._or()
            if not self._take(")"):
                raise ValueError("missing )")
            return inner
        if kind == "name":
            if self._take("("):
                if not self._take(")"):
                    raise ValueError("functions with arguments are not supported")
                functions = {
                    "always": True,
                    "success": not self.failed,
                    "failure": self.failed,
                    "cancelled": False,
                }
                return functions[text]
            if text in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[text]
            value: Any = self.context
            for part in text.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            return value
        raise ValueError(f"unexpected {text!r}")


def truthy(value: Any) -> bool:
    return value not in (None, False, "", 0)


def loose(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def substitute(text: str, context: Mapping[str, Any], failed: bool = False) -> str:
    return re.sub(
        r"\$\{\{(.*?)\}\}",
        lambda m: as_text(Expression(m.group(1), context, failed).value()),
        str(text),
    )


def condition(text: str | None, context: Mapping[str, Any], failed: bool) -> bool:
    text = (text or "success()").strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    value = Expression(text, context, failed).value()
    # GitHub adds success() to a condition that names none of the status functions.
    if not re.search(r"\b(always|success|failure|cancelled)\(", text):
        return truthy(value) and not failed
    return truthy(value)


def read_outputs(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT's `name=value` and `name<<DELIMITER` forms."""
    outputs: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value = []
            while lines[index] != delimiter:
                value.append(lines[index])
                index += 1
            index += 1
            outputs[name] = "\n".join(value)
        elif "=" in line:
            name, value_text = line.split("=", 1)
            outputs[name] = value_text
    return outputs


@dataclass
class StepRun:
    id: str
    name: str
    outcome: str
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    uses: str = ""


@dataclass
class ActionRun:
    steps: list[StepRun]
    outputs: dict[str, str]

    @property
    def failed(self) -> bool:
        return any(step.outcome == "failure" for step in self.steps)

    @property
    def returncode(self) -> int:
        codes = [step.returncode for step in self.steps if step.outcome == "failure"]
        return codes[-1] if codes else 0

    @property
    def stdout(self) -> str:
        return "".join(step.stdout for step in self.steps)

    @property
    def summary(self) -> str:
        return "".join(step.summary for step in self.steps)

    def step(self, step_id: str) -> StepRun:
        return next(step for step in self.steps if step.id == step_id)


def run_action(
    workspace: Path,
    inputs: Mapping[str, str],
    extra_env: Mapping[str, str] | None = None,
) -> ActionRun:
    """Run action.yml's composite steps like a runner: one GITHUB_OUTPUT and
    GITHUB_STEP_SUMMARY file per step, `if:` honoured, `uses:` steps skipped."""
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    temp = workspace.parent / f"{workspace.name}-runner-temp"
    temp.mkdir(exist_ok=True)
    env_file = temp / "github_env"
    env_file.touch()
    base_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GITHUB_", "RUNNER_", "INPUT_"))
    }
    base_env.update(
        GITHUB_ACTION_PATH=str(REPO),
        GITHUB_WORKSPACE=str(workspace),
        RUNNER_TEMP=str(temp),
        GITHUB_ENV=str(env_file),
        GITHUB_ACTIONS="true",
        CI="true",
        GITHUB_SERVER_URL="https://github.com",
        GITHUB_REPOSITORY="acme/models",
        GITHUB_SHA="0123456789abcdef0123456789abcdef01234567",
        GITHUB_RUN_ID="42",
        GITHUB_EVENT_NAME="push",
    )
    base_env.update(extra_env or {})
    context: dict[str, Any] = {
        "github": {"action_path": str(REPO), "workspace": str(workspace), "token": ""},
        "runner": {"temp": str(temp)},
        "env": base_env,
        "steps": {},
        "inputs": {},
    }
    declared = action.get("inputs") or {}
    unknown = set(inputs) - set(declared)
    assert not unknown, f"inputs the action does not declare: {unknown}"
    for name, spec in declared.items():
        given = inputs.get(name)
        default = substitute(str(spec.get("default", "")), context)
        context["inputs"][name] = given if given is not None else default
    runs: list[StepRun] = []
    failed = False
    for number, step in enumerate(action["runs"]["steps"]):
        step_id = step.get("id", f"__step{number}")
        if not condition(step.get("if"), context, failed):
            runs.append(StepRun(step_id, step.get("name", ""), "skipped"))
            context["steps"][step_id] = {"outputs": {}, "outcome": "skipped"}
            continue
        if "uses" in step:
            # Not run here: setup-python (the tests give the python input) and upload-artifact.
            runs.append(StepRun(step_id, step.get("name", ""), "success", uses=step["uses"]))
            context["steps"][step_id] = {"outputs": {}, "outcome": "success"}
            continue
        output_file = temp / f"output-{number}"
        summary_file = temp / f"summary-{number}"
        output_file.write_text("")
        summary_file.write_text("")
        env = dict(base_env)
        env.update(
            {key: substitute(str(value), context, failed) for key, value in step["env"].items()}
        )
        env.update(GITHUB_OUTPUT=str(output_file), GITHUB_STEP_SUMMARY=str(summary_file))
        assert step["shell"] == "bash"
        script = temp / f"step-{number}.sh"
        script.write_text(step["run"])
        process = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        outcome = "success" if process.returncode == 0 else "failure"
        failed = failed or process.returncode != 0
        outputs = read_outputs(output_file)
        runs.append(
            StepRun(
                step_id,
                step.get("name", ""),
                outcome,
                process.returncode,
                process.stdout,
                process.stderr,
                outputs,
                summary_file.read_text(encoding="utf-8"),
            )
        )
        context["steps"][step_id] = {"outputs": outputs, "outcome": outcome}
    outputs = {name: substitute(spec["value"], context) for name, spec in action["outputs"].items()}
    return ActionRun(runs, outputs)


def preinstalled(**inputs: str) -> dict[str, str]:
    """Inputs that run the action on this interpreter, with nothing to install."""
    return {"python": sys.executable, "version": "preinstalled", **inputs}


def policy_line(policy: Path, needle: str) -> int:
    """The 1-based line of the first line of ``policy`` that contains ``needle``."""
    for number, line in enumerate(policy.read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {policy}")


def annotations_in(stdout: str, level: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"::{level} ")]


# --- the action file itself --------------------------------------------------------------


def test_action_file_keeps_inputs_out_of_scripts_and_pins_actions() -> None:
    action = yaml.safe_load(ACTION.read_text())
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    for step in steps:
        if "run" in step:
            assert "${{" not in step["run"], f"expression inside run: of {step['name']}"
            assert step["shell"] == "bash"
        else:
            assert SHA_PIN.match(step["uses"]), step["uses"]
    setup = next(step for step in steps if "setup-python" in step.get("uses", ""))
    assert setup["with"]["update-environment"] is False
    upload = next(step for step in steps if "upload-artifact" in step.get("uses", ""))
    assert upload["if"].startswith("always()")
    assert upload["with"]["if-no-files-found"] == "warn"
    assert set(action["outputs"]) >= {"verdict", "exit-code", "report", "model"}
    assert action["inputs"]["output-dir"]["default"] == "gate-report"
    assert action["inputs"]["python-version"]["default"] == "3.11"
    assert action["inputs"]["comment"]["default"] == "off"
    assert action["inputs"]["version"]["default"] == ""  # the action's own checkout


def test_example_workflow_pins_actions_and_keeps_expressions_out_of_scripts() -> None:
    workflow = yaml.safe_load(EXAMPLE.read_text())
    for job in workflow["jobs"].values():
        for step in job.get("steps") or []:
            if "run" in step:
                assert "${{" not in step["run"], step.get("name")
            uses = step.get("uses", "")
            if uses and not uses.startswith("./"):
                assert SHA_PIN.match(uses.split()[0]), uses


# --- the action on a real gate run -------------------------------------------------------


def test_passing_gate_with_a_missed_warn_budget(classifier, tmp_path) -> None:
    workspace = tmp_path
    policy = classifier.write_policy(
        {
            "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
            "budgets": [
                {"metric": "size_mb", "max": 100},
                {"metric": "size_mb", "max": 0.001, "level": "warn"},
            ],
        }
    )
    relative = policy.relative_to(workspace).as_posix()
    warn_line = policy_line(policy, "level: warn") - 2  # the item starts at `- metric:`
    assert "- metric: size_mb" in policy.read_text().splitlines()[warn_line - 1]

    run = run_action(workspace, preinstalled(policy=relative))
    assert not run.failed, run.stdout + "".join(step.stderr for step in run.steps)
    assert run.step("python").outcome == "skipped"
    assert run.step("upload").uses.startswith("actions/upload-artifact@")

    outputs = run.step("report").outputs
    assert outputs["verdict"] == "pass"
    assert outputs["exit-code"] == "0"
    assert outputs["action-exit-code"] == "0"
    assert outputs["report"] == "gate-report/report.json"
    assert (workspace / outputs["report"]).is_file()
    assert outputs["model"] == "gate-report/model.onnx"
    assert (workspace / outputs["model"]).is_file()
    assert run.outputs["verdict"] == "pass" and run.outputs["model"] == outputs["model"]

    summary = run.step("report").summary
    assert "onnx-gate: PASS" in summary
    assert "| budget | metric | level | expected | actual | status | policy |" in summary
    assert f"blob/0123456789abcdef0123456789abcdef01234567/{relative}#L{warn_line}" in summary

    warnings = annotations_in(run.stdout, "warning")
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"::warning file={relative},line={warn_line},title=onnx-gate%3A size_mb::"
    )
    assert not annotations_in(run.stdout, "error")
    for phase in ("install", "run", "report"):
        assert f"::group::onnx-gate: {phase}" in run.stdout
    # The gate's own output ran with workflow commands off.
    assert re.search(r"::stop-commands::onnx-gate-[0-9a-f]{32}", run.stdout)

    # fail-on: warn turns the missed warn-level budget into a failed job.
    # (No base report yet, as on a first pull request: a notice, no comparison.)
    strict = run_action(
        workspace, preinstalled(policy=relative, **{"fail-on": "warn", "base-report": "no.json"})
    )
    assert "::notice title=onnx-gate::base-report no.json not found" in strict.stdout
    assert strict.step("run").outputs["compare-exit-code"] == ""
    assert strict.failed
    assert strict.returncode == 1
    assert strict.steps[-1].returncode == 1
    assert strict.outputs["verdict"] == "pass"
    assert strict.outputs["action-exit-code"] == "1"
    assert "fails with 1 because a warn-level budget was missed" in strict.summary


def test_failing_gate_points_at_the_policy_line(classifier, tmp_path) -> None:
    workspace = tmp_path
    policy = classifier.write_policy(
        {
            "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
            "budgets": [{"metric": "size_mb", "max": 0.001}],
        },
        name="failing.yaml",
    )
    relative = policy.relative_to(workspace).as_posix()
    line = policy_line(policy, "- metric: size_mb")
    run = run_action(workspace, preinstalled(policy=relative, **{"output-dir": "out/gate"}))
    assert run.failed
    assert run.returncode == 1
    assert run.steps[-1].name.startswith("End with") and run.steps[-1].returncode == 1
    assert run.outputs == {
        "verdict": "fail",
        "exit-code": "1",
        "report": "out/gate/report.json",
        "model": "",
        "action-exit-code": "1",
        "artifact-url": "",
    }
    errors = annotations_in(run.stdout, "error")
    assert errors, run.stdout
    assert errors[0].startswith(f"::error file={relative},line={line},title=onnx-gate%3A size_mb::")
    assert "size_mb expected <= 0.001" in errors[0]
    assert "onnx-gate: FAIL" in run.summary


def test_compare_with_a_base_report(classifier, tmp_path) -> None:
    workspace = tmp_path
    policy = classifier.write_policy(
        {"candidates": [{"name": "basic", "graph": {"level": "basic"}}]}
    )
    relative = policy.relative_to(workspace).as_posix()
    first = run_action(workspace, preinstalled(policy=relative, **{"output-dir": "base"}))
    assert not first.failed, first.stdout
    run = run_action(
        workspace, preinstalled(policy=relative, **{"base-report": "base/report.json"})
    )
    assert run.step("run").outputs["compare-exit-code"] in ("0", "1")
    assert (workspace / "gate-report" / "compare" / "compare.md").is_file()
    assert "### Compared with the base report" in run.summary
    code = int(run.step("run").outputs["compare-exit-code"])
    assert run.returncode == code  # the gate passed: only a regression can fail the job


def test_matrix_shards_then_merge(classifier, tmp_path) -> None:
    workspace = tmp_path
    (classifier.folder / "other.onnx").write_bytes(classifier.model.read_bytes())
    policy = classifier.folder / "suite.yaml"
    document = {
        "version": 1,
        "models": [
            {"name": "small", "path": "model.onnx"},
            {
                "name": "tight",
                "path": "other.onnx",
                "budgets": [{"metric": "size_mb", "max": 0.001}],
            },
        ],
        "measure": dict(FAST_MEASURE),
        "candidates": [{"name": "basic", "graph": {"level": "basic"}}],
    }
    policy.write_text(yaml.safe_dump(document, sort_keys=False))
    relative = policy.relative_to(workspace).as_posix()
    line = policy_line(policy, "- metric: size_mb")
    for index in (1, 2):
        shard = run_action(
            workspace,
            preinstalled(
                policy=relative, args=f"--shard {index}/2", **{"output-dir": f"shards/{index}"}
            ),
        )
        assert shard.outputs["model"] == ""
        assert shard.returncode == (0 if index == 1 else 1), shard.stdout
    merged = run_action(workspace, preinstalled(merge="shards/*", **{"output-dir": "merged"}))
    assert merged.returncode == 1
    assert merged.outputs["verdict"] == "fail" and merged.outputs["model"] == ""
    assert merged.outputs["report"] == "merged/report.json"
    report = json.loads((workspace / "merged" / "report.json").read_text())
    assert report["kind"] == "suite" and len(report["models"]) == 2
    errors = annotations_in(merged.stdout, "error")
    assert any(
        e.startswith(f"::error file={relative},line={line},title=onnx-gate%3A size_mb::tight: ")
        for e in errors
    ), merged.stdout
    assert "| model | budget |" in merged.summary


FAKE_GATE = """
import json, pathlib, sys

args = sys.argv[1:]
if args == ["--version"]:
    print("onnx-gate, version 0.0.1 (an older release, for the test)")
    sys.exit(0)
out = pathlib.Path(args[args.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
budget = {"metric": "size_mb", "level": "error", "op": "<=", "threshold": 1.0, "actual": 2.0,
          "passed": False, "decision": "fail", "location": "budgets[0]"}
report = {"verdict": "fail", "exit_code": 1, "message": "no candidate passed", "policy": args[1],
          "chosen": None, "output_model": None, "warnings": [], "errors": [],
          "candidates": [{"name": "original", "budgets": [budget]}]}
(out / "report.json").write_text(json.dumps(report))
sys.exit(1)
"""


def _fake_wheel(folder: Path) -> Path:
    """A wheel of an "older onnx-gate" whose report.json predates the budget rows."""
    import zipfile

    wheel = folder / "onnx_gate-0.0.1-py3-none-any.whl"
    info = "onnx_gate-0.0.1.dist-info"
    files = {
        "gate/__init__.py": "",
        "gate/__main__.py": FAKE_GATE,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: onnx-gate\nVersion: 0.0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_install_into_a_private_environment(tmp_path) -> None:
    """The install step: a virtual environment in RUNNER_TEMP and `version` as a local
    wheel; the helper copes with a report from before the budget rows."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "policy.yaml").write_text("version: 1\nbudgets:\n  - {metric: size_mb, max: 1}\n")
    wheel = _fake_wheel(workspace)
    run = run_action(
        workspace, {"python": sys.executable, "version": wheel.name, "policy": "policy.yaml"}
    )
    install = run.step("install")
    assert install.outcome == "success", install.stdout + install.stderr
    venv = tmp_path / "ws-runner-temp" / "onnx-gate-venv"
    assert install.outputs["python"] == str(venv / "bin" / "python")
    assert f"pip install {wheel.name}" in install.stdout
    assert "version 0.0.1" in install.stdout
    assert not list(workspace.glob(".onnx-gate-pip-cache-key*"))
    assert run.returncode == 1 and run.outputs["verdict"] == "fail"
    errors = annotations_in(run.stdout, "error")
    assert errors[0].startswith("::error file=policy.yaml,"), run.stdout
    assert "size_mb expected <= 1, found 2 [candidate original]" in errors[0]


def test_bad_inputs_stop_before_anything_runs(tmp_path) -> None:
    run = run_action(tmp_path, preinstalled(policy="p.yaml", **{"fail-on": "sometimes"}))
    assert run.failed and run.returncode == 2
    assert "::error title=onnx-gate::fail-on must be error or warn" in run.stdout
    assert all(step.outcome == "skipped" for step in run.steps[1:])


def test_a_missing_policy_is_a_usage_error_with_a_report(tmp_path) -> None:
    run = run_action(tmp_path, preinstalled(policy="nowhere.yaml"))
    assert run.returncode == 2
    assert run.outputs["verdict"] == "error"
    assert annotations_in(run.stdout, "error")


# --- gate/ci/github.py ----------------------------------------------------------------------


def test_escaping() -> None:
    assert github.escape_data("50%\r\nnext") == "50%25%0D%0Anext"
    assert github.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    command = github.workflow_command(
        "error", "line 1\nline 2 :: 100%", file="a,b.yaml", line=3, title="onnx-gate: x"
    )
    assert command == (
        "::error file=a%2Cb.yaml,line=3,title=onnx-gate%3A x::line 1%0Aline 2 :: 100%25"
    )
    assert github.workflow_command("notice", "m", file=None, line=None) == "::notice::m"


def test_outputs_file_format(tmp_path) -> None:
    path = tmp_path / "out"
    assert github.set_outputs({"a": 1, "b": "two\nlines"}, {"GITHUB_OUTPUT": str(path)})
    assert read_outputs(path) == {"a": "1", "b": "two\nlines"}
    assert not github.set_outputs({"a": 1}, {})


def _row(index: int, level: str = "error", status: str = "fail", **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "id": f"budgets[{index}]",
        "metric": "latency_ms.p95",
        "level": level,
        "op": "<=",
        "threshold": 1.0,
        "line": 10 + index,
        "candidate": "original",
        "actual": 2.0,
        "status": status,
        "message": f"latency_ms.p95 expected <= 1, found 2 ({index})",
        "waiver": None,
        **extra,
    }


def test_at_most_ten_annotations_of_each_level() -> None:
    rows = [_row(i) for i in range(25)] + [_row(100 + i, level="warn") for i in range(15)]
    rows += [_row(200, status="waived", waiver={"reason": "known", "owner": "ml", "expires": "x"})]
    rows += [_row(300, level="off"), _row(301, status="pass")]
    report = {"verdict": "fail", "exit_code": 1, "policy": "policy.yaml", "errors": []}
    found = github.annotations(report, rows)
    levels = [a.level for a in found]
    assert levels.count("error") == 10 and levels.count("warning") == 10
    assert levels.count("notice") == 1
    errors = [a for a in found if a.level == "error"]
    assert errors[0].file == "policy.yaml" and errors[0].line == 10
    assert "16 more" in errors[-1].message and errors[-1].file is None
    notice = next(a for a in found if a.level == "notice")
    assert notice.message.startswith("waived: ") and "owner ml" in notice.message


def test_error_report_without_budgets_annotates_its_errors() -> None:
    report = {
        "verdict": "error",
        "exit_code": 3,
        "policy": "p.yaml",
        "errors": ["model.onnx: cannot load: truncated"],
        "candidates": [],
    }
    rows = github.budget_rows(report)
    assert rows == []
    found = github.annotations(report, rows, exit_code=3)
    assert [(a.level, a.file, a.line) for a in found] == [("error", None, None)]
    assert found[0].command() == "::error title=onnx-gate::model.onnx: cannot load: truncated"
    missing = github.annotations(None, [], exit_code=2, output_dir="gate-report")
    assert "wrote no report.json in gate-report" in missing[0].message


def test_older_report_rows_come_from_the_chosen_candidate(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(
        "version: 1\nmodel: {path: m.onnx}\nbudgets:\n  - {metric: size_mb, max: 1}\n"
        "  - metric: speedup\n    min: 2\n    level: warn\n"
    )
    report = {
        "verdict": "pass",
        "exit_code": 0,
        "policy": "p.yaml",
        "model": {"path": "models/m.onnx"},
        "chosen": "int8",
        "candidates": [
            {"name": "original", "budgets": []},
            {
                "name": "int8",
                "budgets": [
                    {"metric": "size_mb", "level": "error", "op": "<=", "threshold": 1.0,
                     "actual": 0.5, "passed": True, "decision": "pass", "location": "budgets[0]"},
                    {"metric": "speedup", "level": "warn", "op": ">=", "threshold": 2.0,
                     "actual": 1.5, "passed": False, "decision": "fail", "location": "budgets[1]"},
                ],
            },
        ],
    }  # fmt: skip
    rows = github.budget_rows(report, github.PolicyLines())
    assert [(r["model"], r["id"], r["status"], r["line"]) for r in rows] == [
        ("m", "budgets[0]", "pass", 4),
        ("m", "budgets[1]", "fail", 5),
    ]
    assert rows[1]["message"] == "speedup expected >= 2, found 1.5"
    assert github.action_exit_code("pass", 0, rows, "error") == 0
    assert github.action_exit_code("pass", 0, rows, "warn") == 1


def test_policy_lines_follow_nested_locations(tmp_path) -> None:
    policy = tmp_path / "suite.yaml"
    policy.write_text(
        "version: 1\nmodels:\n  - name: a\n    budgets:\n      - {metric: size_mb, max: 1}\n"
        "  - name: b\n    budgets:\n      - {metric: size_mb, max: 1}\n"
        "      - {metric: speedup, min: 1}\n"
    )
    lines = github.PolicyLines()
    assert lines.line(str(policy), "models[1].budgets[1]") == 9
    assert lines.line(str(policy), "models[0]") == 3
    assert lines.line(str(policy), "models[5].budgets[0]") is None
    assert lines.line(str(tmp_path / "absent.yaml"), "budgets[0]") is None
    assert github.parse_location("models[1].budgets[0]") == ["models", 1, "budgets", 0]


def test_action_exit_code() -> None:
    warn_miss = [_row(0, level="warn")]
    assert github.action_exit_code("pass", 0, [], "error") == 0
    assert github.action_exit_code("fail", 1, [], "error") == 1
    assert github.action_exit_code("error", 3, [], "warn") == 3
    assert github.action_exit_code("pass", 0, warn_miss, "error") == 0
    assert github.action_exit_code("pass", 0, warn_miss, "warn") == 1
    # a warn-level row that was merely inconclusive is not a miss
    assert github.action_exit_code("pass", 0, [_row(0, "warn", "inconclusive")], "warn") == 0
    assert github.action_exit_code("pass", 0, [], "error", compare_exit_code=1) == 1
    assert github.action_exit_code("pass", 0, [], "error", compare_exit_code=2) == 0
    with pytest.raises(ValueError):
        github.action_exit_code("pass", 0, [], "sometimes")


def _report_dir(folder: Path, summary_md: str, report: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.md").write_text(summary_md, encoding="utf-8")
    (folder / "report.json").write_text(
        json.dumps(
            report
            or {
                "verdict": "pass",
                "exit_code": 0,
                "message": "",
                "policy": "policy.yaml",
                "budgets": [_row(0, status="pass")],
                "warnings": [],
                "errors": [],
                "output_model": None,
            }
        )
    )
    return folder


def _report_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[str, Path]:
    summary = tmp_path / "step_summary"
    outputs = tmp_path / "step_outputs"
    summary.write_text("")
    outputs.write_text("")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_RUN_ID", "7")
    stream = io.StringIO()
    with redirect_stdout(stream):
        assert github.main(list(argv)) == 0
    return stream.getvalue(), summary


def test_summary_is_capped_under_one_mebibyte(tmp_path, monkeypatch) -> None:
    huge = "# big\n\n<details><summary>log</summary>\n\n" + "| row | ✅ |\n" * 200_000
    out = _report_dir(tmp_path / "gate-report", huge)
    stdout, summary = _report_main(
        tmp_path, monkeypatch, "report", "--output-dir", str(out), "--exit-code", "0",
        "--artifact-name", "onnx-gate-report",
        "--artifact-url", "https://github.com/acme/models/actions/runs/7/artifacts/9",
    )  # fmt: skip
    written = summary.read_bytes()
    assert len(written) > 900_000
    assert len(written) < 1024 * 1024
    text = written.decode("utf-8")
    assert "Summary truncated" in text
    assert (
        "[the `onnx-gate-report` artifact](https://github.com/acme/models/actions/runs/7/artifacts/9)"
        in text
    )
    assert text.count("<details") == text.count("</details>")
    assert stdout.strip().splitlines()[-1] == "action-exit-code=0"

    small = _report_dir(tmp_path / "small", "## ok\n")
    _, summary = _report_main(
        tmp_path, monkeypatch, "report", "--output-dir", str(small), "--exit-code", "0"
    )
    assert "truncated" not in summary.read_text()
    assert github.cap_markdown("short", 100, "note") == "short"


def test_report_without_report_json(tmp_path, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    stdout, summary = _report_main(
        tmp_path, monkeypatch, "report", "--output-dir", str(tmp_path / "empty"), "--exit-code", "3"
    )
    outputs = read_outputs(tmp_path / "step_outputs")
    assert outputs["verdict"] == "error" and outputs["report"] == "" and outputs["model"] == ""
    assert outputs["action-exit-code"] == "3"
    assert "::error title=onnx-gate::onnx-gate exited with 3 and wrote no report.json" in stdout
    assert "No report.json" in summary.read_text()


def test_suite_report_has_no_model_output_and_a_model_column(tmp_path, monkeypatch) -> None:
    suite = {
        "kind": "suite",
        "verdict": "fail",
        "exit_code": 1,
        "message": "2 model(s): 1 fail, 1 pass",
        "policy": "suite.yaml",
        "models": [
            {"name": "a", "dir": "models/a", "verdict": "pass", "exit_code": 0, "chosen": "x"},
            {"name": "b", "dir": "models/b", "verdict": "fail", "exit_code": 1, "chosen": None},
        ],
        "budgets": [_row(0, status="pass", model="a"), _row(1, model="b")],
        "warnings": [],
        "errors": [],
        "shard": {"index": 1, "count": 2},
    }
    out = _report_dir(tmp_path / "suite", "", suite)
    (out / "summary.md").unlink()
    stdout, summary = _report_main(
        tmp_path, monkeypatch, "report", "--output-dir", str(out), "--exit-code", "1"
    )
    outputs = read_outputs(tmp_path / "step_outputs")
    assert outputs["model"] == "" and outputs["verdict"] == "fail"
    text = summary.read_text()
    assert "| model | budget |" in text and "| b | `budgets[1]`" in text
    assert "| model | verdict | exit | chosen | message |" in text
    assert "::error file=suite.yaml,line=11,title=onnx-gate%3A latency_ms.p95::b: " in stdout


def test_gate_command_splits_args_without_a_shell(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("shard-1", "shard-2"):
        (tmp_path / "shards" / name).mkdir(parents=True)
    command = github.gate_command("out", "p.yaml", "--shard 1/3 --note '$(touch x); y'")
    assert command[-8:] == [
        "run", "p.yaml", "--output-dir", "out", "--shard", "1/3", "--note", "$(touch x); y"
    ]  # fmt: skip
    merged = github.gate_command("out", merge="shards/*")
    assert merged[-5:] == ["merge", "shards/shard-1", "shards/shard-2", "--output-dir", "out"]
    with pytest.raises(ValueError):
        github.gate_command("out")


# --- the sticky comment, without a network -----------------------------------------------


def _event(tmp_path: Path, fork: bool) -> Path:
    head = "someone/models" if fork else "acme/models"
    payload = {
        "pull_request": {
            "number": 12,
            "head": {"repo": {"full_name": head, "fork": fork}},
            "base": {"repo": {"full_name": "acme/models", "fork": False}},
        }
    }
    path = tmp_path / "event.json"
    path.write_text(json.dumps(payload))
    return path


def _comment_env(tmp_path: Path, fork: bool, event_name: str = "pull_request") -> dict[str, str]:
    return {
        "GITHUB_EVENT_NAME": event_name,
        "GITHUB_EVENT_PATH": str(_event(tmp_path, fork)),
        "GITHUB_REPOSITORY": "acme/models",
        "GITHUB_API_URL": "https://api.github.invalid",
        "GITHUB_TOKEN": "t",
    }


def _no_network(method: str, url: str, body: Mapping[str, Any] | None) -> tuple[int, Any]:
    raise AssertionError(f"no API call expected: {method} {url}")


def test_comment_on_a_fork_degrades_to_the_summary_without_an_api_call(
    tmp_path, monkeypatch
) -> None:
    result = github.post_comment("body", "d1", "always", _comment_env(tmp_path, True), _no_network)
    assert result.action == "degraded" and "fork" in result.reason
    # A branch of a repository that is itself a fork is no fork pull request.
    same = {"full_name": "acme/models", "fork": True}
    event = {"pull_request": {"number": 3, "head": {"repo": same}, "base": {"repo": same}}}
    assert github.pull_request_of("pull_request", event) == github.PullRequest(3, False)
    event["pull_request"]["head"]["repo"] = None  # the fork was deleted
    assert github.pull_request_of("pull_request", event).fork

    out = _report_dir(tmp_path / "gate-report", "## onnx-gate: PASS\n")
    for key, value in _comment_env(tmp_path, True).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(github, "urllib_request", lambda token: _no_network)
    stdout, summary = _report_main(
        tmp_path, monkeypatch, "comment", "--output-dir", str(out), "--exit-code", "0",
        "--mode", "on-change",
    )  # fmt: skip
    assert stdout.startswith("::notice title=onnx-gate::no pull-request comment: pull request #12")
    text = summary.read_text()
    assert "## onnx-gate: PASS" in text and "did not comment on the pull request" in text
    assert read_outputs(tmp_path / "step_outputs")["comment"] == "degraded"

    # With the summary already written by the report step, only the note is added.
    _, summary = _report_main(
        tmp_path, monkeypatch, "comment", "--output-dir", str(out), "--exit-code", "0",
        "--summary-written",
    )  # fmt: skip
    assert "## onnx-gate: PASS" not in summary.read_text()


def test_comment_with_a_read_only_token_degrades(tmp_path) -> None:
    def forbidden(method: str, url: str, body: Mapping[str, Any] | None) -> tuple[int, Any]:
        if method == "GET":
            return 200, []
        raise urllib.error.HTTPError(url, 403, "Resource not accessible by integration", {}, None)  # type: ignore[arg-type]

    result = github.post_comment("body", "d1", "always", _comment_env(tmp_path, False), forbidden)
    assert result.action == "degraded" and "403" in result.reason and "read-only" in result.reason

    env = _comment_env(tmp_path, False)
    env.pop("GITHUB_TOKEN")
    assert github.post_comment("body", "d1", "always", env).action == "degraded"
    push = {**_comment_env(tmp_path, False), "GITHUB_EVENT_PATH": str(tmp_path / "none.json")}
    assert github.post_comment("b", "d", "always", push, _no_network).action == "skipped"


class FakeApi:
    def __init__(self, comments: list[dict[str, Any]]) -> None:
        self.comments = comments
        self.calls: list[tuple[str, str]] = []

    def __call__(self, method: str, url: str, body: Mapping[str, Any] | None) -> tuple[int, Any]:
        self.calls.append((method, url))
        if method == "GET":
            return 200, self.comments
        if method == "PATCH":
            comment = next(c for c in self.comments if url.endswith(f"/comments/{c['id']}"))
            comment["body"] = (body or {})["body"]
            return 200, {"html_url": "https://github.com/c/1"}
        self.comments.append({"id": 99, "body": (body or {})["body"]})
        return 201, {"html_url": "https://github.com/c/99"}


def test_sticky_comment_is_created_then_updated_only_on_change(tmp_path) -> None:
    env = _comment_env(tmp_path, False)
    api = FakeApi([{"id": 1, "body": "an unrelated comment"}])
    assert github.post_comment("first", "d1", "on-change", env, api).action == "created"
    assert api.calls[-1] == (
        "POST",
        "https://api.github.invalid/repos/acme/models/issues/12/comments",
    )
    body = api.comments[-1]["body"]
    assert body.startswith(github.MARKER) and "first" in body

    assert github.post_comment("second", "d1", "on-change", env, api).action == "unchanged"
    assert api.calls[-1][0] == "GET"
    assert github.post_comment("third", "d2", "on-change", env, api).action == "updated"
    assert api.calls[-1] == (
        "PATCH",
        "https://api.github.invalid/repos/acme/models/issues/comments/99",
    )
    assert "third" in api.comments[-1]["body"]
    assert github.post_comment("fourth", "d2", "always", env, api).action == "updated"
    assert github.post_comment("x", "d", "off", env, api).action == "skipped"
    # pull_request_target runs with the base repository's token: a fork's PR can be commented.
    target = _comment_env(tmp_path, True, "pull_request_target")
    assert github.post_comment("fifth", "d3", "always", target, api).action == "updated"
