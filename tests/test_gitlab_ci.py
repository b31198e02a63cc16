"""The GitLab CI/CD component (templates/onnx-gate.yml) and the example pipeline
(examples/gitlab/.gitlab-ci.yml): their structure, the component rendered with its inputs the
way GitLab interpolates them, and - where gitlab-ci-local and rsync are on PATH (.ci/gitlab-local
installs both) - the component's jobs run locally with gitlab-ci-local's shell executor."""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from gate.policy.loading import load_policies

ROOT = Path(__file__).resolve().parents[1]
COMPONENT = ROOT / "templates" / "onnx-gate.yml"
EXAMPLE_DIR = ROOT / "examples" / "gitlab"
EXAMPLE = EXAMPLE_DIR / ".gitlab-ci.yml"
DEMO_POLICY = ROOT / "gate" / "demo" / "policy.yaml"

INTERPOLATION = re.compile(r"\$\[\[\s*inputs\.([\w-]+)\s*(?:\|[^\]]*)?\]\]")
INPUT_TYPES = {"string": str, "number": (int, float), "boolean": bool, "array": list}
# Keywords that configure the whole pipeline; a component must not set them.
GLOBAL_KEYWORDS = {
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
}
REPORT_FILES = {
    "junit": "junit.xml",
    "metrics": "metrics.txt",
    "codequality": "codequality.json",
    "dotenv": "gate.env",
}
INCONCLUSIVE = 4


# --- GitLab YAML: `!reference` tags, input interpolation, `extends` -------------------------


@dataclass(frozen=True)
class Reference:
    """A `!reference [job, key, ...]` tag."""

    path: tuple[str, ...]


class GitLabLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus GitLab's `!reference` tag."""


def _reference(loader: yaml.SafeLoader, node: yaml.Node) -> Reference:
    assert isinstance(node, yaml.SequenceNode)
    return Reference(tuple(str(item) for item in loader.construct_sequence(node)))


GitLabLoader.add_constructor("!reference", _reference)


def load_documents(path: Path) -> list[Any]:
    return list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=GitLabLoader))


def component_spec() -> dict[str, dict[str, Any]]:
    return load_documents(COMPONENT)[0]["spec"]["inputs"]


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def render(inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The component's jobs as GitLab builds them: the inputs (or their defaults) interpolated
    into the parsed configuration, keys included; a value that is one interpolation alone
    keeps the input's type (an array input becomes a list)."""
    spec = component_spec()
    given = dict(inputs or {})
    unknown = set(given) - set(spec)
    assert not unknown, f"inputs the component does not declare: {sorted(unknown)}"
    values: dict[str, Any] = {}
    for name, declared in spec.items():
        if name in given:
            values[name] = given[name]
        else:
            assert "default" in declared, f"required input {name!r} not given"
            values[name] = declared["default"]
        expected = INPUT_TYPES[declared.get("type", "string")]
        assert isinstance(values[name], expected), f"input {name!r} is not a {declared['type']}"

    def interpolate(node: Any) -> Any:
        if isinstance(node, str):
            whole = INTERPOLATION.fullmatch(node)
            if whole:
                return copy.deepcopy(values[whole.group(1)])
            return INTERPOLATION.sub(lambda match: _as_text(values[match.group(1)]), node)
        if isinstance(node, dict):
            return {interpolate(key): interpolate(value) for key, value in node.items()}
        if isinstance(node, list):
            return [interpolate(item) for item in node]
        return node

    return interpolate(load_documents(COMPONENT)[1])


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """GitLab's `extends` merge: hashes merge deeply, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Job `name` with its `extends` chain applied (parents in order, then the job itself)."""
    job = config[name]
    parents = job.get("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        assert parent in config, f"{name} extends {parent!r}, which is not defined"
        merged = _merge(merged, resolve(config, parent))
    return _merge(merged, {key: value for key, value in job.items() if key != "extends"})


def script_text(job: dict[str, Any]) -> str:
    return "\n".join(job.get("before_script", []) + job.get("script", []))


# --- The component ---------------------------------------------------------------------------


def test_component_is_a_spec_header_then_the_jobs() -> None:
    documents = load_documents(COMPONENT)
    assert len(documents) == 2
    header, body = documents
    assert list(header) == ["spec"] and list(header["spec"]) == ["inputs"]
    assert isinstance(body, dict) and body
    text = COMPONENT.read_text(encoding="utf-8")
    header_text, _, _ = text.partition("\n---\n")
    assert not INTERPOLATION.search(header_text), "interpolation in the spec header"


def test_component_inputs_are_typed_and_described() -> None:
    spec = component_spec()
    for name, declared in spec.items():
        assert re.fullmatch(r"[a-z][a-z0-9-]*", name), name
        assert declared.get("type") in INPUT_TYPES, f"{name}: type"
        assert isinstance(declared.get("description"), str) and len(declared["description"]) > 20
        if "default" in declared:
            assert isinstance(declared["default"], INPUT_TYPES[declared["type"]]), name
        for option in declared.get("options", []):
            assert isinstance(option, INPUT_TYPES[declared["type"]]), f"{name}: {option!r}"
        if "options" in declared and "default" in declared:
            assert declared["default"] in declared["options"], name


def test_component_inputs_and_defaults() -> None:
    spec = component_spec()
    defaults = {name: declared.get("default") for name, declared in spec.items()}
    assert defaults["stage"] == "test"
    assert defaults["job-prefix"] == "onnx-gate"
    assert defaults["output-dir"] == "gate-report"
    assert defaults["image"].startswith("python:3.11-slim")
    assert defaults["version"] == "onnx-gate[html]"
    assert defaults["args"] == ""
    assert "default" not in spec["policy"], "the policy is a required input"
    assert spec["allow-inconclusive"]["type"] == "boolean"
    assert spec["compare"]["type"] == "boolean"
    assert spec["rules"]["type"] == "array"


def test_component_sets_no_global_keywords_and_prefixes_every_job() -> None:
    body = load_documents(COMPONENT)[1]
    for key in body:
        assert key not in GLOBAL_KEYWORDS, f"global keyword {key!r} in a component"
        assert re.match(r"^\.?\$\[\[ inputs\.job-prefix \]\]", key), f"{key!r} lacks the prefix"
    for name, job in render({"policy": "p.yaml"}).items():
        assert not GLOBAL_KEYWORDS & {name}, name
        assert "stages" not in job and "workflow" not in job


def test_every_interpolation_is_declared_and_every_input_is_used() -> None:
    text = COMPONENT.read_text(encoding="utf-8")
    _, _, body_text = text.partition("\n---\n")
    used = set(INTERPOLATION.findall(body_text))
    declared = set(component_spec())
    assert used - declared == set(), "interpolated but not declared"
    assert declared - used == set(), "declared but never used"
    # every `$[[` opens a well-formed interpolation
    assert body_text.count("$[[") == len(INTERPOLATION.findall(body_text))


def test_run_job_runs_the_gate_and_keeps_its_exit_code() -> None:
    config = render({"policy": "models/policy.yaml", "args": "--keep-candidates"})
    job = resolve(config, "onnx-gate-run")
    assert job["stage"] == "test"
    assert job["image"] == component_spec()["image"]["default"]
    assert job["variables"]["ONNX_GATE_POLICY"] == "models/policy.yaml"
    assert job["variables"]["ONNX_GATE_OUTPUT_DIR"] == "gate-report"
    assert job["variables"]["ONNX_GATE_ARGS"] == "--keep-candidates"
    assert job["variables"]["ONNX_GATE_INSTALL"] == "onnx-gate[html]"
    script = script_text(job)
    assert (
        'onnx-gate run "$ONNX_GATE_POLICY" --output-dir "$ONNX_GATE_OUTPUT_DIR" $ONNX_GATE_ARGS'
        " || rc=$?"
    ) in script
    assert script.rstrip().endswith('exit "$rc"')
    # inputs reach the script through variables, never pasted into shell code
    assert "$[[" not in script and "models/policy.yaml" not in script
    assert 'python3 -m pip install --quiet "$requirement"' in script


@pytest.mark.parametrize(
    ("version", "installed"),
    [
        ("onnx-gate[html]", "onnx-gate[html]"),
        ("0.1.0", "onnx-gate[html]==0.1.0"),
        (">=0.1,<0.2", "onnx-gate[html]>=0.1,<0.2"),
        ("onnx-gate[transformers]==0.1.0", "onnx-gate[transformers]==0.1.0"),
        ("./dist/onnx_gate-0.1.0-py3-none-any.whl", "./dist/onnx_gate-0.1.0-py3-none-any.whl"),
        ("", None),
        ("preinstalled", None),
    ],
)
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_version_input_picks_what_pip_installs(
    tmp_path: Path, shell: str, version: str, installed: str | None
) -> None:
    if not shutil.which(shell):
        pytest.skip(f"{shell} not on PATH")
    job = resolve(render({"policy": "p.yaml", "version": version}), "onnx-gate-run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "onnx-gate"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$LOG"\n')
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, **job["variables"], "LOG": str(log)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for line in job["before_script"]:
        subprocess.run([shell, "-e", "-c", line], env=env, check=True)
    calls = log.read_text().splitlines()
    expected = [f"python3 -m pip install --quiet {installed}"] if installed else []
    assert calls == [*expected, "onnx-gate --version"]


@pytest.mark.parametrize("output_dir", ["gate-report", "out/gate"])
def test_run_job_artifacts_and_reports(output_dir: str) -> None:
    job = resolve(render({"policy": "p.yaml", "output-dir": output_dir}), "onnx-gate-run")
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"
    assert artifacts["paths"] == [f"{output_dir}/"]
    assert artifacts["reports"] == {
        kind: f"{output_dir}/{name}" for kind, name in REPORT_FILES.items()
    }
    assert artifacts["expose_as"]


@pytest.mark.parametrize(
    ("allow", "expected"), [(True, {"exit_codes": [INCONCLUSIVE]}), (False, False)]
)
def test_allow_inconclusive_turns_exit_4_into_a_warning(allow: bool, expected: Any) -> None:
    job = resolve(render({"policy": "p.yaml", "allow-inconclusive": allow}), "onnx-gate-run")
    assert job["allow_failure"] == expected


def test_run_job_rules_default_to_merge_requests_and_the_default_branch() -> None:
    job = resolve(render({"policy": "p.yaml"}), "onnx-gate-run")
    assert job["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'},
        {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"},
    ]
    custom = [{"if": "$CI_COMMIT_TAG"}, {"when": "manual"}]
    assert resolve(render({"policy": "p.yaml", "rules": custom}), "onnx-gate-run")["rules"] == (
        custom
    )


def test_compare_job_is_off_unless_asked() -> None:
    job = resolve(render({"policy": "p.yaml"}), "onnx-gate-compare")
    assert job["rules"] == [{"when": "never"}]


def test_compare_job_fetches_the_base_report_and_tolerates_its_absence() -> None:
    job = resolve(render({"policy": "p.yaml", "compare": True}), "onnx-gate-compare")
    assert job["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"', "when": "always"}
    ]
    assert job["needs"] == [{"job": "onnx-gate-run", "artifacts": True, "optional": True}]
    assert job["allow_failure"] is False  # a regression is a failure, as in the GitHub action
    assert job["variables"]["ONNX_GATE_BASE_JOB"] == "onnx-gate-run"
    script = script_text(job)
    assert (
        "$CI_API_V4_URL/projects/$CI_PROJECT_ID/jobs/artifacts/$ref/raw/$ONNX_GATE_OUTPUT_DIR"
    ) in script
    assert 'for name in ("report.json", "model.onnx")' in script
    assert 'ref="${CI_MERGE_REQUEST_TARGET_BRANCH_NAME:-$CI_DEFAULT_BRANCH}"' in script
    assert '"JOB-TOKEN"' in script and "CI_JOB_TOKEN" in script
    assert 'onnx-gate compare "$base" "$head" --output-dir "$ONNX_GATE_COMPARE_DIR"' in script
    assert re.search(r'if \[ ! -s "\$base" \]; then\n.*\n\s*exit 0', script)
    assert job["artifacts"]["when"] == "always"


def test_compare_job_takes_a_base_report_path() -> None:
    config = render({"policy": "p.yaml", "compare": True, "base-report": "gate-base/report.json"})
    job = resolve(config, "onnx-gate-compare")
    assert job["variables"]["ONNX_GATE_BASE_REPORT"] == "gate-base/report.json"


def test_job_prefix_names_every_job_and_template() -> None:
    config = render({"policy": "p.yaml", "job-prefix": "gate-b", "stage": "verify"})
    jobs = {name for name in config if not name.startswith(".")}
    assert jobs == {"gate-b-run", "gate-b-compare"}
    assert {".gate-b", ".gate-b-reports"} <= set(config)
    for name in jobs:
        job = resolve(config, name)  # every `extends` target exists
        assert job["stage"] == "verify"
    needs = resolve(config, "gate-b-compare")["needs"]
    assert needs[0]["job"] == "gate-b-run"


# --- The example pipeline --------------------------------------------------------------------


def example() -> dict[str, Any]:
    return load_documents(EXAMPLE)[0]


def example_config() -> dict[str, Any]:
    """The example's jobs with the component's (rendered with the example's inputs)."""
    pipeline = example()
    inputs = pipeline["include"][0]["inputs"]
    config = render(inputs)
    config.update({key: value for key, value in pipeline.items() if key != "include"})
    return config


def example_jobs() -> dict[str, dict[str, Any]]:
    config = example_config()
    return {
        name: resolve(config, name)
        for name in config
        if not name.startswith(".") and name not in GLOBAL_KEYWORDS
    }


def test_example_includes_the_component() -> None:
    includes = example()["include"]
    assert len(includes) == 1
    component = includes[0]["component"]
    assert re.fullmatch(r"\$CI_SERVER_FQDN/[\w./-]+/onnx-gate@[\w.~-]+", component), component
    inputs = includes[0]["inputs"]
    spec = component_spec()
    for name, value in inputs.items():
        assert name in spec, f"the example passes an undeclared input {name!r}"
        assert isinstance(value, INPUT_TYPES[spec[name]["type"]]), name
    assert (ROOT / inputs["policy"]).is_file()
    assert inputs["version"]


def test_example_policies_are_valid() -> None:
    assert len(load_policies(EXAMPLE_DIR / "policy.yaml")) == 1
    policies = load_policies(EXAMPLE_DIR / "models.yaml")
    assert len(policies) >= 2
    for path in (EXAMPLE_DIR / "models.yaml", EXAMPLE_DIR / "policy.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.search(r"(\.\./\.\./[\w./]+)", line)
            if match:
                assert (path.parent / match.group(1)).is_file(), match.group(1)


def test_example_shards_the_models_and_merges_them() -> None:
    jobs = example_jobs()
    shard = jobs["onnx-gate-shard"]
    parallel = shard["parallel"]
    assert "matrix" in parallel  # the issue: a parallel: matrix in the example
    script = script_text(shard)
    shards = parallel["matrix"][0]["SHARD"]
    assert f'--shard "$SHARD/{len(shards)}"' in script
    assert '--output-dir "gate-shards/$SHARD"' in script
    assert shard["artifacts"]["when"] == "always"
    merge = jobs["onnx-gate-merge"]
    assert {"job": "onnx-gate-shard", "artifacts": True} in merge["needs"]
    assert 'onnx-gate merge gate-shards/* --output-dir "$ONNX_GATE_OUTPUT_DIR"' in script_text(
        merge
    )
    assert set(merge["artifacts"]["reports"]) == set(REPORT_FILES)


def test_example_runs_the_stages_as_jobs() -> None:
    jobs = example_jobs()
    build, measure, decide = (
        jobs[f"onnx-gate-{stage}"] for stage in ("build", "measure", "decide")
    )
    assert "--stage build" in script_text(build)
    assert "--stage measure --from gate-build" in script_text(measure)
    assert "--stage decide --from gate-measure" in script_text(decide)
    assert measure["tags"], "measure on a tagged runner (the target hardware)"
    assert measure["needs"] == [{"job": "onnx-gate-build", "artifacts": True}]
    assert decide["needs"] == [{"job": "onnx-gate-measure", "artifacts": True}]
    assert set(decide["artifacts"]["reports"]) == set(REPORT_FILES)


def test_example_pipeline_is_consistent() -> None:
    pipeline = example()
    config = example_config()
    jobs = example_jobs()
    stages = pipeline["stages"]
    for name, job in jobs.items():
        assert job["stage"] in stages, f"{name}: stage {job['stage']!r} not in stages"
        for need in job.get("needs", []):
            needed = need["job"] if isinstance(need, dict) else need
            assert needed in jobs, f"{name} needs {needed!r}"
            assert stages.index(jobs[needed]["stage"]) <= stages.index(job["stage"])
        rules = job.get("rules")
        if isinstance(rules, Reference):
            target, *keys = rules.path
            value: Any = resolve(config, target)
            for key in keys:
                value = value[key]
            assert isinstance(value, list), name
    assert "onnx-gate-run" in jobs and "onnx-gate-compare" in jobs


# --- The user docs ---------------------------------------------------------------------------


DOCS = ROOT / "docs" / "ci-gitlab.md"


def test_docs_describe_every_input() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, declared in component_spec().items():
        row = re.search(rf"^\| `{re.escape(name)}` \| (\w+) \|", text, re.MULTILINE)
        assert row, f"docs/ci-gitlab.md has no row for input {name!r}"
        assert row.group(1) == declared["type"], name


def test_docs_yaml_snippets_parse() -> None:
    text = DOCS.read_text(encoding="utf-8")
    snippets = re.findall(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(snippets) >= 8
    spec = component_spec()
    for snippet in snippets:
        document = yaml.load(snippet, Loader=GitLabLoader)
        assert isinstance(document, (dict, list)), snippet
        if isinstance(document, dict):
            for include in document.get("include", []):
                assert set(include.get("inputs", {})) <= set(spec), include


# --- Running the component locally with gitlab-ci-local --------------------------------------


@dataclass
class LocalRun:
    returncode: int
    output: str
    project: Path
    statuses: dict[str, str] = field(default_factory=dict)

    def artifacts(self, job: str) -> Path:
        return self.project / ".gitlab-ci-local" / "artifacts" / job


def _local_tools() -> str:
    """gitlab-ci-local's path, or skip (fail under ONNX_GATE_REQUIRE_GITLAB_CI_LOCAL=1)."""
    missing = [tool for tool in ("gitlab-ci-local", "rsync", "git") if not shutil.which(tool)]
    if missing:
        reason = f"{', '.join(missing)} not on PATH (.ci/gitlab-local installs them)"
        if os.environ.get("ONNX_GATE_REQUIRE_GITLAB_CI_LOCAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return str(shutil.which("gitlab-ci-local"))


@pytest.fixture
def gitlab_ci_local() -> str:
    return _local_tools()


def _git(project: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=onnx-gate", "-c", "user.email=ci@example.com", *args],
        cwd=project,
        check=True,
        capture_output=True,
    )


def make_project(
    root: Path, pipeline: str, files: dict[str, Path] | None = None, branch: str = "main"
) -> Path:
    """A git project holding the component and `pipeline`; its remote names the project, so
    `component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/onnx-gate@$CI_COMMIT_SHA` (GitLab's way of
    testing a component in its own project) resolves to templates/onnx-gate.yml offline."""
    project = root / "project"
    (project / "templates").mkdir(parents=True)
    shutil.copy(COMPONENT, project / "templates" / "onnx-gate.yml")
    for relative, source in (files or {}).items():
        target = project / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    (project / ".gitlab-ci.yml").write_text(pipeline, encoding="utf-8")
    _git(project, "init", "-q", "-b", branch)
    _git(project, "remote", "add", "origin", "git@gitlab.example.com:onnx/onnx-gate.git")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "pipeline under test")
    return project


# "<job>   finished in 3.5 s" (passed), "... FAIL 1", "... WARN 4"; parallel: "name: [1/2]",
# parallel: matrix: "name: [1]" (the matrix values)
STATUS = re.compile(
    r"^(?!pipeline )(?P<job>[\w.-]+(?::? \[[\w/, .-]+\])?)\s+finished in "
    r".*?(?:(?P<status>WARN|FAIL) (?P<code>\d+))?\s*$"
)


def run_local(
    gitlab_ci_local: str,
    project: Path,
    *args: str,
    env: dict[str, str] | None = None,
    path_first: Path | None = None,
) -> LocalRun:
    """Run the pipeline with the shell executor (the job's `image` ignored), each job in its
    own copy of the project (--shell-isolation), the venv's onnx-gate on PATH."""
    bin_dirs = [str(Path(sys.executable).parent)]
    if path_first:
        bin_dirs.insert(0, str(path_first))
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = os.pathsep.join([*bin_dirs, environment.get("PATH", "")])
    result = subprocess.run(
        [
            gitlab_ci_local,
            "--no-color",
            "--force-shell-executor",
            "--shell-isolation",
            *args,
        ],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    statuses = {}
    for line in output.splitlines():
        match = STATUS.match(line)
        if match:
            status = match.group("status")
            statuses[match.group("job")] = f"{status} {match.group('code')}" if status else "PASS"
    return LocalRun(result.returncode, output, project, statuses)


def component_pipeline(inputs: dict[str, Any], extra: str = "") -> str:
    include = {
        "component": "$CI_SERVER_FQDN/$CI_PROJECT_PATH/onnx-gate@$CI_COMMIT_SHA",
        # the venv's onnx-gate is on PATH: install nothing
        "inputs": {"version": "", **inputs},
    }
    return yaml.safe_dump({"stages": ["test"], "include": [include]}, sort_keys=False) + extra


PROBE = """
probe:
  stage: test
  needs: [onnx-gate-run]
  script:
    - echo "dotenv verdict=$ONNX_GATE_VERDICT exit=$ONNX_GATE_EXIT_CODE"
"""


def fast_policy(target: Path, **changes: Any) -> Path:
    """The demo policy beside copies of the demo's model and data (a policy may only name
    files in its own folder or repository), one candidate and a short timing cap."""
    policy = yaml.safe_load(DEMO_POLICY.read_text(encoding="utf-8"))
    demo = DEMO_POLICY.parent
    for name in [policy["model"]["path"], *policy["data"].values()]:
        shutil.copyfile(demo / name, target.parent / name)
    policy["candidates"] = [{"name": "dynamic", "quantize": {"plugin": "dynamic"}}]
    policy["measure"] = {"max_seconds": 0.5}
    policy.update(changes)
    target.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return target


def test_local_gate_passes_on_the_demo(gitlab_ci_local: str, tmp_path: Path) -> None:
    pipeline = component_pipeline({"policy": str(DEMO_POLICY)}, PROBE)
    run = run_local(gitlab_ci_local, make_project(tmp_path, pipeline))
    assert run.returncode == 0, run.output
    assert run.statuses == {"onnx-gate-run": "PASS", "probe": "PASS"}, run.output
    assert "onnx-gate exit code: 0" in run.output
    report_dir = run.artifacts("onnx-gate-run") / "gate-report"
    for name in ("report.json", "summary.md", "model.onnx", *REPORT_FILES.values()):
        assert (report_dir / name).is_file(), f"{name} missing: {sorted(report_dir.iterdir())}"
    assert json.loads((report_dir / "report.json").read_text())["verdict"] == "pass"
    # the dotenv report reaches the job that needs the gate
    assert "dotenv verdict=pass exit=0" in run.output


def test_local_gate_fails_on_a_failed_budget(gitlab_ci_local: str, tmp_path: Path) -> None:
    policy = yaml.safe_load(DEMO_POLICY.read_text(encoding="utf-8"))
    budgets = [*policy["budgets"], {"metric": "size_mb", "max": 0.0001}]
    failing = fast_policy(tmp_path / "failing.yaml", budgets=budgets)
    pipeline = component_pipeline({"policy": str(failing)})
    run = run_local(gitlab_ci_local, make_project(tmp_path, pipeline))
    assert run.statuses == {"onnx-gate-run": "FAIL 1"}, run.output
    assert run.returncode != 0
    # artifacts: when: always - the reports of a failed gate are kept
    report_dir = run.artifacts("onnx-gate-run") / "gate-report"
    assert json.loads((report_dir / "report.json").read_text())["verdict"] == "fail"
    assert "<failure" in (report_dir / "junit.xml").read_text()
    assert "ONNX_GATE_EXIT_CODE=1" in (report_dir / "gate.env").read_text()


STAND_IN = """#!/bin/sh
# stands in for onnx-gate: exits with $STAND_IN_EXIT after writing a report folder
[ "$1" = "--version" ] && { echo "onnx-gate stand-in"; exit 0; }
mkdir -p gate-report && echo '{}' > gate-report/report.json
exit "$STAND_IN_EXIT"
"""


@pytest.mark.parametrize(
    ("code", "allow", "status"),
    [(INCONCLUSIVE, True, "WARN 4"), (INCONCLUSIVE, False, "FAIL 4"), (1, True, "FAIL 1")],
)
def test_local_allow_failure_exit_codes(
    gitlab_ci_local: str, tmp_path: Path, code: int, allow: bool, status: str
) -> None:
    """Exit 4 is only a warning where allow-inconclusive is set; any other failure still fails.
    A stand-in for onnx-gate on PATH produces the exit code (an inconclusive timing budget
    cannot be produced on demand)."""
    stand_in = tmp_path / "bin" / "onnx-gate"
    stand_in.parent.mkdir()
    stand_in.write_text(STAND_IN, encoding="utf-8")
    stand_in.chmod(0o755)
    pipeline = component_pipeline({"policy": "policy.yaml", "allow-inconclusive": allow})
    run = run_local(
        gitlab_ci_local,
        make_project(tmp_path, pipeline),
        env={"STAND_IN_EXIT": str(code)},
        path_first=stand_in.parent,
    )
    assert run.statuses == {"onnx-gate-run": status}, run.output
    assert (
        f"ONNX_GATE_EXIT_CODE={code}"
        in (run.artifacts("onnx-gate-run") / "gate-report" / "gate.env").read_text()
    )
    # gitlab-ci-local 4.60.1 counts a job with `allow_failure: exit_codes` as allowed to fail
    # whatever its code, so its own exit status is checked only without it
    if not allow:
        assert run.returncode != 0


def _listed_jobs(gitlab_ci_local: str, project: Path, *args: str) -> set[str]:
    result = subprocess.run(
        [gitlab_ci_local, "--no-color", "--list-json", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listing = re.search(r"^\[.*", result.stdout, re.MULTILINE | re.DOTALL)
    assert listing, result.stdout + result.stderr
    jobs = json.loads(listing.group(0))
    return {job["name"] for job in jobs if job.get("when") != "never"}


def test_local_rules(gitlab_ci_local: str, tmp_path: Path) -> None:
    pipeline = component_pipeline({"policy": "policy.yaml", "compare": True})
    feature = make_project(tmp_path, pipeline, branch="feature")
    assert _listed_jobs(gitlab_ci_local, feature) == set()
    merge_request = ("--variable", "CI_PIPELINE_SOURCE=merge_request_event")
    assert _listed_jobs(gitlab_ci_local, feature, *merge_request) == {
        "onnx-gate-run",
        "onnx-gate-compare",
    }
    main = make_project(tmp_path / "main", pipeline)
    assert _listed_jobs(gitlab_ci_local, main) == {"onnx-gate-run"}


class _ArtifactsApi(http.server.BaseHTTPRequestHandler):
    """GitLab's job-artifacts API, serving files by name (a missing one: 404)."""

    files: dict[str, bytes] = {}  # noqa: RUF012 - set per server below
    requests: list[tuple[str, str | None]] = []  # noqa: RUF012 - set per server below

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("JOB-TOKEN")))
        data = self.files.get(self.path.split("?")[0].rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404, "404 Not found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def artifacts_api() -> Iterator[Callable[[dict[str, bytes]], tuple[str, list[Any]]]]:
    servers: list[http.server.HTTPServer] = []

    def start(files: dict[str, bytes]) -> tuple[str, list[Any]]:
        handler = type("Api", (_ArtifactsApi,), {"files": files, "requests": []})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/api/v4", handler.requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("base", ["published", "regressed", "missing"])
def test_local_compare_with_main(
    gitlab_ci_local: str,
    tmp_path: Path,
    artifacts_api: Callable[[dict[str, bytes]], tuple[str, list[Any]]],
    base: str,
) -> None:
    """The compare job downloads the target branch's report and model through the job-artifacts
    API with the job token; without them (the first run) it passes with a notice."""
    policy = fast_policy(tmp_path / "policy.yaml")
    served: dict[str, bytes] = {}
    if base in ("published", "regressed"):
        subprocess.run(
            [Path(sys.executable).parent / "onnx-gate", "run", policy, "-q", "-o", tmp_path / "b"],
            check=True,
            capture_output=True,
        )
        report = json.loads((tmp_path / "b" / "report.json").read_text())
        for entry in report["candidates"]:
            # Two runs of a microsecond model differ by more than one run's interval: wide
            # base intervals keep timings out of it, the accuracy metrics are deterministic.
            entry["intervals"] = {metric: [0.0, 1e9] for metric in entry["intervals"]}
            if base == "regressed" and entry["name"] == report["chosen"]:
                # main's labelled accuracy was higher than any model's can be: it fell
                entry["metrics"]["accuracy"] = 1.5
        served["report.json"] = json.dumps(report).encode()
        if base == "published":  # both models at hand: compare times them side by side
            served["model.onnx"] = (tmp_path / "b" / "model.onnx").read_bytes()
    api_url, requests = artifacts_api(served)
    pipeline = component_pipeline({"policy": str(policy), "compare": True})
    run = run_local(
        gitlab_ci_local,
        make_project(tmp_path, pipeline, branch="feature"),
        "--variable",
        "CI_PIPELINE_SOURCE=merge_request_event",
        "--variable",
        "CI_MERGE_REQUEST_TARGET_BRANCH_NAME=main",
        "--variable",
        f"CI_API_V4_URL={api_url}",
        "--variable",
        "CI_JOB_TOKEN=job-token-for-test",
    )
    assert run.statuses["onnx-gate-run"] == "PASS", run.output
    # a regression against the base fails the job, like a missed budget
    expected = "FAIL 1" if base == "regressed" else "PASS"
    assert run.statuses["onnx-gate-compare"] == expected, run.output
    # report.json, then (when there is one) the model; a missing report stops there
    assert len(requests) == (1 if base == "missing" else 2)
    for (path, token), name in zip(requests, ("report.json", "model.onnx"), strict=False):
        assert re.fullmatch(
            rf"/api/v4/projects/\d+/jobs/artifacts/main/raw/gate-report/{re.escape(name)}"
            r"\?job=onnx-gate-run",
            path,
        ), path
        assert token == "job-token-for-test"
    if base == "published":
        assert "side by side: the head's model runs at" in run.output
    if base == "missing":
        assert "No base report" in run.output
        return
    compare_dir = run.artifacts("onnx-gate-compare") / "gate-report" / "compare"
    assert (compare_dir / "compare.json").is_file()
    assert (compare_dir / "compare.md").is_file()


def test_local_example_pipeline(gitlab_ci_local: str, tmp_path: Path) -> None:
    """The example pipeline itself, its component include pointed at this checkout and
    installing nothing: the gate, the shards and their merge, the stages as jobs."""
    text = EXAMPLE.read_text(encoding="utf-8")
    include = re.search(r"component: (\$CI_SERVER_FQDN/\S+)", text)
    version = re.search(r"version: \S+", text)
    assert include and version
    text = text.replace(
        include.group(1), "$CI_SERVER_FQDN/$CI_PROJECT_PATH/onnx-gate@$CI_COMMIT_SHA"
    )
    text = text.replace(version.group(0), 'version: ""')
    demo = DEMO_POLICY.parent
    files = {
        f"examples/gitlab/{name}": EXAMPLE_DIR / name for name in ("policy.yaml", "models.yaml")
    }
    files.update({f"gate/demo/{path.name}": path for path in demo.iterdir() if path.is_file()})
    project = make_project(tmp_path, text, files, branch="feature")
    run = run_local(
        gitlab_ci_local,
        project,
        "--variable",
        "CI_PIPELINE_SOURCE=merge_request_event",
        # no GitLab to ask for main's report: refused at once, and the compare job passes
        "--variable",
        "CI_API_V4_URL=http://127.0.0.1:9/api/v4",
    )
    expected = {
        "onnx-gate-run",
        "onnx-gate-compare",
        "onnx-gate-merge",
        "onnx-gate-build",
        "onnx-gate-measure",
        "onnx-gate-decide",
    }
    assert {job: run.statuses.get(job) for job in expected} == dict.fromkeys(expected, "PASS"), (
        run.output
    )
    shards = {job: status for job, status in run.statuses.items() if "shard" in job}
    assert len(shards) == 2 and set(shards.values()) == {"PASS"}, run.output
    merged = run.artifacts("onnx-gate-merge") / "gate-report"
    assert json.loads((merged / "report.json").read_text())["verdict"] == "pass"
    assert (merged / "junit.xml").is_file()
    decided = run.artifacts("onnx-gate-decide") / "gate-report"
    assert (decided / "report.json").is_file()
