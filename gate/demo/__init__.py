"""A tiny classifier, its data and a policy, so ``onnx-gate demo`` runs with no input."""
