"""The project's name and version, and the pluggy marker plugins decorate their hooks with.

Kept apart from ``gate/__init__.py`` so that the modules below every layer can name the
project without importing the package's public surface (which imports them).
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "onnx_gate"
"""pluggy marker name and entry-point group."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
