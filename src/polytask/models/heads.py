"""Task heads: a tower of layers on the shared representation, ending in the task's outputs.

Three shapes of head, chosen from the task and the representation, never by the user:

* a vector representation ``[B, D]`` feeds a :class:`Tower` (hidden layers, linear output);
* a feature map ``[B, C, h, w]`` feeding an image-level task is average-pooled first
  (:class:`PooledTower`), as in ResNet's classifier;
* a feature map feeding a dense (per-pixel) task goes through a :class:`DenseDecoder`:
  3x3 conv layers, a 1x1 conv to the task's channels and bilinear upsampling to the input
  resolution, the light decoder of the FCN family (Long, Shelhamer & Darrell, "Fully
  Convolutional Networks for Semantic Segmentation", CVPR 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from polytask.config_errors import Schema, Widths
from polytask.errors import ConfigError
from polytask.models.encoders import Activation, Norm, make_activation, mlp_layers


class HeadParams(Schema):
    """The tower each task gets on top of the shared representation."""

    widths: Widths = Field(default=[64])
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Norm = "none"
    decoder_channels: Widths = Field(
        default=[64], description="dense tasks: channels of the decoder's 3x3 conv layers"
    )


class Tower(nn.Module):
    """``widths`` hidden layers then a linear output of ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, params: HeadParams) -> None:
        super().__init__()
        self.hidden = mlp_layers(
            in_dim, params.widths, params.activation, params.dropout, params.norm
        )
        self.out = nn.Linear(params.widths[-1] if params.widths else in_dim, out_dim)

    def forward(self, z: Tensor) -> Tensor:
        out: Tensor = self.out(self.hidden(z))
        return out


class PooledTower(Tower):
    """Global average pooling of a feature map, then a :class:`Tower`."""

    def forward(self, z: Tensor) -> Tensor:
        return super().forward(z.mean(dim=(2, 3)))


class DenseDecoder(nn.Module):
    """Per-pixel outputs ``[B, out_dim, H, W]`` from a feature map ``[B, C, h, w]``."""

    def __init__(
        self, in_dim: int, out_dim: int, params: HeadParams, size: tuple[int, int]
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for ch in params.decoder_channels:
            layers += [
                nn.Conv2d(in_dim, ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(ch),
                make_activation(params.activation),
            ]
            in_dim = ch
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Conv2d(in_dim, out_dim, 1)
        self.size = size

    def forward(self, z: Tensor) -> Tensor:
        # Upsample the features before the 1x1 output conv: interpolating logits instead
        # would blur class boundaries into mixtures no class owns.
        h = F.interpolate(self.hidden(z), size=self.size, mode="bilinear", align_corners=False)
        out: Tensor = self.out(h)
        return out


@dataclass(frozen=True)
class HeadSpec:
    """What a task's head must produce: ``n_outputs`` values per example, or per pixel."""

    n_outputs: int
    dense: bool = False


class HeadFactory:
    """Builds each task's head for the representation it reads; architectures call it once
    per task with their representation's width and whether it is a feature map."""

    def __init__(
        self,
        specs: dict[str, HeadSpec],
        params: HeadParams,
        output_size: tuple[int, int] | None = None,
    ) -> None:
        self.specs = specs
        self.params = params
        self.output_size = output_size

    @property
    def tasks(self) -> list[str]:
        return list(self.specs)

    def build(self, task: str, in_dim: int, spatial: bool = False) -> nn.Module:
        spec = self.specs[task]
        if spec.dense:
            if not spatial or self.output_size is None:
                raise ConfigError(
                    f"config error: task {task!r} is dense (per pixel) and needs an image "
                    "encoder that keeps feature maps, e.g. model.encoder.name = 'cnn'"
                )
            return DenseDecoder(in_dim, spec.n_outputs, self.params, self.output_size)
        if spatial:
            return PooledTower(in_dim, spec.n_outputs, self.params)
        return Tower(in_dim, spec.n_outputs, self.params)
