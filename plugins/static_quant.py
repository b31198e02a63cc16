"""Static quantisation with calibration (onnxruntime.quantization.quantize_static)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gate_plugins._quantization import (
    COMMON_OPTIONS,
    QUANT_TYPES,
    already_quantized,
    extra_options,
    initializer_uses,
    is_arm,
    is_x86,
    prepare,
)

from gate import BuildContext, Proposal, Quantizer, SearchContext, hookimpl

FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
CALIBRATION = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
COMPUTE_OPS = ["MatMul", "Conv", "Gemm"]
HISTOGRAM_MAX_PARAMETERS = 10_000_000
FULL_CORRECTION_MAX_LAYERS = 60  # a calibration pass per layer
TAIL_RISK_KEPT = 0.6  # with a decoding tail, a variant quantising it keeps 60% of its odds


def _quantize(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = context.calibration_samples()

        def get_next(self) -> dict[str, Any] | None:
            return next(self.samples, None)

    if context.calibration_source == "synthetic":
        context.note(
            "calibrated on synthetic inputs: give data.calibration for a meaningful calibration"
        )
    source = prepare(source, options, context)
    if options.get("smooth_quant", False):
        source = _smooth(source, options, context)
    if options.get("equalize", False):
        source = _equalize(source, context)
    variant = options.get("bias_correction", "off")
    quantize_static(
        str(source),
        str(destination),
        Reader(),
        quant_format=getattr(QuantFormat, FORMATS[options.get("format", "qdq")]),
        activation_type=getattr(QuantType, QUANT_TYPES[options.get("activation_type", "uint8")]),
        weight_type=getattr(QuantType, QUANT_TYPES[options.get("weight_type", "int8")]),
        per_channel=options.get("per_channel", False),
        reduce_range=options.get("reduce_range", False),
        calibrate_method=getattr(
            CalibrationMethod, CALIBRATION[options.get("calibration_method", "minmax")]
        ),
        op_types_to_quantize=options.get("op_types_to_quantize"),
        nodes_to_exclude=options.get("nodes_to_exclude"),
        extra_options=extra_options(options),
    )
    if variant != "off":
        _correct_biases(source, destination, options, context, variant)
    if options.get("excluded_weights", "float") == "int8" and options.get("nodes_to_exclude"):
        _int8_weights(destination, set(options["nodes_to_exclude"]), context)


WEIGHT_AXES = {"MatMul": 1, "Conv": 0}
"""The output-channel axis of each op's weight (input 1); Gemm's depends on transB."""


def _int8_weights(path: Path, excluded: set[str], context: BuildContext) -> None:
    """Reverted layers keep int8 weights: each float weight of an excluded MatMul, Conv or
    Gemm is stored as int8 per output channel behind a DequantizeLinear. The layer still
    computes in float, so accuracy stays close to the float fallback and the file shrinks;
    ONNX Runtime dequantises the weight at every run (bench/int8_weights.py: slower), which
    the candidate's timing shows."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        context.note("reverted layers keep float weights: per-channel int8 needs opset 13")
        return
    graph = model.graph
    inits, uses = initializer_uses(graph)
    added, kept = [], 0
    for node in graph.node:
        if node.name not in excluded or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight not in inits or uses.get(weight) != 1:
            continue
        values = numpy_helper.to_array(inits[weight])
        if values.dtype != np.float32 or values.ndim < 2:
            continue
        if node.op_type == "Gemm":
            trans_b = next((int(a.i) for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        elif node.op_type in WEIGHT_AXES:
            axis = WEIGHT_AXES[node.op_type]
        else:
            continue
        reduce = tuple(i for i in range(values.ndim) if i != axis)
        scale = np.abs(values).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * values.ndim
        shape[axis] = -1
        quantised = np.clip(np.round(values / scale.reshape(shape)), -127, 127).astype(np.int8)
        stored, scales, zeros = f"{weight}_int8", f"{weight}_scale", f"{weight}_zero"
        graph.initializer.remove(inits[weight])
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantised, stored),
                numpy_helper.from_array(scale, scales),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), zeros),
            ]
        )
        added.append(
            helper.make_node(
                "DequantizeLinear",
                [stored, scales, zeros],
                [weight],
                name=f"{node.name}_int8_weight",
                axis=axis,
            )
        )
        kept += 1
    for index, node in enumerate(added):  # before every reader: constants first
        graph.node.insert(index, node)
    onnx.save_model(model, str(path))
    context.note(f"{kept} reverted layer(s) keep int8 weights (computed in float)")


def _smooth(source: Path, options: Mapping[str, Any], context: BuildContext) -> Path:
    from gate_plugins._smoothing import smooth

    alpha = float(options.get("smooth_quant_alpha", 0.5))
    destination = context.work_dir / "smoothed.onnx"
    sites, matmuls = smooth(source, destination, context.calibration_samples(), alpha)
    context.note(
        f"SmoothQuant (alpha {alpha:g}): {sites} normalisation(s) smoothed into {matmuls} "
        "MatMul(s) before quantising"
        if sites
        else "SmoothQuant: no normalisation feeding MatMuls to smooth (quantised as it was)"
    )
    return destination


def _equalize(source: Path, context: BuildContext) -> Path:
    from gate_plugins._equalization import equalize

    destination = context.work_dir / "equalized.onnx"
    pairs = equalize(source, destination)
    context.note(
        f"cross-layer equalisation: {pairs} Conv pair(s) rescaled before quantising"
        if pairs
        else "cross-layer equalisation: no Conv pair to rescale (quantised as it was)"
    )
    return destination


def _correct_biases(
    source: Path, destination: Path, options: Mapping[str, Any], context: BuildContext, variant: str
) -> None:
    from gate_plugins._bias_correction import correct_biases

    if options.get("format", "qdq") != "qdq":
        raise ValueError("bias_correction needs format: qdq (QOperator biases are fused)")
    corrected, unbiased, largest = correct_biases(
        source, destination, context.calibration_samples(), variant
    )
    context.note(
        f"bias correction ({variant}): corrected {corrected} layer(s) on the calibration data, "
        f"largest shift {largest:.3g}"
        + (f"; {unbiased} layer(s) without a bias left as they are" if unbiased else "")
    )


def _propose(context: SearchContext) -> list[Proposal]:
    """Static int8 in the variants that matter on this CPU, riskiest-fastest first.

    Types follow ONNX Runtime's advice, which differs by CPU: uint8 activations
    with int8 weights on x86 (7-bit weights via reduce_range without VNNI, where
    u8 x s8 products can saturate), int8 for both on Arm.
    """
    declined = already_quantized(context, "static")
    if declined:
        return declined
    if not context.has_calibration:
        return [
            Proposal(
                "static", {}, 0.0,
                "no data.calibration: static quantisation calibrated on random inputs is not "
                "worth searching; give representative calibration data to try it",
                declined=True,
            )
        ]  # fmt: skip
    conv = context.share("Conv", "ConvTranspose")
    matmul = context.share("MatMul", "Gemm", "Attention")
    if conv + matmul <= 0:
        return [
            Proposal(
                "static", {}, 0.0, "no Conv, MatMul or Gemm weights to quantise", declined=True
            )
        ]
    types: dict[str, Any] = (
        {"activation_type": "int8", "weight_type": "int8"}
        if is_arm(context) or not context.on_cpu
        else {"activation_type": "uint8", "weight_type": "int8"}
    )
    if is_x86(context) and not context.vnni and context.on_cpu:
        types["reduce_range"] = True
    expected = 1.45 if conv >= matmul else 1.3
    base = {"format": "qdq", **types}
    proposals = [
        Proposal(
            "static-qdq", base, expected,
            "static QDQ of every supported operator: the largest int8 speedup, and the largest "
            "accuracy risk",
            0.5, "static",
        ),
        Proposal(
            "static-qdq-mm", {**base, "op_types_to_quantize": COMPUTE_OPS}, expected * 0.95,
            "only the compute-heavy operators (MatMul, Conv, Gemm): most of the gain with less "
            "accuracy at risk",
            0.3, "static",
        ),
        Proposal(
            "static-qdq-mm-pc",
            {**base, "op_types_to_quantize": COMPUTE_OPS, "per_channel": True},
            expected * 0.93,
            "only the compute-heavy operators, with per-channel weight scales: activations, "
            "residual Adds and normalisations stay in float",
            0.25, "static",
        ),
        Proposal(
            "static-qdq-pc", {**base, "per_channel": True}, expected * 0.97,
            "per-channel weight scales: better accuracy where channels differ in range",
            0.3, "static",
        ),
        Proposal(
            "static-qop", {**base, "format": "qoperator"}, expected * 0.95,
            "QOperator format (QLinearConv, QLinearMatMul): the same arithmetic through "
            "different kernels",
            0.5, "static",
        ),
    ]  # fmt: skip
    proposals.append(
        Proposal(
            "static-qdq-bc", {**base, "bias_correction": "fast"}, expected * 0.99,
            "static QDQ with bias correction: each layer's int8 mean shift, measured on the "
            "calibration data, folded into its bias (the int8 kernels are unchanged)",
            0.35, "static",
        )
    )  # fmt: skip
    norms = sum(
        context.op_counts.get(op, 0) for op in ("LayerNormalization", "SkipLayerNormalization")
    )
    if norms and context.op_counts.get("MatMul", 0):
        proposals.append(
            Proposal(
                "static-qdq-sq", {**base, "smooth_quant": True}, expected * 0.99,
                "static QDQ after SmoothQuant: the activation outlier channels a normalisation "
                "feeds to its MatMuls are scaled into their weights, so int8 activations keep "
                "the other channels",
                0.35, "static",
            )
        )  # fmt: skip
    if context.op_counts.get("Conv", 0) >= 2:
        proposals.append(
            Proposal(
                "static-qdq-cle", {**base, "equalize": True}, expected * 0.99,
                "static QDQ after cross-layer equalisation of the Conv chains: channels of "
                "very different weight ranges share one int8 scale better",
                0.35, "static",
            )
        )  # fmt: skip
    layers = sum(context.op_counts.get(op, 0) for op in ("Conv", "Gemm", "MatMul"))
    if layers <= FULL_CORRECTION_MAX_LAYERS and context.parameters <= HISTOGRAM_MAX_PARAMETERS:
        proposals.append(
            Proposal(
                "static-qdq-bcf", {**base, "bias_correction": "full"}, expected * 0.985,
                "static QDQ with full bias correction: layer by layer, each shift measured "
                "after the layers before it were corrected (a calibration pass per layer)",
                0.3, "static",
            )
        )  # fmt: skip
    if context.decode_tail:
        tail = {"nodes_to_exclude": list(context.decode_tail)}
        proposals.append(
            Proposal(
                "static-qdq-tail", {**base, **tail}, expected * 0.98,
                f"static QDQ with the {len(context.decode_tail)} decoding nodes after the last "
                "compute operator (Sigmoid, Concat, Mul: boxes and scores) left in float",
                0.3, "static",
            )
        )  # fmt: skip
        proposals.append(
            Proposal(
                "static-qdq-pc-tail", {**base, **tail, "per_channel": True}, expected * 0.96,
                "per-channel weight scales, with the decoding tail left in float",
                0.25, "static",
            )
        )  # fmt: skip
    # Histogram calibration holds every activation of every sample: bounded to small models.
    if context.parameters <= HISTOGRAM_MAX_PARAMETERS:
        proposals.append(
            Proposal(
                "static-qdq-pct", {**base, "calibration_method": "percentile"}, expected * 0.97,
                "percentile calibration clips the activation outliers that stretch MinMax scales",
                0.35, "static",
            )
        )  # fmt: skip
        proposals.append(
            Proposal(
                "static-qdq-ent", {**base, "calibration_method": "entropy"}, expected * 0.96,
                "entropy (KL) calibration picks the clipping range that keeps the activation "
                "distribution closest to float",
                0.35, "static",
            )
        )  # fmt: skip
    if context.decode_tail:
        # A detector's tail concatenates pixel boxes with 0-1 scores: one int8 scale for
        # both loses the scores, so every variant that quantises it is riskier.
        proposals = [
            p
            if "op_types_to_quantize" in p.options or "nodes_to_exclude" in p.options
            else replace(p, accuracy_risk=1.0 - (1.0 - p.accuracy_risk) * TAIL_RISK_KEPT)
            for p in proposals
        ]
    return proposals


@hookimpl
def onnx_gate_quantizers() -> list[Quantizer]:
    return [
        Quantizer(
            name="static",
            quantize=_quantize,
            description="static int8 with calibration data (QDQ or QOperator)",
            uses_calibration=True,
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "format": {"enum": list(FORMATS), "default": "qdq"},
                    "activation_type": {"enum": list(QUANT_TYPES), "default": "uint8"},
                    "weight_type": {"enum": list(QUANT_TYPES), "default": "int8"},
                    "calibration_method": {"enum": list(CALIBRATION), "default": "minmax"},
                    "equalize": {
                        "type": "boolean",
                        "default": False,
                        "description": "cross-layer equalisation first: rescale the channels of "
                        "each Conv -> (ReLU) -> Conv pair so both weights have the same range per "
                        "channel (the float model computes the same)",
                    },
                    "smooth_quant": {
                        "type": "boolean",
                        "default": False,
                        "description": "SmoothQuant first: scale each activation channel a "
                        "LayerNormalization feeds to MatMuls by max|X|^alpha / max|W|^(1-alpha) (on "
                        "the calibration data), folded into the normalisation (or a Mul where its "
                        "output has other readers) and the weights; the float model computes the same",
                    },
                    "smooth_quant_alpha": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 1,
                        "default": 0.5,
                        "description": "how much of the activation range moves into the weights",
                    },
                    "excluded_weights": {
                        "enum": ["float", "int8"],
                        "default": "float",
                        "description": "what the layers in nodes_to_exclude (and the accuracy "
                        "fallback's) keep: float weights, or int8 weights per output channel "
                        "dequantised at every run (float compute, a smaller file, slower)",
                    },
                    "bias_correction": {
                        "enum": ["off", "fast", "full"],
                        "default": "off",
                        "description": "fold the per-channel output mean shift int8 adds to each "
                        "layer (measured on the calibration data) into its bias; fast: from one "
                        "pass, full: layer by layer, each after the ones before it (QDQ only)",
                    },
                    **COMMON_OPTIONS,
                },
                # QOperator fuses each bias into its kernel: nothing left to correct.
                "if": {"properties": {"format": {"const": "qoperator"}}, "required": ["format"]},
                "then": {"properties": {"bias_correction": {"const": "off"}}},
            },
            propose=_propose,
        )
    ]
