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


PREDICT_PROBE = """
import atexit, gc, sys
from medseg.cli import main
code = main(["predict", "-i", sys.argv[1], "-o", sys.argv[2], "-m", sys.argv[3], "--device", "cpu", "--no-progress"])
print("exit code:", code)
print("monai:", sorted(m for m in sys.modules if m == "monai" or m.startswith("monai.")))
print("architectures:", sorted(m for m in sys.modules if m.startswith("medseg.models.") and m.count(".") == 2
                               and m.rsplit(".", 1)[1] in {"ds_transunet", "transunet"}))
atexit._run_exitfuncs()
print("frozen at exit:", gc.get_freeze_count() > 0)
"""


def test_predict_imports_no_monai_and_skips_the_final_collection(tmp_path):
    """``medseg predict`` of a TransUNet checkpoint uses medseg's own array functions and architecture module only:
    no MONAI module (seconds to import, and seconds again to tear down at exit) and no other MONAI-based
    architecture is imported; at exit the objects are frozen so that the interpreter's last collections skip them."""
    import torch

    from helpers import tiny_case
    from medseg.io import write_volume
    from medseg.models import create
    from medseg.models.checkpoint import save_checkpoint
    from medseg.preprocessing import PreprocessingParams

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, create("TransUNet-Tiny", num_classes=9, img_size=32), model_name="TransUNet-Tiny",
                    model_config={"num_classes": 9, "img_size": 32}, label_set="synapse8",
                    preprocessing=PreprocessingParams(img_size=32).to_dict())
    image, _ = tiny_case(1, shape=(20, 18, 6))
    write_volume(tmp_path / "img0001.nii.gz", image)
    result = subprocess.run([sys.executable, "-c", PREDICT_PROBE, str(tmp_path / "img0001.nii.gz"),
                             str(tmp_path / "out"), str(checkpoint)], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.stdout.splitlines()[-4:] == ["exit code: 0", "monai: []",
                                               "architectures: ['medseg.models.transunet']", "frozen at exit: True"]
    assert (tmp_path / "out" / "img0001.nii.gz").is_file()
