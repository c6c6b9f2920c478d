"""A small ResNet-style convolutional encoder for images (and spectrograms).

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016: stages of
basic residual blocks (two 3x3 convolutions with batch norm and an identity or 1x1 projection
shortcut), each stage after the first halving the resolution. Sized for CPU training on small
images: the default is three stages of 32, 64 and 128 channels, one block each.

The encoder returns feature maps ``[B, C, h, w]`` (``spatial = True``): classification heads
pool them, dense heads decode them back to the input resolution, and MTAN reads every stage.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Layers, Schema, Widths
from polytask.data.spec import InputSpec
from polytask.models.encoders import ENCODERS, Encoder


class CNNParams(Schema):
    """Parameters of the ResNet-style CNN encoder."""

    widths: Widths = Field(
        default=[32, 64, 128], min_length=1, description="channels of each stage"
    )
    blocks: Layers = Field(default=1, description="residual blocks per stage")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="2-d dropout after each stage")


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with a shortcut (He et al. 2016, Fig. 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            # Projection shortcut (the paper's option B) where the shapes change.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + self.shortcut(x))
        return result


class CNNBackbone(nn.Module):
    """Stem (3x3 conv, batch norm, ReLU) then ``len(widths)`` stages of residual blocks; every
    stage after the first halves height and width. ``stages`` is public for MTAN."""

    def __init__(self, in_channels: int, params: CNNParams) -> None:
        super().__init__()
        first = params.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, first, 3, padding=1, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        in_ch = first
        for i, width in enumerate(params.widths):
            blocks: list[nn.Module] = []
            for j in range(params.blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
            if params.dropout > 0:
                blocks.append(nn.Dropout2d(params.dropout))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_dim = in_ch
        self.widths = list(params.widths)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class CNNEncoder(Encoder):
    """The ResNet-style backbone over ``inputs["image"]`` (``[B, C, H, W]``)."""

    spatial = True

    def __init__(self, spec: InputSpec, params: CNNParams) -> None:
        super().__init__()
        spec.require("image", "cnn")
        self.backbone = CNNBackbone(spec.shape[0], params)
        self.out_dim = self.backbone.out_dim

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out: Tensor = self.backbone(inputs["image"])
        return out


@ENCODERS.register("cnn", params=CNNParams, summary="image ResNet-style CNN (feature maps)")
def build_cnn(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, CNNParams)
    return CNNEncoder(spec, params)
