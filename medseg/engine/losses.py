"""Training losses: TransUNet's 0.5 x cross-entropy + 0.5 x soft Dice, and deep supervision for tuple outputs.

The soft Dice follows the TransUNet reference code (``DiceLoss`` in ``utils.py`` of github.com/Beckschen/TransUNet):

* class probabilities ``p = softmax(logits)`` over the class axis;
* for each class ``c`` (background included), sums over the whole batch and all pixels::

      intersection_c = sum(p_c * t_c)      t_c = one-hot target of class c (0 or 1)
      dice_c = (2 * intersection_c + 1e-5) / (sum(p_c ** 2) + sum(t_c ** 2) + 1e-5)

  (the squared terms in the denominator are the reference's choice; for a one-hot target ``t_c ** 2 == t_c``);
* ``loss = mean over classes of (1 - dice_c)``.

That is MONAI's ``DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, batch=True)`` with both smoothing
terms 1e-5, which computes it here (``tests/test_losses.py`` checks it against the formula written out by hand).

Shapes: logits ``(B, C, H, W)`` float, target ``(B, H, W)`` integer class indices in ``0 .. C-1``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: Smoothing term of the reference soft Dice (added to numerator and denominator).
DICE_SMOOTH = 1e-5


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """The reference soft Dice loss, averaged over all classes including background.

    Args:
        logits: raw network output ``(B, C, H, W)``.
        target: class indices ``(B, H, W)`` (any integer dtype).
        smooth: added to the numerator and denominator of every class's Dice.

    Returns:
        A scalar tensor: ``mean_c (1 - dice_c)`` (0 for a perfect, confident prediction).
    """
    from monai.losses import DiceLoss

    dice = DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, batch=True, smooth_nr=smooth,
                    smooth_dr=smooth)
    return dice(logits.float(), target.long()[:, None])


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 0.5,
                 dice_weight: float = 0.5) -> torch.Tensor:
    """``ce_weight * cross_entropy + dice_weight * soft Dice`` of one output (TransUNet: 0.5 and 0.5).

    Args:
        logits: ``(B, C, H, W)`` raw output; computed in float32 whatever the autocast dtype.
        target: ``(B, H, W)`` class indices.
    """
    logits = logits.float()
    cross_entropy = F.cross_entropy(logits, target.long())
    return ce_weight * cross_entropy + dice_weight * soft_dice_loss(logits, target)


def combined_loss(outputs: "torch.Tensor | Sequence[torch.Tensor]", target: torch.Tensor,
                  weights: "Sequence[float] | None" = None, ce_weight: float = 0.5,
                  dice_weight: float = 0.5) -> torch.Tensor:
    """CE + Dice of a model's output, with deep supervision when the model returns several outputs.

    Args:
        outputs: logits ``(B, C, H, W)``, or a tuple/list ``(main, aux1, ...)`` of such logits, all at the
            target's resolution (DS-TransUNet in training mode).
        target: ``(B, H, W)`` class indices.
        weights: one weight per output (DS-TransUNet: ``(0.6, 0.2, 0.2)``); ``None`` means 1.0 for a single
            output and equal weights summing to 1 for a tuple.
        ce_weight, dice_weight: the mix of the two terms for every output.

    Returns:
        Scalar ``sum_i weights[i] * (ce_weight * CE(outputs[i]) + dice_weight * Dice(outputs[i]))``.

    Raises:
        ValueError: the number of weights differs from the number of outputs.
    """
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    outputs = tuple(outputs)
    if weights is None:
        weights = [1.0 / len(outputs)] * len(outputs)
    weights = list(weights)
    if len(weights) != len(outputs):
        raise ValueError(f"loss: {len(outputs)} model outputs but {len(weights)} loss weights {weights}")
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for weight, logits in zip(weights, outputs):
        total = total + float(weight) * ce_dice_loss(logits, target, ce_weight, dice_weight)
    return total
