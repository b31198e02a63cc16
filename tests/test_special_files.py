"""Hostile input, round two: files that are not regular files, and messages without end.

A pull request can commit a symbolic link to /dev/zero or /proc/self/environ, a FIFO or a
socket where the policy, the model or its data should be, and a data file of 20,000
arrays whose names would make one error line of 150,000 characters. Each ends in its
documented exit code, one bounded line per problem, a report.json (even when the output
folder did not exist yet), and bounded memory: the runs that could read without end are
real CLI processes under an address-space cap and a timeout.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_MEASURE, load_report
from test_hostile import _add_model

from gate.errors import MAX_LINE
from gate.files import BoundedReader, LimitExceeded, open_regular
from gate.run.load import file_sha256

ONE_CANDIDATE = [{"name": "basic", "graph": {"level": "basic"}}]
CAP = 3 << 30  # bytes of address space: a reader of /dev/zero would hit it within seconds


def _model(folder: Path, external: str | None = None) -> Path:
    """y = x + w, w (16 floats) inline or as external data in ``external``."""
    return _add_model(folder, external=external)


def _policy(folder: Path, name: str = "policy.json", **body: object) -> Path:
    document = {
        "version": 1,
        "model": {"path": "model.onnx"},
        "measure": dict(FAST_MEASURE),
        "candidates": ONE_CANDIDATE,
        **body,
    }
    path = folder / name
    path.write_text(json.dumps(document))
    return path


def _gate(*args: object, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own, under an address-space cap (soft, as the
    gate's build children lower it further) and a timeout: a regression here must fail the
    test, not take the machine's memory or hang the suite."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "gate", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap,
    )  # fmt: skip


def _refused(done: subprocess.CompletedProcess[str], out: Path, code: int) -> list[str]:
    """The documented exit code, no traceback, every line bounded, and a report saying so."""
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert all(len(line) <= MAX_LINE for line in (done.stdout + done.stderr).splitlines())
    report = load_report(out)
    assert report["verdict"] == "error" and report["exit_code"] == code
    return report["errors"]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the socket file stays after the socket is closed
    return path


# -- the policy itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: p.symlink_to("/dev/zero"), "is a character device, not a regular file"),
        (lambda p: p.symlink_to("/dev/urandom"), "is a character device, not a regular file"),
        (_fifo, "is a FIFO (named pipe), not a regular file"),
        (_socket, "is a socket, not a regular file"),
        (
            lambda p: p.symlink_to("/proc/self/environ"),
            "is a kernel file under /proc, not a regular file",
        ),
        (
            lambda p: p.symlink_to("/proc/self/status"),
            "is a kernel file under /proc, not a regular file",
        ),
    ],
    ids=["dev-zero", "dev-urandom", "fifo", "socket", "proc-environ", "proc-status"],
)
def test_a_policy_that_is_not_a_regular_file_is_refused_with_a_report(tmp_path, make, why):
    """/dev/zero used to be read until the kernel killed the gate (no report, no exit code),
    a FIFO to block for ever. Both are one line now, and the output folder that did not
    exist yet holds the report."""
    folder = tmp_path / "work"
    _model(folder)
    make(folder / "policy.yaml")
    out = tmp_path / "not" / "yet" / "out"
    done = _gate("run", "policy.yaml", "-o", out, "-q", cwd=folder, timeout=60)
    [error] = _refused(done, out, 2)
    assert error == f"the policy policy.yaml {why}"  # as named, from the working directory
    assert os.environ.get("PATH", "") not in json.dumps(load_report(out))  # nothing of environ
    check = _gate("check", "policy.yaml", cwd=folder, timeout=60)
    assert check.returncode == 2 and why in check.stderr


def test_a_policy_link_leading_out_of_its_repository_is_refused(gate_cli, tmp_path):
    """The fence is the repository of the policy as the job names it: a link committed in a
    pull request must not move it to the folder the link points into (the runner's home,
    say), nor have that folder's files read and quoted in an error."""
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / ".git").mkdir(parents=True)
    _model(elsewhere)
    _policy(elsewhere, "policy.json")
    (repo / "policy.json").symlink_to(elsewhere / "policy.json")
    result = gate_cli("check", repo / "policy.json")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: the policy policy.json is a symbolic link leading outside its repository; "
        "refused (the person running the gate can allow a folder with --allow-path)\n"
    )
    # The person running the gate can allow it; the model is then found beside the link.
    (repo / "model.onnx").symlink_to(elsewhere / "model.onnx")
    allowed = gate_cli("check", repo / "policy.json", "--allow-path", elsewhere)
    assert allowed.exit_code == 0, allowed.stderr
    # A link to a policy in the same repository is fine; its paths are read from the link's
    # folder, as the job named it.
    (repo / "model.onnx").unlink()
    _model(repo)
    (repo / "configs").mkdir()
    (repo / "configs" / "policy.json").symlink_to(repo / "real.json")
    _policy(repo, "real.json", model={"path": "../model.onnx"})
    result = gate_cli("check", repo / "configs" / "policy.json")
    assert result.exit_code == 0, result.stderr


# -- what the policy names -----------------------------------------------------------


def _named(folder: Path, key: str, target: Path) -> Path:
    if key == "model":
        return _policy(folder, model={"path": target.name})
    return _policy(folder, data={key: target.name})


@pytest.mark.parametrize("key", ["model", "validation", "calibration", "labels"])
@pytest.mark.parametrize("kind", ["fifo", "socket", "folder"])
def test_a_model_or_data_path_that_is_not_a_regular_file_is_refused(tmp_path, key, kind):
    folder = tmp_path / "repo"
    _model(folder)
    _policy(folder)
    target = folder / ("thing.onnx" if key == "model" else "thing.npz")
    {"fifo": _fifo, "socket": _socket, "folder": Path.mkdir}[kind](target)
    if key == "labels":  # labels need validation data beside them
        np.savez(folder / "v.npz", x=np.zeros((2, 1, 16), np.float32))
        _policy(folder, data={"validation": "v.npz", "labels": target.name})
    else:
        _named(folder, key, target)
    out = tmp_path / "out"
    done = _gate("run", "policy.json", "-o", out, "-q", cwd=folder, timeout=60)
    [error] = _refused(done, out, 2)
    what = {"fifo": "a FIFO (named pipe)", "socket": "a socket", "folder": "a folder"}[kind]
    location = "model.path" if key == "model" else f"data.{key}"
    assert (
        error == f"policy.json:1: {location}: {target.name} is {what}, not a regular file; refused"
    )


def test_external_data_that_is_a_fifo_is_refused_before_anything_reads_it(tmp_path):
    folder = tmp_path / "repo"
    _model(folder, external="weights.bin")
    _fifo(folder / "weights.bin")
    _policy(folder)
    out = tmp_path / "out"
    done = _gate("run", "policy.json", "-o", out, "-q", cwd=folder, timeout=60)
    [error] = _refused(done, out, 3)
    assert error == (
        "model model.onnx: tensor 'w' keeps its data in 'weights.bin', which is a FIFO "
        "(named pipe), not a regular file; refused"
    )


def test_files_the_gate_reads_back_from_its_output_folder_never_block(classifier, tmp_path):
    """An output folder committed with report.json (read to find the earlier run's model)
    or the write probe's old name as FIFOs: the run goes on and replaces them."""
    out = tmp_path / "out"
    out.mkdir()
    _fifo(out / "report.json")
    _fifo(out / ".onnx-gate-write-test")
    classifier.write_policy({"candidates": ONE_CANDIDATE})
    done = _gate("run", "policy.yaml", "-o", out, "-q", cwd=classifier.folder, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_report(out)["verdict"] == "pass"


def test_compare_refuses_a_base_report_that_is_a_fifo(classifier, tmp_path):
    head = tmp_path / "head"
    classifier.write_policy({"candidates": ONE_CANDIDATE})
    assert _gate("run", "policy.yaml", "-o", head, "-q", cwd=classifier.folder).returncode == 0
    base = tmp_path / "base"
    base.mkdir()
    _fifo(base / "report.json")
    done = _gate("compare", base, head, "-o", tmp_path / "cmp", cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"cannot read {base / 'report.json'}: it is a FIFO (named pipe)" in done.stderr


# -- messages --------------------------------------------------------------------------


def test_a_data_file_of_20000_arrays_names_a_few_of_them(tmp_path):
    folder = tmp_path / "repo"
    _model(folder)
    np.savez(folder / "many.npz", **{f"a{i}": np.zeros(1, np.float32) for i in range(20_000)})
    _policy(folder, data={"validation": "many.npz"})
    out = tmp_path / "out"
    done = _gate("run", "policy.json", "-o", out, "-q", cwd=folder, timeout=120)
    errors = _refused(done, out, 2)
    assert errors == [
        "data.validation: many.npz lacks input(s) x (has: a0, a1, a2, a3, a4, a5, a6, a7 and "
        "19,992 more)",
        "data.validation: many.npz has array(s) a0, a1, a2, a3, a4, a5, a6, a7 and 19,992 more "
        "that are not model inputs (x)",
    ]
    summary = (out / "summary.md").read_text()
    assert "19,992 more" in summary and max(map(len, summary.splitlines())) <= MAX_LINE


def test_a_long_line_is_cut_on_the_console_and_whole_in_the_report(tmp_path):
    folder = tmp_path / "repo"
    _model(folder)
    metric = "m" * 50_000
    _policy(folder, budgets=[{"metric": metric, "max": 1}])
    out = tmp_path / "out"
    done = _gate("run", "policy.json", "-o", out, "-q", cwd=folder, timeout=60)
    [error] = _refused(done, out, 2)
    assert metric in error  # report.json keeps the whole line
    [printed] = [line for line in done.stdout.splitlines() if line.startswith("error: ")]
    assert printed.startswith("error: policy.json:1: budgets[0].metric: unknown metric 'mmm")
    assert printed.endswith(f"... ({len('error: ' + error):,} characters; all in report.json)")
    assert max(map(len, (out / "summary.md").read_text().splitlines())) <= MAX_LINE


@pytest.mark.parametrize(
    "body, problem",
    [
        (
            {"budgets": [{"metric": "size_mb", "max": 1 + i} for i in range(1001)]},
            "policy.json:1: budgets: 1,001 items; at most 1,000 allowed",
        ),
        (
            {
                "model": None,
                "models": [{"name": f"m{i}", "path": "model.onnx"} for i in range(10_000)],
            },
            "policy.json:1: models: 10,000 items; at most 1,000 allowed",
        ),
        (
            {"budgets": [{"metric": "size_mb", "max": 5}, {"metric": "size_mb", "max": 5}]},
            "policy.json:1: budgets[1]: repeats budgets[0]; refused",
        ),
    ],
    ids=["1001-budgets", "10000-models", "repeated-budget"],
)
def test_lists_past_their_limit_are_refused_by_their_size(gate_cli, tmp_path, body, problem):
    """jsonschema would quote the whole list; the gate says how long it is. A valid policy
    naming one file 10,000 times is refused before a single run starts."""
    folder = tmp_path / "repo"
    _model(folder)
    path = _policy(folder, **body)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in document.items() if v is not None}))
    result = gate_cli("check", path)
    assert result.exit_code == 2
    assert result.stderr == f"error: {problem}\n"


def test_the_bounded_reader_stops_at_its_limit(tmp_path):
    """A regular file read past the limit raises instead of filling memory; a device is
    refused before it is read at all."""
    long = tmp_path / "long"
    long.write_bytes(b"x" * 100)
    with open_regular(long, 10, OSError) as reader:
        assert isinstance(reader, BoundedReader) and reader.size == 100
        assert reader.read(4) == b"xxxx"
        with pytest.raises(LimitExceeded):
            reader.read()
    with open_regular(long, 100, OSError) as reader:
        assert reader.read() == b"x" * 100
    device = Path("/dev/zero")
    with pytest.raises(OSError, match="is a character device, not a regular file"):
        open_regular(device, 10, OSError).__enter__()


# -- limits set by the job, not the gate -------------------------------------------------


def test_the_gate_runs_under_a_hard_address_space_limit(classifier, tmp_path):
    """A job under `ulimit -v` (a hard limit below build.memory_mb): the probe child may only
    lower the limit. It used to fail every model with 'not allowed to raise maximum limit'."""
    classifier.write_policy({"candidates": ONE_CANDIDATE, "build": {"memory_mb": 100_000}})

    def hard_cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    done = subprocess.run(
        [sys.executable, "-m", "gate", "run", "policy.yaml", "-o", tmp_path / "out", "-q"],
        cwd=classifier.folder, capture_output=True, text=True, timeout=300, preexec_fn=hard_cap,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert load_report(tmp_path / "out")["verdict"] == "pass"


def test_a_signal_before_the_run_starts_still_writes_a_partial_report(tmp_path, monkeypatch):
    """Fault injection: the policy loader is interrupted (SIGTERM arrives) before the output
    folder exists."""
    import gate.ci.suite

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(gate.ci.suite, "load_policies", interrupted)
    folder = tmp_path / "repo"
    _model(folder)
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt):
        gate.ci.suite.run_gate(_policy(folder), out)
    report = load_report(out)
    assert report["partial"] is True and report["exit_code"] == 3
    assert report["errors"] == ["interrupted before the run started; this report is partial"]


# -- the output folder and what is read back from it ------------------------------------


def test_links_and_fifos_in_the_output_folder_are_replaced_never_written_through(
    classifier, tmp_path
):
    """An output folder inside the checkout can hold what a pull request committed. The
    gate's files replace links at their names (never writing where they point), and its
    temporary files take fresh names (the old fixed ones are FIFOs and links here)."""
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in ("model.onnx", "timing-input.npz", ".model.onnx.tmp", ".timing-input.npz.tmp.npz"):
        victims[name] = tmp_path / f"victim-{name.strip('.')}"
        victims[name].write_text("untouched")
        (out / name).symlink_to(victims[name])
    _fifo(out / ".model.onnx.data.tmp")
    classifier.write_policy({"candidates": ONE_CANDIDATE})
    done = _gate("run", "policy.yaml", "-o", out, "-q", cwd=classifier.folder, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(victim.read_text() == "untouched" for victim in victims.values())
    assert not (out / "model.onnx").is_symlink()
    assert load_report(out)["output_model"]["sha256"] == file_sha256(out / "model.onnx")
    assert not (out / "timing-input.npz").is_symlink()
    assert (out / "timing-input.npz").read_bytes()[:2] == b"PK"  # the gate's own .npz


def test_a_chosen_model_committed_as_a_kernel_file_does_not_block_the_next_run(
    classifier, tmp_path
):
    """The gate reads the earlier model.onnx's digest to know it may delete it: a link to
    /proc/kmsg (readable by root, blocking) must not stop the run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").symlink_to("/proc/kmsg")
    (out / "report.json").write_text(json.dumps({"output_model": {"sha256": "0" * 64}}))
    classifier.write_policy({"candidates": ONE_CANDIDATE})
    done = _gate("run", "policy.yaml", "-o", out, "-q", cwd=classifier.folder, timeout=300)
    assert done.returncode == 0, done.stderr


def test_summary_lines_stay_bounded_when_hundreds_of_budgets_fail(tmp_path):
    """The decision log joins the budgets that rejected a candidate: five, then how many
    more; report.json keeps every result."""
    folder = tmp_path / "repo"
    _model(folder)
    budgets = [{"metric": "size_mb", "max": 1e-9 * (i + 1)} for i in range(300)]
    _policy(folder, budgets=budgets)
    out = tmp_path / "out"
    done = _gate("run", "policy.json", "-o", out, "-q", cwd=folder, timeout=300)
    assert done.returncode == 1, done.stderr
    summary = (out / "summary.md").read_text()
    assert max(map(len, summary.splitlines())) <= MAX_LINE
    assert "and 295 more (report.json lists every one)" in summary
    report = load_report(out)
    basic = next(c for c in report["candidates"] if c["name"] == "basic")
    assert sum(not b["passed"] for b in basic["budgets"]) == 300
    assert max(map(len, done.stdout.splitlines())) <= MAX_LINE


def test_the_github_step_never_reads_a_summary_that_is_a_kernel_file_or_fifo(tmp_path, monkeypatch):
    """A run that did not rewrite summary.md (a usage error, a SIGKILL) leaves a committed
    one in place: a link to /proc/self/environ would post the job's environment in the job
    summary and the pull request comment; a FIFO would hang the step."""
    from test_github_action import _report_dir, _report_main

    monkeypatch.setenv("ONNX_GATE_CANARY", "canary-5d1e")
    for name, make in (("environ", lambda p: p.symlink_to("/proc/self/environ")), ("fifo", _fifo)):
        out = _report_dir(tmp_path / name, "")
        (out / "summary.md").unlink()
        make(out / "summary.md")
        _, summary = _report_main(
            tmp_path, monkeypatch, "report", "--output-dir", str(out), "--exit-code", "0"
        )
        assert "canary-5d1e" not in summary.read_text()


def test_stage_and_merge_inputs_cannot_point_out_of_their_folder(classifier, gate_cli, tmp_path):
    """A build stage's output travels to another runner (a GPU machine): the candidate
    files its build.json names, its timing input and a shard's model folders are confined
    to the folder given, and anything but a regular file is refused."""
    classifier.write_policy({"candidates": ONE_CANDIDATE})
    policy = classifier.folder / "policy.yaml"
    built = tmp_path / "built"
    assert gate_cli("run", policy, "--stage", "build", "-o", built, "-q").exit_code == 0
    build_file = built / "stage" / "build.json"
    build = json.loads(build_file.read_text())
    [item] = [c for c in build["candidates"] if c.get("file")]
    item["file"] = "../../../etc/passwd"
    build_file.write_text(json.dumps(build))
    result = gate_cli("run", policy, "--stage", "measure", "--from", built, "-o", tmp_path / "m")
    assert result.exit_code == 2
    assert "candidate basic's file '../../../etc/passwd' leads out of it; refused" in result.stdout

    suite = classifier.folder / "suite.json"
    suite.write_text(
        json.dumps(
            {
                "version": 1,
                "models": [{"name": "a", "path": classifier.model.name}],
                "measure": dict(FAST_MEASURE),
                "candidates": ONE_CANDIDATE,
            }
        )
    )
    shard = tmp_path / "shard"
    assert gate_cli("run", suite, "--shard", "1/1", "-o", shard, "-q").exit_code == 0
    report = json.loads((shard / "report.json").read_text())
    report["models"][0]["dir"] = "/etc"
    (shard / "report.json").write_text(json.dumps(report))
    result = gate_cli("merge", shard, "-o", tmp_path / "merged")
    assert result.exit_code in (2, 3)
    assert "leads out of the folder; refused" in result.stdout + result.stderr
