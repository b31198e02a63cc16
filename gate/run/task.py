"""What the model's outputs mean: the task a candidate is judged by (``validation.task``).

``auto`` reads the model's ``metadata_props`` (an Ultralytics export's ``task``), its
input names and its output shapes, and falls back to ``tensor`` - today's raw-tensor
comparison - when unsure, saying so. A declared task is held to the model's shapes
here too: a layout that does not fit the output is a policy error on its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TASKS = ("classification", "detection", "embedding", "ctc", "stream", "tensor")

DEFAULT_FLOORS: dict[str, tuple[str, float]] = {
    "classification": ("top1_agreement", 0.99),
    "detection": ("det_map50_95", 0.95),
    "embedding": ("emb_cosine_min", 0.99),
    "ctc": ("ctc_exact_match", 0.99),
    "stream": ("stream_agreement", 0.99),
    "tensor": ("cosine_similarity", 0.99),
}
"""The accuracy budget a policy without an error-level one gets, per task."""

DETECTION_DEFAULTS = {
    "confidence": 0.25,
    "min_score": 0.001,
    "iou": 0.7,
    "max_detections": 300,
}
OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"softmax": "auto"},
    "detection": DETECTION_DEFAULTS,
    "embedding": {"normalize": False},
    "ctc": {"blank": 0},
    "stream": {"threshold": 0.5},
    "tensor": {},
}

# metadata_props values that name a task: Ultralytics' `task`, OpenVINO's `model_type`.
METADATA_TASKS = {
    "detect": "detection",
    "detection": "detection",
    "yolo": "detection",
    "ssd": "detection",
    "classify": "classification",
    "classification": "classification",
    "feature-extraction": "embedding",
    "sentence-similarity": "embedding",
    "embedding": "embedding",
    "ctc": "ctc",
    "text-recognition": "ctc",
}
TOKEN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}
MASK_INPUTS = ("attention_mask", "mask", "input_mask")
EMBEDDING_NAMES = re.compile(r"embed|hidden_state|pooler|sentence", re.IGNORECASE)
# A stream's state out -> in: `stateN`/`state`, `hn`/`h0`, `state_out`/`state_in`, `new_state`/`state`.
STATE_PAIRS = (
    (r"(.*)n", r"\g<1>"),
    (r"(.*)n", r"\g<1>0"),
    (r"(.*?)_?out", r"\g<1>_in"),
    (r"(.*?)_?out", r"\g<1>"),
    (r"out_?(.*)", r"in_\g<1>"),
    (r"(.*?)_?next", r"\g<1>"),
    (r"new_?(.*)", r"\g<1>"),
)
CHARSET_MAX_BYTES = 4 << 20
"""validation.ctc.charset: a dictionary of symbols, never more (PaddleOCR's is 26 KB)."""
STATE_INPUT = re.compile(r"state|cache|hidden|^[hc]\d*$", re.IGNORECASE)
OVERRIDE = f"set validation.task ({', '.join(TASKS)}) to choose"


@dataclass(frozen=True)
class Port:
    """One input or output as the task sees it: its name, shape (None where unknown), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    @property
    def floating(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.floating))


@dataclass(frozen=True)
class TaskChoice:
    """The task a run judges by, with its options (defaults filled) and where it came from."""

    task: str
    options: dict[str, Any]
    declared: bool
    source: str
    """What the task was read from: ``validation.task``, a metadata key, shapes or names."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "declared": self.declared,
            "source": self.source,
            "options": self.options,
            "override": OVERRIDE if not self.declared else None,
            "notes": list(self.notes),
        }


def ports(specs: Sequence[Any]) -> list[Port]:
    """Ports from load's TensorSpecs: the fixed or returned shape, else the declared dims."""
    return [
        Port(
            spec.name,
            tuple(spec.shape)
            if spec.shape
            else tuple(d if isinstance(d, int) else None for d in spec.dims),
            np.dtype(spec.dtype),
        )
        for spec in specs
    ]


def choose_task(
    declared: str,
    given_options: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, str],
    inputs: Sequence[Port],
    outputs: Sequence[Port],
    judged: str,
) -> TaskChoice:
    """The declared task, or the one ``auto`` infers; options hold the task's defaults
    overlaid with ``validation.<task>``."""
    if declared != "auto":
        task, source, inferred, notes = declared, "validation.task", {}, ()
    else:
        task, source, inferred, notes = infer_task(metadata, inputs, outputs, judged)
    options = {
        **OPTION_DEFAULTS[task],
        **_inferred_options(task, inputs, outputs, judged),
        **inferred,
        **dict(given_options.get(task, {})),
    }
    return TaskChoice(task, options, declared != "auto", source, tuple(notes))


def infer_task(
    metadata: Mapping[str, str], inputs: Sequence[Port], outputs: Sequence[Port], judged: str
) -> tuple[str, str, dict[str, Any], list[str]]:
    """``(task, what it was read from, options it implies, notes)`` for ``validation.task: auto``."""
    notes: list[str] = []
    for key, value in metadata.items():
        if key.split()[-1].lower() not in ("task", "model_type"):
            continue
        named = value.strip().lower()
        task = next((t for word, t in METADATA_TASKS.items() if named.startswith(word)), None)
        if task is not None:
            return task, f"metadata_props {key}={value!r}", {}, notes
        notes.append(
            f"metadata_props {key}={value!r} names a task the gate has no decoder for; "
            "judged by the output's shape instead"
        )
    state = state_mapping(inputs, outputs)
    if state:
        pairs = ", ".join(f"{o} -> {i}" for o, i in state.items())
        return "stream", f"state outputs fed back to inputs of the same shape ({pairs})", {}, notes
    output = next(port for port in outputs if port.name == judged)
    shape, names = output.shape, {port.name for port in inputs}
    layout = detection_layout(inputs, output)
    if layout is not None:
        return (
            "detection",
            f"output '{judged}' {list(shape)} is a {layout} head for the input image",
            {"layout": layout},
            notes,
        )
    if names & TOKEN_INPUTS and len(shape) == 3 and "logit" not in judged.lower():
        return "embedding", f"token inputs and per-token output '{judged}' {list(shape)}", {}, notes
    if names & TOKEN_INPUTS and len(shape) == 2 and EMBEDDING_NAMES.search(judged):
        return "embedding", f"token inputs and pooled output '{judged}' {list(shape)}", {}, notes
    image = _image(inputs)
    if image is not None and len(shape) == 3 and output.floating:
        ctc = _ctc_layout(image, output)
        if ctc is not None:
            return (
                "ctc",
                f"image input and per-step scores '{judged}' {list(shape)} along the width",
                {"layout": ctc},
                notes,
            )
    if len(shape) == 2 and (shape[1] or 0) >= 2 and output.floating:
        return "classification", f"output '{judged}' {list(shape)} scores classes", {}, notes
    notes.append(
        f"task unsure for output '{judged}' {list(shape)}: judged as a raw tensor "
        f"(cosine, max difference); {OVERRIDE} another"
    )
    return "tensor", "fallback: no task recognised", {}, notes


def _image(inputs: Sequence[Port]) -> tuple[int, int] | None:
    """``(height, width)`` of the first float NCHW or NHWC image input."""
    for port in inputs:
        if len(port.shape) != 4 or not port.floating or None in port.shape[1:]:
            continue
        _, a, b, c = port.shape
        if a in (1, 3, 4):
            return int(b), int(c)  # type: ignore[arg-type]
        if c in (1, 3, 4):
            return int(a), int(b)  # type: ignore[arg-type]
    return None


def _anchor_cells(height: int, width: int) -> set[int]:
    """Prediction cells of a YOLO head over strides 8-32 (and 8-64 for P6 models)."""
    p5 = sum((height // s) * (width // s) for s in (8, 16, 32))
    return {p5, p5 + (height // 64) * (width // 64)}


def detection_layout(inputs: Sequence[Port], output: Port) -> str | None:
    """``yolov8`` ([B, 4+nc, N]) or ``yolov5`` ([B, N, 5+nc]) when N is the head's cell count."""
    image = _image(inputs)
    if image is None or len(output.shape) != 3 or not output.floating:
        return None
    cells = _anchor_cells(*image)
    _, rows, columns = output.shape
    if columns in cells and (rows or 0) >= 5:
        return "yolov8"
    # YOLOv5 predicts three anchors per cell; anchor-free heads with objectness (YOLOX) one.
    if (
        rows is not None
        and (rows in cells or (rows % 3 == 0 and rows // 3 in cells))
        and (columns or 0) >= 6
    ):
        return "yolov5"
    return None


def _ctc_layout(image: tuple[int, int], output: Port) -> str | None:
    """``btc`` or ``tbc`` when one axis has a step per 2-32 pixels of the image's width."""
    width = image[1]
    first, second, classes = output.shape
    if (classes or 0) < 3:
        return None
    for layout, steps in (("btc", second), ("tbc", first)):
        if steps and steps > 1 and 2 <= width / steps <= 32:
            return layout
    return None


def state_mapping(inputs: Sequence[Port], outputs: Sequence[Port]) -> dict[str, str]:
    """Output -> input pairs a stream carries: related names and the same shape."""
    by_name = {port.name: port for port in inputs}
    mapping: dict[str, str] = {}
    for output in outputs:
        for pattern, replacement in STATE_PAIRS:
            if not re.fullmatch(pattern, output.name, re.IGNORECASE):
                continue
            name = re.sub(pattern, replacement, output.name, count=1, flags=re.IGNORECASE)
            target = by_name.get(name)
            if (
                target is not None
                and target.name != output.name
                and target.name not in mapping.values()
                and target.shape == output.shape
                and target.dtype == output.dtype
            ):
                mapping[output.name] = target.name
                break
    for target in inputs:  # a state input whose output has no related name ('35' for 'state')
        if target.name in mapping.values() or not STATE_INPUT.search(target.name):
            continue
        same = [
            output
            for output in outputs
            if output.name not in mapping
            and output.shape == target.shape
            and output.dtype == target.dtype
        ]
        if len(same) == 1 and None not in target.shape and len(target.shape) >= 2:
            mapping[same[0].name] = target.name
    return mapping


def _inferred_options(
    task: str, inputs: Sequence[Port], outputs: Sequence[Port], judged: str
) -> dict[str, Any]:
    """Options a task needs that the model's signature answers (each may be set instead)."""
    output = next((port for port in outputs if port.name == judged), None)
    names = [port.name for port in inputs]
    if task == "embedding":
        mask = next((name for name in MASK_INPUTS if name in names), None)
        per_token = output is not None and len(output.shape) == 3
        return {"pooling": ("mean" if per_token else "none"), "mask_input": mask}
    if task == "stream":
        return {"state": state_mapping(inputs, outputs)}
    if task == "detection" and output is not None:
        layout = detection_layout(inputs, output) or "yolov8"
        return {"layout": layout, "box_format": "cxcywh"}
    if task == "ctc" and output is not None and len(output.shape) == 3:
        image = _image(inputs)
        layout = _ctc_layout(image, output) if image else None
        return {"layout": layout or ("btc" if output.shape[0] in (1, None) else "tbc")}
    return {}


def layout_problem(
    choice: TaskChoice, inputs: Sequence[Port], outputs: Sequence[Port], judged: str
) -> tuple[str, str] | None:
    """``(option, why)`` when the task's options do not fit the model; ``None`` when they do.
    Unknown dimensions (a static check on symbolic shapes) are given the benefit of the doubt."""
    output = next((port for port in outputs if port.name == judged), None)
    if output is None:
        return None
    shape, options, task = output.shape, choice.options, choice.task
    where = f"output '{judged}' has shape {_text(shape)}"

    def short(axis: int, least: int) -> bool:
        return shape[axis] is not None and shape[axis] < least  # type: ignore[operator]

    if task == "classification":
        integer = not output.floating
        if not integer and (len(shape) < 1 or short(-1, 2)):
            return (
                "task",
                f"classification needs scores over two or more classes in the last axis; {where}",
            )
    elif task == "detection":
        layout = options.get("layout", "yolov8")
        need = {
            "yolov8": (1, 5, "[batch, 4 + classes, boxes]"),
            "yolov5": (2, 6, "[batch, boxes, 5 + classes]"),
            "nms": (2, 6, "[batch, boxes, 6+: x1 y1 x2 y2 score class]"),
        }[layout]
        axis, least, text = need
        if len(shape) != 3 or short(axis, least):
            return "layout", f"detection layout {layout} needs {text}; {where}"
    elif task == "embedding":
        pooling = options.get("pooling", "mean")
        if pooling == "none" and len(shape) != 2:
            return (
                "pooling",
                f"pooling none needs pooled embeddings [batch, dim]; {where} (pool it: mean, cls, last or max)",
            )
        if pooling != "none" and len(shape) != 3:
            return (
                "pooling",
                f"pooling {pooling} needs per-token outputs [batch, tokens, dim]; {where} (already pooled: pooling none)",
            )
        mask = options.get("mask_input")
        if mask is not None:
            port = next((p for p in inputs if p.name == mask), None)
            if port is None:
                return (
                    "mask_input",
                    f"the model has no input '{mask}' (inputs: {', '.join(p.name for p in inputs)})",
                )
            if len(port.shape) != 2 or (
                len(shape) == 3
                and None not in (port.shape[1], shape[1])
                and port.shape[1] != shape[1]
            ):
                return (
                    "mask_input",
                    f"input '{mask}' {_text(port.shape)} is not a [batch, tokens] mask for {where}",
                )
    elif task == "ctc":
        if len(shape) != 3:
            return "layout", f"ctc needs per-step scores [batch, steps, classes] (or tbc); {where}"
        blank = int(options.get("blank", 0))
        if shape[2] is not None and not 0 <= blank < shape[2]:  # type: ignore[operator]
            return "blank", f"blank index {blank} is not one of the {shape[2]} classes of {where}"
    elif task == "stream":
        state = options.get("state") or {}
        if not state:
            return "state", (
                "no state output -> input pairs found by name and shape; declare them in "
                "validation.stream.state ({output: input})"
            )
        by_input = {p.name: p for p in inputs}
        by_output = {p.name: p for p in outputs}
        for out_name, in_name in state.items():
            if out_name not in by_output:
                return (
                    "state",
                    f"the model has no output '{out_name}' (outputs: {', '.join(by_output)})",
                )
            if in_name not in by_input:
                return (
                    "state",
                    f"the model has no input '{in_name}' (inputs: {', '.join(by_input)})",
                )
            a, b = by_output[out_name].shape, by_input[in_name].shape
            if len(a) != len(b) or any(
                x is not None and y is not None and x != y for x, y in zip(a, b, strict=False)
            ):
                return (
                    "state",
                    f"output '{out_name}' {_text(a)} cannot feed input '{in_name}' {_text(b)}",
                )
    return None


def _text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def charset_symbols(data: bytes) -> list[str]:
    """validation.ctc.charset's symbols: one per line; the final newline ends the last line."""
    return data.decode("utf-8").replace("\r\n", "\n").removesuffix("\n").split("\n")
