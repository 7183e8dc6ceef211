"""Every third-party package kdx imports is declared in pyproject.toml (issue 13, item 15)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ (and the distribution may not be installed)
DIST_OF = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "cv2": "opencv-python",
           "tensorboard": "tensorboard", "torch": "torch", "mlflow": "mlflow-skinny"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    """(base dependencies, dependencies of any extra), as normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}

    extras = set().union(*[names(v) for v in project.get("optional-dependencies", {}).values()])
    return names(project["dependencies"]), extras


def imported_top_level(package: Path) -> dict[str, str]:
    """Top-level module names imported anywhere under ``package`` (eager or lazy) -> one file importing it."""
    found: dict[str, str] = {}
    for file in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                found.setdefault(mod.split(".")[0], str(file.relative_to(package.parent)))
    return found


def third_party(found: dict[str, str]) -> dict[str, str]:
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m not in ("kdx", "__future__")}


def test_every_imported_package_is_declared():
    base, extras = declared()
    missing = [f"{m} (imported in {f}; distribution {DIST_OF.get(m, m)})"
               for m, f in sorted(third_party(imported_top_level(ROOT / "kdx")).items())
               if _norm(DIST_OF.get(m, m)) not in base | extras and not (m == "tomli" and "tomli" in base)]
    assert not missing, f"imported by kdx but not declared in pyproject.toml: {missing}"


def test_pillow_and_matplotlib_are_base_dependencies():
    """kdx.data decodes image folders with PIL; every study writes plots with matplotlib (required, see CHANGELOG)."""
    base, _ = declared()
    assert {"pillow", "matplotlib", "torch", "torchvision", "numpy", "pandas", "safetensors", "rich", "typer"} <= base


def test_scanner_sees_lazy_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n    from PIL import Image\n    import yaml.loader\nfrom . import x\n")
    assert set(third_party(imported_top_level(pkg))) == {"PIL", "yaml"}

