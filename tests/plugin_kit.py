"""Write throwaway plugins for tests: as importable modules or as installed distributions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def install_fake_distribution(
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    dist: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
) -> None:
    """A distribution with ``onnx_gate`` entry points, found by importlib.metadata via sys.path."""
    info = folder / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[onnx_gate]\n{lines}\n")
    for name, source in modules.items():
        write_module(folder, name, source)
    monkeypatch.syspath_prepend(str(folder))


def use_plugin_modules(monkeypatch: pytest.MonkeyPatch, folder: Path, *names: str) -> None:
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("ONNX_GATE_PLUGINS", ",".join(names))
