"""Images: one per row, as an in-memory array or an image/``.npy`` file path.

Arrays are ``H x W`` (grey) or ``H x W x C`` (as image files are read). Every image is brought
to ``channels`` channels and, if ``size`` is set, resized (bilinear) to it; without ``size``
all images must share the first training image's size. 8-bit images are scaled to [0, 1],
then each channel is standardised with the training images' mean and standard deviation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import Tensor

from polytask.config_errors import MAX_WIDTH, Schema, Width
from polytask.data.arrays import cell_array, stack_column
from polytask.data.inputs.base import INPUTS, InputProcessor, StoredState, parse_state
from polytask.data.spec import InputSpec
from polytask.errors import DataError


class ImageParams(Schema):
    """Parameters of the image input."""

    column: str = Field(default="image", description="column of arrays or image file paths")
    size: list[Width] | None = Field(
        default=None, min_length=2, max_length=2, description="[height, width] to resize to"
    )
    channels: Literal[1, 3] | None = Field(
        default=None, description="1 (grey) or 3 (RGB); default: as the first training image"
    )
    normalize: bool = Field(default=True, description="standardise each channel (train stats)")
    flip: bool = Field(
        default=False, description="augment: flip training images left-right at random"
    )
    crop_padding: int = Field(
        default=0,
        ge=0,
        le=MAX_WIDTH,
        description="augment: pad training images by this many pixels (with the mean) and "
        "crop them back at a random offset",
    )


class ImageInput(InputProcessor):
    """Images -> ``{"image": float32[N, C, H, W]}``."""

    name = "image"
    reads_files = True

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, ImageParams)
        super().__init__(params)
        self.p = params
        self.shape: list[int] = []  # [C, H, W] after fitting
        self.mean: list[float] = []
        self.std: list[float] = []

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    def _to_channels(self, array: np.ndarray, where: str) -> np.ndarray:
        """``H x W x C`` with the wanted number of channels."""
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise DataError(f"{where}: an image is H x W or H x W x C, got shape {array.shape}")
        have = array.shape[2]
        want = self.shape[0] if self.shape else (self.p.channels or min(have, 3))
        if have == want:
            return array
        if have in (3, 4) and want == 1:
            # ITU-R BT.601 luma, what Pillow's "L" conversion uses.
            rgb = array[:, :, :3].astype(np.float32)
            return np.asarray(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
        if have == 1 and want == 3:
            return np.repeat(array, 3, axis=2)
        if have == 4 and want == 3:
            return array[:, :, :3]
        raise DataError(f"{where}: cannot turn {have} channels into {want}")

    def _read(self, value: object, base_dir: Path | None, where: str) -> np.ndarray:
        # Scale first: every image leaves here as float32 in [0, 1] (8-bit) or as given.
        array = self._to_channels(_scale(cell_array(value, base_dir, where)), where)
        if self.p.size is not None and list(array.shape[:2]) != self.p.size:
            t = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
            t = F.interpolate(t, size=tuple(self.p.size), mode="bilinear", align_corners=False)
            return np.ascontiguousarray(t[0].permute(1, 2, 0).numpy())
        return array

    def _pixels(self, df: pd.DataFrame, source: str, base_dir: Path | None) -> Tensor:
        self.require_columns(df, source)
        stacked, _ = stack_column(
            df[self.p.column], source, base_dir, reader=self._read, progress="reading images"
        )
        # Copied by NumPy into N x C x H x W order: torch's permute(...).contiguous() keeps
        # the odd strides of a grey (C = 1) batch, which CPU convolutions mishandle.
        return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self.shape = []
        pixels = self._pixels(train, source, base_dir)
        self.shape = list(pixels.shape[1:])
        self.mean = pixels.mean(dim=(0, 2, 3)).tolist()
        self.std = [max(s, 1e-6) for s in pixels.std(dim=(0, 2, 3)).tolist()]

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        pixels = self._pixels(df, source, base_dir)
        if list(pixels.shape[1:]) != self.shape:
            raise DataError(
                f"{source}: column '{self.p.column}': images of shape "
                f"{list(pixels.shape[1:])} (C, H, W), the model was trained on {self.shape}; "
                "set data.input.size to resize"
            )
        if self.p.normalize:
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.std).view(1, -1, 1, 1)
            pixels = (pixels - mean) / std
        return {"image": pixels}

    @property
    def augments(self) -> bool:
        return self.p.flip or self.p.crop_padding > 0

    def augment(self, inputs: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Random left-right flips (half of the images) and random crops of the images
        padded by ``crop_padding``, one draw per image, for the whole batch at once."""
        x = inputs["image"]
        n, c, h, w = x.shape
        if self.p.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        pad = self.p.crop_padding
        if pad:
            # Zero is the channel mean once normalised: the padding adds no new brightness.
            padded = F.pad(x, (pad, pad, pad, pad))
            top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) + torch.arange(h)
            left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) + torch.arange(w)
            x = padded[
                torch.arange(n).view(n, 1, 1, 1),
                torch.arange(c).view(1, c, 1, 1),
                top.view(n, 1, h, 1),
                left.view(n, 1, 1, w),
            ]
        return {**inputs, "image": x}

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(kind="image", shape=list(self.shape))

    def state(self) -> dict[str, Any]:
        return {"shape": self.shape, "mean": self.mean, "std": self.std}

    def load_state(self, state: dict[str, Any]) -> None:
        stored = parse_state(ImageState, state)
        self.shape, self.mean, self.std = stored.shape, stored.mean, stored.std


class ImageState(StoredState):
    """What :class:`ImageInput` fits, as stored: ``[C, H, W]`` (1 to 4 channels, sides
    bounded like ``size``) and one finite mean and positive std per channel."""

    shape: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(min_length=3, max_length=3)
    mean: list[float] = Field(max_length=4)
    std: list[Annotated[float, Field(gt=0.0)]] = Field(max_length=4)

    @model_validator(mode="after")
    def _per_channel(self) -> ImageState:
        if self.shape[0] > 4 or not len(self.mean) == len(self.std) == self.shape[0]:
            raise ValueError(f"mean and std need one value per channel of shape {self.shape}")
        return self


def _scale(array: np.ndarray) -> np.ndarray:
    """float32, 8-bit values scaled to [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


@INPUTS.register("image", params=ImageParams, summary="an image per row (array or file)")
def build_image(params: BaseModel) -> InputProcessor:
    return ImageInput(params)
