"""The candidate chosen under the task's metric against the one chosen under raw cosine.

Published models with real inputs that ship inside public packages:
- nudenet_320n (a YOLOv8 detector) on scikit-image's sample photos (skimage/data);
- ppocr_rec (a PaddleOCR CTC recogniser) on text lines rendered with DejaVu Sans (Pillow).
Each model runs the gate twice over the same recipes: ``validation.task: auto`` (its
default floor on the task metric) and ``validation.task: tensor`` (``cosine_similarity
>= 0.99``). Prints a Markdown table for bench/RESULTS.md.

    pip install pillow   # the bench's only extra
    python bench/task_choice.py [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_models import ensure_model

RECIPES = [
    {"name": "dynamic-s8", "quantize": {"plugin": "dynamic", "weight_type": "int8"}},
    {"name": "static-qdq", "quantize": {"plugin": "static"}},
    {"name": "static-qdq-pc", "quantize": {"plugin": "static", "per_channel": True}},
    {
        "name": "static-mm-conv",
        "quantize": {
            "plugin": "static",
            "op_types_to_quantize": ["MatMul", "Conv"],
            "per_channel": True,
        },
    },
    {"name": "fp16", "quantize": {"plugin": "fp16"}},
]
PHOTOS = [
    "astronaut.png",
    "camera.png",
    "coffee.png",
    "chelsea.png",
    "motorcycle_left.png",
    "rocket.jpg",
]
LINES = [
    "onnx gate",
    "Quantise 2026",
    "hello world",
    "deploy safely",
    "latency budget",
    "CI verdict",
]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def photos(size: int) -> np.ndarray:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "scikit-image==0.26.0", "-d", tmp], check=True,
        )  # fmt: skip
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            images = [
                Image.open(io.BytesIO(archive.read(f"skimage/data/{name}")))
                .convert("RGB")
                .resize((size, size))
                for name in PHOTOS
            ]
    return np.stack([np.asarray(i, np.float32).transpose(2, 0, 1) / 255 for i in images])


def text_lines() -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 30)
    lines = []
    for text in LINES:
        image = Image.new("RGB", (320, 48), "white")
        ImageDraw.Draw(image).text((6, 6), text, fill="black", font=font)
        lines.append((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5)
    return np.stack(lines)


def run_gate(folder: Path, model: Path, name: str, data: np.ndarray, task: str) -> dict:
    np.savez(folder / "validation.npz", **{name: data[:, None]})
    np.savez(folder / "calibration.npz", **{name: np.concatenate([data, data[..., ::-1]])[:, None]})
    policy = {
        "version": 1,
        "model": {"path": str(model)},
        "data": {"validation": "validation.npz", "calibration": "calibration.npz"},
        "validation": {"task": task},
        "candidates": RECIPES,
        "search": {"fallback": False},
        "measure": {"max_seconds": 4, "memory": False},
    }
    path = folder / f"policy-{task}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    out = folder / f"out-{task}"
    subprocess.run(
        ["onnx-gate", "run", str(path), "-o", str(out), "-q", "--allow-path", str(model.parent)],
        check=False, capture_output=True,
    )  # fmt: skip
    return json.loads((out / "report.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "onnx-gate-models"
    )
    args = parser.parse_args(argv)
    cases = [
        ("nudenet_320n", "images", lambda: photos(320), "det_map50_95"),
        ("ppocr_rec", "x", text_lines, "ctc_exact_match"),
    ]
    print("| model | judged by | task | chosen | speedup | task metric | cosine | rejected |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="onnx-gate-wheels-") as wheels_dir:
        for model_name, input_name, make, metric in cases:
            model, _ = ensure_model(model_name, args.models_dir, Path(wheels_dir), {})
            data = make()
            for task in ("auto", "tensor"):
                with tempfile.TemporaryDirectory() as tmp:
                    report = run_gate(Path(tmp), model, input_name, data, task)
                judged = (report.get("validation") or {}).get("task") or {}
                chosen = report.get("chosen") or "original"
                entry = next((c for c in report.get("candidates", []) if c["name"] == chosen), {})
                m = entry.get("metrics", {})
                rejected = [
                    f"{c['name']} ({c['metrics'].get(metric, float('nan')):.3f} / {c['metrics'].get('cosine_similarity', float('nan')):.3f}, {c['metrics'].get('speedup', float('nan')):.2f}x)"
                    for c in report.get("candidates", [])
                    if c["status"] != "passed" and c["name"] != "original" and c.get("metrics")
                ]
                print(
                    f"| {model_name} | {task} | {judged.get('task')} | {chosen} | {m.get('speedup', 1.0):.2f}x "
                    f"| {metric} {m.get(metric, float('nan')):.3f} | {m.get('cosine_similarity', float('nan')):.4f} "
                    f"| {'; '.join(rejected) or '-'} |",
                    flush=True,
                )
                if report.get("exit_code") not in (0, 1):
                    print(f"|  | | error | {report.get('message', '')[:150]} | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
