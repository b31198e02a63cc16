"""The code's shape: the layering ARCHITECTURE.md describes, held by import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dependencies_point_one_way() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]): command line -> CI -> run ->
    policy/report/host -> foundations, a run's steps called only by the pipeline, and the
    action's helper standing alone. Function-level imports count as much as top-level ones."""
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert linter, "import-linter is a test dependency: pip install -e '.[testing]'"
    done = subprocess.run(
        [linter, "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_module_of_the_gate_has_a_place_in_the_layers() -> None:
    """A new module outside every layer would escape the contract silently."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = {
        name.strip() for layer in config["contracts"][0]["layers"] for name in layer.split("|")
    }
    modules = {
        "gate." + (path.parent.name if path.parent.name != "gate" else path.stem)
        for path in (ROOT / "gate").glob("*/__init__.py")
    } | {f"gate.{path.stem}" for path in (ROOT / "gate").glob("*.py") if path.stem != "__init__"}
    assert modules - {"gate.schemas"} <= layered, sorted(modules - layered)
