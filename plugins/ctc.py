"""CTC text recognition: does the candidate read the same strings? (no labels needed)

Both models' per-step scores are decoded greedily - the best class per step, repeats
collapsed, the blank (``validation.ctc.blank``, default 0) dropped - and the decoded
sequences compared: exact match and character error rate (edit distance over the
original's length). With ``validation.ctc.charset`` (a text file, one symbol per line
for every class but the blank, PaddleOCR's dictionary format) the report shows the
strings read; ``data.labels`` strings give accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gate import VacuousData, ValidationContext, Validator, hookimpl, read_regular

METRICS = {
    "ctc_exact_match": "share of text lines the candidate decodes exactly as the original does",
    "ctc_cer_mean": "mean character error rate of the candidate's decoding against the original's",
    "ctc_cer_max": "worst character error rate over the validation lines",
}
LABELLED_METRICS = {
    "ctc_accuracy": "share of text lines the candidate reads exactly as data.labels says",
    "ctc_accuracy_drop": "the original's ctc_accuracy minus the candidate's",
}
SHOWN_STRINGS = 20
CHARSET_MAX_BYTES = 4 << 20


def greedy(scores: np.ndarray, blank: int) -> list[tuple[int, ...]]:
    """Decoded class sequences of ``[lines, steps, classes]`` scores."""
    best = scores.argmax(axis=-1)
    decoded = []
    for line in best:
        kept = [int(c) for i, c in enumerate(line) if (i == 0 or c != line[i - 1]) and c != blank]
        decoded.append(tuple(kept))
    return decoded


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _lines(
    samples: Sequence[dict[str, np.ndarray]], context: ValidationContext
) -> list[tuple[int, ...]]:
    blank = int(context.options.get("blank", 0))
    layout = context.options.get("layout", "btc")
    decoded: list[tuple[int, ...]] = []
    for sample in samples:
        scores = sample[context.output]
        if layout == "tbc":
            scores = np.swapaxes(scores, 0, 1)
        decoded.extend(greedy(scores, blank))
    return decoded


def symbols(context: ValidationContext) -> list[str] | None:
    path = context.options.get("charset")
    if not path:
        return None
    cached = context.cache.get("ctc-charset")  # the gate reads it once, when the run starts
    if cached is None:
        data = read_regular(Path(path), CHARSET_MAX_BYTES, lambda why: ValueError(f"{path} {why}"))
        cached = context.cache["ctc-charset"] = charset_symbols(data)
    return cached


def charset_symbols(data: bytes) -> list[str]:
    """One symbol per line; the trailing newline ends the last line, it is not a symbol."""
    return data.decode("utf-8").replace("\r\n", "\n").removesuffix("\n").split("\n")


def text(sequence: Sequence[int], charset: Sequence[str], blank: int) -> str:
    """The string of a decoded sequence; classes past the charset read as a space
    (PaddleOCR appends one)."""
    shown = []
    for index in sequence:
        position = index - 1 if index > blank else index
        shown.append(charset[position] if 0 <= position < len(charset) else " ")
    return "".join(shown)


def _reference(context: ValidationContext) -> list[tuple[int, ...]]:
    cached = context.cache.get("ctc")
    if cached is None or cached[0] is not context.reference:
        cached = context.cache["ctc"] = (context.reference, _lines(context.reference, context))
    return cached[1]


def _validate(context: ValidationContext) -> dict[str, float]:
    reference = _reference(context)
    if not any(reference):
        raise VacuousData(
            f"the original reads an empty string on every one of the {len(reference)} "
            "validation lines, so text metrics cannot judge a candidate"
        )
    candidate = _lines(context.candidate, context)
    rates = [
        edit_distance(r, c) / max(len(r), 1) for r, c in zip(reference, candidate, strict=True)
    ]
    exact = [r == c for r, c in zip(reference, candidate, strict=True)]
    charset = symbols(context)
    if charset is not None:
        blank = int(context.options.get("blank", 0))
        context.details["decoded"] = [
            {"original": text(r, charset, blank), "candidate": text(c, charset, blank)}
            for r, c in list(zip(reference, candidate, strict=True))[:SHOWN_STRINGS]
        ]
    return {
        "ctc_exact_match": float(np.mean(exact)),
        "ctc_cer_mean": float(np.mean(rates)),
        "ctc_cer_max": float(np.max(rates)),
    }


def _validate_labelled(context: ValidationContext) -> dict[str, float]:
    charset = symbols(context)
    if charset is None:
        raise ValueError("labelled text needs validation.ctc.charset to turn classes into text")
    blank = int(context.options.get("blank", 0))
    labels = [str(label) for label in context.labels]
    original = [text(r, charset, blank) for r in _reference(context)]
    candidate = [text(c, charset, blank) for c in _lines(context.candidate, context)]
    if len(labels) != len(candidate):
        raise ValueError(f"{len(labels)} label strings for {len(candidate)} decoded lines")
    original_accuracy = float(
        np.mean([o == label for o, label in zip(original, labels, strict=True)])
    )
    accuracy = float(np.mean([c == label for c, label in zip(candidate, labels, strict=True)]))
    return {"ctc_accuracy": accuracy, "ctc_accuracy_drop": original_accuracy - accuracy}


@hookimpl
def onnx_gate_validators() -> list[Validator]:
    return [
        Validator(
            name="ctc",
            metrics=METRICS,
            validate=_validate,
            description="greedy CTC decoding against the original's: exact match, character error rate",
            tasks=frozenset({"ctc"}),
        ),
        Validator(
            name="ctc-labelled",
            metrics=LABELLED_METRICS,
            validate=_validate_labelled,
            needs_labels=True,
            description="lines read exactly as data.labels strings say, and the drop from the original",
            tasks=frozenset({"ctc"}),
        ),
    ]
