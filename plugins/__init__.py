"""onnx-gate's built-in plugins, installed as ``gate_plugins``.

Each module is one plugin, registered through the ``onnx_gate`` entry-point
group exactly like a third-party plugin, and uses only the public ``gate`` API.
"""
