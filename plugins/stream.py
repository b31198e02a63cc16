"""Streams: does the candidate make the original's decisions through a whole stream?

For ``validation.task: stream`` the gate runs the validation samples in order as one
stream, feeding each model its own state outputs back into its state inputs
(``validation.stream.state``: ``{output: input}``, inferred from names and shapes), so
a candidate's drift accumulates as it does in service. Decisions are the judged output
at ``validation.stream.threshold`` (a voice-activity probability, say).
"""

from __future__ import annotations

import numpy as np

from gate import VacuousData, ValidationContext, Validator, hookimpl

METRICS = {
    "stream_max_abs_diff": "largest absolute difference of the judged output over the stream",
    "stream_agreement": "share of stream steps (and output elements) deciding as the original does at the threshold",
}


def _validate(context: ValidationContext) -> dict[str, float]:
    threshold = float(context.options.get("threshold", 0.5))
    reference = np.concatenate(
        [s[context.output].astype(np.float64).ravel() for s in context.reference]
    )
    candidate = np.concatenate(
        [s[context.output].astype(np.float64).ravel() for s in context.candidate]
    )
    decided = reference >= threshold
    if decided.all() or not decided.any():
        side = "at or above" if decided.all() else "below"
        raise VacuousData(
            f"the original's output '{context.output}' stays {side} the threshold "
            f"{threshold:g} over all {len(context.reference)} stream steps, so decisions "
            "cannot judge a candidate"
        )
    finite = np.isfinite(candidate)
    difference = float(np.abs(reference - candidate).max()) if finite.all() else float("inf")
    agreement = float(((candidate >= threshold) == decided)[finite].sum() / decided.size)
    context.details["stream"] = {"steps": len(context.reference), "original_on": int(decided.sum())}
    return {"stream_max_abs_diff": difference, "stream_agreement": agreement}


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="stream",
            metrics=METRICS,
            validate=_validate,
            description="state carried through the validation stream: decisions and largest difference against the original",
            tasks=frozenset({"stream"}),
        )
    ]
