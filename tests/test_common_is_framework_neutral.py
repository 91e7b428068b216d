"""`common/` never imports torch, tensorflow, keras or jax (docs/ARCHITECTURE.md, "Layers")."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import common

FRAMEWORKS = ("torch", "torchvision", "tensorflow", "keras", "jax")


def _common_modules() -> list[str]:
    root = Path(common.__file__).parent
    found = pkgutil.walk_packages([str(root)], prefix="common.")
    # `__main__` modules run a command line when imported; their imports live in siblings anyway.
    return sorted(info.name for info in found if not info.name.endswith("__main__"))


def test_there_are_common_modules_to_check():
    modules = _common_modules()
    assert "common.datasets" in modules
    assert "common.losses" in modules


def test_importing_every_common_module_loads_no_framework():
    modules = _common_modules()
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"common/ pulled in framework modules: {loaded[:10]}"
