"""Stages as CI jobs: build candidates on one runner, time them on the target runner
(say a GPU runner), decide anywhere - passing the output folder between jobs.

- ``--stage build`` loads, searches, builds and validates: candidates that miss an
  accuracy budget stop here. It writes ``stage/`` (the original, the candidates that
  go on, ``build.json``) and a report with verdict ``pending``.
- ``--stage measure --from BUILD_DIR`` validates those candidates again and times them
  on this runner's provider, then decides: a complete report and the chosen model.
  The policy must be the one the build stage used.
- ``--stage decide --from MEASURE_DIR`` decides again from those measurements with the
  current policy's budgets, waivers and selection (no model is run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gate.errors import UsageError
from gate.exitcodes import ExitCode
from gate.files import REPORT_MAX_BYTES, copy_folder, copy_regular, not_regular, read_json, within
from gate.metrics import TIMING_METRICS
from gate.policy.loading import policy_digest
from gate.report.document import REPORT_FILE, SUITE, json_safe, write_atomic
from gate.report.model import CandidateEntry
from gate.run.candidates import ORIGINAL, Candidate
from gate.run.check import active_validators
from gate.run.decide import Final
from gate.run.load import copy_model
from gate.run.pipeline import TIMING_INPUT, GateRun
from gate.run.validate import ValidationSetup
from gate.stats import Estimate

STAGES = ("build", "measure", "decide")
BUNDLE = "stage"
BUILD_FILE = "build.json"
ORIGINAL_FILE = "original.onnx"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return read_json(
            path, REPORT_MAX_BYTES, lambda why: UsageError(f"cannot read {path}: it {why}")
        )
    except FileNotFoundError:
        raise UsageError(f"{path.parent} holds no {path.name}: {what}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


class StagedRun(GateRun):
    """One stage of a run; the same steps as a whole run, split where artifacts move."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        stage, source = self.settings.options.stage or "", self.settings.options.source
        if stage not in STAGES:
            raise UsageError(f"--stage must be one of {', '.join(STAGES)} (got '{stage}')")
        if (source is None) != (stage == "build"):
            raise UsageError(
                "--stage build takes no --from"
                if stage == "build"
                else f"--stage {stage} needs --from: the output folder of the previous stage"
            )
        self.stage, self.source = stage, source

    def execute(self) -> None:
        self.report.stage = self.stage
        {"build": self.build, "measure": self.measure, "decide": self.decide}[self.stage]()

    # -- build -----------------------------------------------------------------

    def build(self) -> None:
        self.scores.timed = False
        self.prepare()
        original = self.judge_original()
        built = self.search()
        candidates = [original, *built]
        self.scores.entries[ORIGINAL].status = "pending"
        self.report.candidates = [self.scores.entries[c.name] for c in candidates]
        going_on = self._write_bundle(candidates)
        self.report.update(
            verdict="pending",
            exit_code=int(ExitCode.PASS),
            message=(
                f"built {len(built)} candidate(s); {len(going_on)} meet every budget known "
                f"before timing and go on: run --stage measure --from {self.output_dir} "
                "on the target"
            ),
            decision="pending: nothing is timed in the build stage",
        )

    def _write_bundle(self, candidates: list[Candidate]) -> list[str]:
        bundle = self.output_dir / BUNDLE
        if bundle.is_symlink():  # committed in the output folder: replaced, not followed
            bundle.unlink()
        shutil.rmtree(bundle, ignore_errors=True)
        (bundle / "candidates").mkdir(parents=True)
        copy_model(self.model.path, bundle / ORIGINAL_FILE)
        items, going_on = [], []
        for candidate in candidates[1:]:
            entry = self.scores.entries[candidate.name]
            status = "failed"
            if candidate.skipped:
                status = "skipped"
            elif not candidate.failed:
                passed = self.scores.outcome_so_far(candidate) == "passed"
                status = "pending" if passed else "rejected"
                if not passed:
                    entry.reasons = [
                        r.explain()
                        for r in self.scores.evaluate_so_far(candidate.name)
                        if r.budget.level == "error" and r.decision != "pass" and not r.waiver
                    ]
            entry.status = status
            file = None
            if status == "pending":
                assert candidate.path is not None
                file = f"candidates/{candidate.name}.onnx"
                copy_model(candidate.path, bundle / file)
                going_on.append(candidate.name)
            items.append(
                {
                    "name": candidate.name,
                    "recipe": candidate.recipe,
                    "session": candidate.session,
                    "notes": candidate.notes,
                    "status": status,
                    "error": candidate.error,
                    "stage": candidate.stage,
                    "reasons": entry.reasons,
                    "file": file,
                }
            )
        build = {
            "format": 1,
            "policy_sha256": policy_digest(self.policy.path),
            "name": self.policy.name,
            "model": self.report.model,
            "testbed": self.report.testbed,
            "build": self.report.get("build"),
            "search": self.report.get("search"),
            "candidates": items,
            "entries": {name: entry.to_json() for name, entry in self.scores.entries.items()},
        }
        write_atomic(bundle / BUILD_FILE, json.dumps(json_safe(build), indent=1) + "\n")
        return going_on

    # -- measure ---------------------------------------------------------------

    def measure(self) -> None:
        assert self.source is not None
        bundle = self.source / BUNDLE
        build = _read_json(bundle / BUILD_FILE, "run --stage build first, into that folder")
        if build.get("policy_sha256") != policy_digest(self.policy.path):
            raise UsageError(
                f"{self.policy.path.name} is not the policy the build stage in {self.source} used: "
                "run both stages with the same policy file"
            )
        # The model to time is the one the build stage loaded (exported, shapes fixed).
        self.policy = dataclasses.replace(
            self.policy, model_path=bundle / ORIGINAL_FILE, exporter=None, exporter_options={}
        )
        self.prepare()
        self.report.model = build["model"]
        self.report.build_stage = {"from": str(self.source), "testbed": build["testbed"]}
        self.report.build, self.report.search = build["build"], build["search"]
        original = self.judge_original()
        candidates = [original]
        for item in build["candidates"]:
            candidate = Candidate(item["name"], item["recipe"], None, item["session"])
            candidate.notes = list(item["notes"])
            if item["file"]:
                candidate.path = within(bundle, item["file"])
                why = "leads out of it" if candidate.path is None else not_regular(candidate.path)
                if why:
                    raise UsageError(
                        f"{bundle / BUILD_FILE}: candidate {item['name']}'s file "
                        f"{str(item['file'])[:80]!r} {why}; refused"
                    )
                self.say(f"validating and measuring {candidate.name}")
                entry = self.judge.judge(candidate)
            else:
                entry = CandidateEntry.from_json(build["entries"][item["name"]])
                if item["status"] == "skipped":
                    candidate.skip(item["error"])
                elif item["status"] == "rejected":
                    candidate.fail(
                        "validate", "rejected in the build stage: " + "; ".join(item["reasons"])
                    )
                else:
                    candidate.fail(item["stage"] or "build", item["error"] or "failed")
                entry.update(stage=candidate.stage, error=candidate.error)
            entry.search = build["entries"].get(item["name"], {}).get("search")
            self.scores.entries[candidate.name] = entry
            candidates.append(candidate)
        self.finish(candidates)
        # The next stage (decide) needs the models, whichever it chooses.
        if bundle.resolve() != (self.output_dir / BUNDLE).resolve():
            shutil.rmtree(self.output_dir / BUNDLE, ignore_errors=True)
            try:
                copy_folder(bundle, self.output_dir / BUNDLE)
            except OSError as exc:
                raise UsageError(f"cannot copy {bundle}: {exc.strerror or exc}") from None

    # -- decide ----------------------------------------------------------------

    def decide(self) -> None:
        assert self.source is not None
        from gate.ci.compare import read_report

        measured = read_report(self.source / REPORT_FILE)
        if not (self.source / BUNDLE / BUILD_FILE).is_file() and measured.get("stage") != "build":
            raise UsageError(
                f"{self.source} holds no {BUNDLE}/ folder with the candidates' models: give the "
                "output folder of --stage measure"
            )
        if measured.get("kind") == SUITE or measured.get("stage") == "build":
            raise UsageError(
                f"{self.source} holds no measurements of one model: "
                "give the output folder of --stage measure"
            )
        for key in ("model", "target", "testbed", "baseline", "data", "validation"):
            setattr(self.report, key, measured.get(key))
        for key in ("measurement", "cost", "build", "search", "build_stage"):
            if measured.get(key) is not None:
                setattr(self.report, key, measured[key])
        self.report.measured = {"from": str(self.source), "duration_s": measured["duration_s"]}
        timing_input = self.source / TIMING_INPUT
        if timing_input.is_file():  # what the measurements were taken on travels with them
            try:
                copy_regular(timing_input, self.output_dir / TIMING_INPUT)
            except OSError as exc:
                raise UsageError(f"cannot copy {timing_input}: {exc.strerror or exc}") from None
        self.recorded_final = measured.get("final")
        validation = measured.get("validation") or {}
        task = (validation.get("task") or {}).get("task") or "tensor"
        self.validators = active_validators(self.policy, self.host, task)
        self.judged = validation.get("output") or ""
        self.synthetic = bool(validation.get("synthetic_inputs"))
        self.setup = ValidationSetup(task, {}, [self.judged], [], None, self.synthetic)
        self.scores.budgets = list(self.policy.budgets)
        bundle = self.source / BUNDLE
        candidates = []
        for old in measured["candidates"]:
            entry = CandidateEntry.from_json(
                {**old, "chosen": False, "budgets": [], "reasons": [], "outcome": None}
            )
            self.scores.entries[entry.name] = entry
            candidate = Candidate(entry.name, entry.recipe, None, entry.session)
            if old.get("error"):
                candidate.fail(old.get("stage") or "build", old["error"])
                candidate.skipped = old["status"] == "skipped"
            else:
                candidate.path = bundle / (
                    ORIGINAL_FILE
                    if candidate.name == ORIGINAL
                    else f"candidates/{candidate.name}.onnx"
                )
                self.scores.estimates[candidate.name] = _estimates(entry, measured)
            candidates.append(candidate)
        if ORIGINAL not in self.scores.entries or ORIGINAL not in self.scores.estimates:
            raise UsageError(f"{self.source}: the report has no measured original")
        self.default_accuracy_budget()
        self.report.candidates = [self.scores.entries[c.name] for c in candidates]
        try:
            self.choose(candidates)
        except FileNotFoundError as exc:
            raise UsageError(
                f"{self.source} does not hold the chosen model ({Path(str(exc.filename)).name}): "
                "decide from the output folder of --stage measure"
            ) from None

    def _final(self, candidates: list[Candidate]) -> Callable[[str, list[str]], Final | None]:
        """The decide stage cannot time: it takes the measure stage's final when the same
        candidates lead, and otherwise chooses by speedup over the original alone."""
        if self.stage != "decide":
            return super()._final(candidates)
        recorded = self.recorded_final

        def replay(leader: str, contenders: list[str]) -> Final | None:
            if recorded and recorded["leader"] == leader and recorded["contenders"] == contenders:
                return Final.from_json(recorded)
            if recorded:
                self.report.warnings.append(
                    "the measure stage's head-to-head final had other contenders than these "
                    "budgets leave: the decide stage cannot time, so it chose by speedup over "
                    "the original alone"
                )
            return None

        return replay


def _estimates(entry: CandidateEntry, measured: dict[str, Any]) -> dict[str, Estimate]:
    """The timing estimates a measured report recorded (point and interval per metric)."""
    confidence = float((measured.get("measurement") or {}).get("confidence") or 0.95)
    rounds = int((entry.get("timing") or {}).get("rounds") or 0)
    estimates = {}
    for metric in TIMING_METRICS:
        point = (entry.get("metrics") or {}).get(metric)
        bounds = (entry.get("intervals") or {}).get(metric)
        if point is None:
            continue
        low, high = bounds if bounds else (point, point)
        estimates[metric] = Estimate(
            float(point),
            0.0 if low is None else float(low),
            math.inf if high is None else float(high),
            rounds,
            confidence,
        )
    return estimates
