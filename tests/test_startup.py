"""Commands that need no model start without importing torch or MONAI (their import alone takes seconds)."""
from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import contextlib, io, sys
from medseg.cli import main
for argv in ([], ["--help"], ["evaluate", "--help"], ["predict", "--help"], ["train", "--help"], ["run", "--help"],
             ["prepare", "--help"], ["synth", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print("heavy:", sorted(m for m in ("torch", "monai") if m in sys.modules))
"""


def test_help_does_not_import_torch():
    """One interpreter runs every help in turn: none of them may have pulled in torch or MONAI."""
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.stdout.splitlines()[-1] == "heavy: []"
