"""medseg's own DropPath draws and scales exactly as MONAI's (and timm's), so no model needs MONAI for it."""
from __future__ import annotations

import pytest
import torch
from monai.networks.layers import DropPath as MonaiDropPath

from medseg.errors import ConfigError
from medseg.models.layers import DropPath


@pytest.mark.parametrize("drop_prob", [0.0, 0.3, 1.0])
def test_drop_path_matches_monai_in_training_and_is_the_identity_in_eval(drop_prob):
    x = torch.randn(16, 5, 4)
    ours, theirs = DropPath(drop_prob), MonaiDropPath(drop_prob)
    torch.manual_seed(3)
    expected = theirs(x)
    torch.manual_seed(3)
    assert torch.equal(ours(x), expected)
    if 0.0 < drop_prob < 1.0:  # some samples dropped, the others scaled by 1 / keep
        kept = (ours(x) != 0).flatten(1).any(1)
        assert 0 < int(kept.sum()) < 16
    assert torch.equal(ours.eval()(x), x)


def test_drop_path_refuses_a_probability_outside_0_1():
    with pytest.raises(ConfigError, match="drop_path: must be between 0 and 1, got 1.5"):
        DropPath(1.5)
