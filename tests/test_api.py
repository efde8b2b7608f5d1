import subprocess
import sys
from pathlib import Path

import medseg


#: Public names that differ from the object's own name.
ALIASES = {"create_model": "create"}


def test_public_api_resolves():
    """Every public name is the object of that name in the module the lazy table names (not a stand-in, not another
    function), and is a class or a callable."""
    import importlib

    assert set(medseg._LAZY) <= set(medseg.__all__)
    for name in medseg.__all__:
        value = getattr(medseg, name)
        target = medseg._LAZY.get(name)
        if target is not None:
            module, attribute = (target, name) if isinstance(target, str) else target
            assert value is getattr(importlib.import_module(module), attribute), name
            assert value.__name__ == ALIASES.get(name, name), name  # the public name is the object's own name
        if name == "__version__":  # the installed distribution's version
            pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
            assert f'version = "{value}"' in pyproject
        elif isinstance(value, medseg.LabelSet):
            assert value.name == name.lower()
        else:
            assert callable(value) and value.__module__.startswith("medseg."), name


def test_import_medseg_does_not_load_torch():
    code = "import sys, medseg, medseg.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
