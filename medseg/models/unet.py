"""U-Net baseline: MONAI's residual 2D U-Net, the classic reference every zoo comparison includes.

This wraps :class:`monai.networks.nets.UNet` (the residual-unit U-Net of Kerfoot et al., 2018, as MONAI builds it:
strided convolutions down, transposed convolutions up, instance norm and PReLU by default). It is not the 2015 U-Net
of Ronneberger et al. (max-pooling, 64-1024 channels, unpadded convolutions); it is the U-Net medical imaging code
bases usually mean by "the U-Net baseline".

Variants:
    ``UNet``        channels 32/64/128/256/512, four stride-2 levels, 2 residual units per level (6.50M
                    parameters with 1 input channel and 9 classes).
    ``UNet-Small``  channels 16/32/64/128/256, same depth (1.63M parameters), for tests and CPU demos.

Inputs must be multiples of 16 (four stride-2 levels).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models.options import check_options, constructor_options
from medseg.models.registry import register_model


class UNet2D(nn.Module):
    """MONAI 2D residual U-Net mapping ``(B, in_channels, H, W)`` images to ``(B, num_classes, H, W)`` logits.

    Args:
        num_classes: output classes including background.
        in_channels: image channels (1 for CT).
        channels: feature channels per level, shallowest first.
        strides: downsampling stride between consecutive levels (``len(channels) - 1`` values).
        num_res_units: residual units per convolution block (0 gives plain conv blocks).
        norm: MONAI norm name (``"instance"``, ``"batch"``) or ``(name, kwargs)``.
        act: MONAI activation name or ``(name, kwargs)``.
        dropout: dropout probability inside the blocks.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128, 256, 512),
                 strides: Sequence[int] = (2, 2, 2, 2), num_res_units: int = 2, norm="instance", act="prelu",
                 dropout: float = 0.0):
        from monai.networks.nets import UNet as MonaiUNet  # imported on use: monai.networks is slow to import

        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ConfigError(f"model: UNet needs len(strides) == len(channels) - 1, "
                              f"got {len(strides)} strides and {len(channels)} channels")
        self.net = MonaiUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                             channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
                             norm=norm, act=act, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> logits ``(B, num_classes, H, W)``; H and W multiples of the total stride."""
        return self.net(x)


@register_model("UNet", family="unet", default_img_size=224, published=True, img_size_multiple=16,
                description="MONAI residual 2D U-Net, channels 32-512, 2 residual units (classic baseline)")
def build_unet(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> UNet2D:
    """The baseline U-Net; ``overrides`` are :class:`UNet2D` arguments (``channels``, ``norm``, ...)."""
    check_options("UNet", overrides, constructor_options(UNet2D))
    return UNet2D(num_classes, in_channels, **overrides)


@register_model("UNet-Small", family="unet", default_img_size=224, published=False, img_size_multiple=16,
                description="MONAI residual 2D U-Net at half width (channels 16-256), for tests and CPU demos")
def build_unet_small(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> UNet2D:
    """Half-width U-Net; ``overrides`` are :class:`UNet2D` arguments."""
    check_options("UNet-Small", overrides, constructor_options(UNet2D))
    config = {"channels": (16, 32, 64, 128, 256)}
    config.update(overrides)
    return UNet2D(num_classes, in_channels, **config)
