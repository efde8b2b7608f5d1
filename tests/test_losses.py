"""The training loss equals a hand computation of the TransUNet reference formula."""
from __future__ import annotations

import math

import pytest
import torch

from medseg.engine.losses import DICE_SMOOTH, ce_dice_loss, combined_loss, soft_dice_loss


def _reference_dice_by_hand(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Soft Dice written out with Python loops: softmax, per class over the batch, squared denominators."""
    batch, classes, height, width = logits.shape
    total = 0.0
    for c in range(classes):
        intersect = p_sq = t_sq = 0.0
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    scores = [math.exp(float(logits[b, k, i, j])) for k in range(classes)]
                    p = scores[c] / sum(scores)
                    t = 1.0 if int(target[b, i, j]) == c else 0.0
                    intersect += p * t
                    p_sq += p * p
                    t_sq += t * t
        total += 1.0 - (2 * intersect + DICE_SMOOTH) / (p_sq + t_sq + DICE_SMOOTH)
    return total / classes


def _cross_entropy_by_hand(logits: torch.Tensor, target: torch.Tensor) -> float:
    batch, classes, height, width = logits.shape
    total = 0.0
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                scores = [float(logits[b, k, i, j]) for k in range(classes)]
                log_sum = math.log(sum(math.exp(s) for s in scores))
                total += log_sum - scores[int(target[b, i, j])]
    return total / (batch * height * width)


@pytest.fixture
def example():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, 4, (2, 5, 6), generator=generator)
    target[1] = 0  # class 3 absent from the second image: the Dice is still over the whole batch
    return logits, target


def test_soft_dice_matches_hand_computation(example):
    logits, target = example
    assert float(soft_dice_loss(logits, target)) == pytest.approx(_reference_dice_by_hand(logits, target), rel=1e-6)


def test_ce_dice_is_half_and_half(example):
    logits, target = example
    expected = 0.5 * _cross_entropy_by_hand(logits, target) + 0.5 * _reference_dice_by_hand(logits, target)
    assert float(ce_dice_loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    assert float(combined_loss(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_absent_class_scores_zero_loss_only_when_predicted_absent():
    # A class absent from the target and never predicted: dice = smooth / smooth = 1, loss 0 for that class.
    logits = torch.full((1, 2, 3, 3), -50.0)
    logits[:, 0] = 50.0  # everything confidently background
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    assert float(soft_dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)


def test_deep_supervision_weights(example):
    logits, target = example
    second = logits.flip(-1)
    third = logits * 0.5
    parts = [float(ce_dice_loss(x, target)) for x in (logits, second, third)]
    expected = 0.6 * parts[0] + 0.2 * parts[1] + 0.2 * parts[2]
    assert float(combined_loss((logits, second, third), target, (0.6, 0.2, 0.2))) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        combined_loss((logits, second), target, (0.6, 0.2, 0.2))


def test_loss_has_gradients_and_handles_bf16():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    loss = combined_loss(logits.to(torch.bfloat16), target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
