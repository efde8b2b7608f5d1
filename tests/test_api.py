import subprocess
import sys

import medseg


def test_public_api_resolves():
    for name in medseg.__all__:
        assert getattr(medseg, name) is not None, name


def test_import_medseg_does_not_load_torch():
    code = "import sys, medseg, medseg.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
