"""TensorFlow and Keras models to ONNX with tf2onnx (``pip install onnx-gate[tensorflow]``).

The source is a Keras model file (``.keras``, or legacy ``.h5``) or a TensorFlow SavedModel,
named by the ``saved_model.pb`` inside its folder. Loading either runs the model's graph and
may run Python stored with it: the gate does so only for a policy with ``model.trusted: true``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gate import Exporter, OptionError, hookimpl, listed

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "signature": {
            "type": "string",
            "minLength": 1,
            "default": "serving_default",
            "description": "The SavedModel signature to export.",
        },
        "output_names": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "uniqueItems": True,
            "description": "Names for the Keras model's outputs; its own output names otherwise.",
        },
        "opset": {"type": "integer", "minimum": 13},
    },
}

SAVED_MODEL_FILE = "saved_model.pb"


def _tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


@contextlib.contextmanager
def _native_logs_kept_out() -> Iterator[None]:
    """TensorFlow's C++ side logs to file descriptor 2 before TF_CPP_MIN_LOG_LEVEL applies
    (oneDNN notices, grappler sessions): that would bury the gate's own output."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _model(
    source: Path, options: Mapping[str, Any]
) -> tuple[Callable[..., dict[str, Any]], list[Any]]:
    """The model as a function of its inputs (in order) returning named outputs, and the
    TensorSpecs of those inputs. Loading runs code: the host checked model.trusted."""
    tf = _tensorflow()
    if source.suffix.lower() == ".pb":
        if source.name != SAVED_MODEL_FILE:
            raise OptionError(
                f"{source.name}: only a SavedModel is exported from a .pb file; point "
                f"model.path at the {SAVED_MODEL_FILE} inside its folder"
            )
        loaded = tf.saved_model.load(str(source.parent))
        name = options.get("signature", "serving_default")
        if name not in loaded.signatures:
            raise OptionError(
                f"{source.parent.name} has no signature '{name}' (it has: "
                f"{listed(sorted(loaded.signatures))}); set model.options.signature"
            )
        signature = loaded.signatures[name]
        declared = signature.structured_input_signature[1]
        names = sorted(declared)
        specs = [tf.TensorSpec(declared[n].shape, declared[n].dtype, name=n) for n in names]

        def run_signature(*tensors: Any) -> dict[str, Any]:
            return dict(signature(**dict(zip(names, tensors, strict=True))))

        run_signature.keep_alive = loaded  # type: ignore[attr-defined]  # the variables live here
        return run_signature, specs

    import keras

    # Keras's safe mode stays on: a Lambda layer's pickled bytecode is refused even when trusted.
    model = keras.models.load_model(source, compile=False)
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
    count = len(model.outputs)
    labels = list(options.get("output_names") or getattr(model, "output_names", None) or [])
    if "output_names" in options and len(labels) != count:
        raise OptionError(
            f"output_names has {len(labels)} name(s) but {source.name} has {count} output(s)"
        )
    if len(labels) != count:
        labels = [f"output_{index}" for index in range(count)]

    def run_keras(*tensors: Any) -> dict[str, Any]:
        produced = model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)
        produced = list(produced) if isinstance(produced, list | tuple) else [produced]
        return dict(zip(labels, produced, strict=True))

    return run_keras, specs


def export(source: Path, out_dir: Path, options: Mapping[str, Any]) -> Path:
    with _native_logs_kept_out():
        import tf2onnx

        tf = _tensorflow()
        function, specs = _model(source, options)
        model, _ = tf2onnx.convert.from_function(
            tf.function(function), input_signature=specs, opset=options.get("opset")
        )
    stem = source.parent.name if source.name == SAVED_MODEL_FILE else source.stem
    path = out_dir / f"{stem}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def reference(
    source: Path, options: Mapping[str, Any], feeds: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The TensorFlow model itself on the validation feeds, outputs named as in the export."""
    with _native_logs_kept_out():
        tf = _tensorflow()
        function, specs = _model(source, options)
        return [
            {
                name: value.numpy()
                for name, value in function(
                    *(tf.constant(feed[spec.name], dtype=spec.dtype) for spec in specs)
                ).items()
            }
            for feed in feeds
        ]


def timer(source: Path, options: Mapping[str, Any], feed: Mapping[str, Any], threads: int) -> Any:
    """The model as a compiled tf.function on one feed (how TensorFlow serves it). TensorFlow
    fixes its thread pools when it first runs an op: ``threads`` applies only before that."""
    with _native_logs_kept_out():
        tf = _tensorflow()
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass  # already initialised by the export: its pools stand, and run.threads says so
        function, specs = _model(source, options)
        compiled = tf.function(function)
        tensors = [tf.constant(feed[spec.name], dtype=spec.dtype) for spec in specs]
        compiled(*tensors)  # trace outside the timed runs

    def run() -> Any:
        return compiled(*tensors)

    # 0 is TensorFlow's default: every logical core.
    run.threads = tf.config.threading.get_intra_op_parallelism_threads()  # type: ignore[attr-defined]
    return run


@hookimpl
def onnx_gate_exporters() -> list[Exporter]:
    return [
        Exporter(
            "tensorflow",
            (".keras", ".h5", ".pb"),
            export,
            "Keras models (.keras, .h5) and TensorFlow SavedModels (saved_model.pb), via tf2onnx",
            OPTIONS_SCHEMA,
            runs_code=True,
            reference=reference,
            timer=timer,
        )
    ]
