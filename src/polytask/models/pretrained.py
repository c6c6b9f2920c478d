"""Pretrained image backbones by name, from timm (Wightman, "PyTorch Image Models",
https://github.com/huggingface/pytorch-image-models): ResNet (He et al., CVPR 2016), ConvNeXt
(Liu et al., "A ConvNet for the 2020s", CVPR 2022), ViT (Dosovitskiy et al., "An Image is Worth
16x16 Words", ICLR 2021) and every other model ``timm.create_model`` knows.

* ``features_only = false``: the backbone's pooled features, ``[B, num_features]`` (timm's
  ``num_classes = 0`` drops the classifier), for image-level heads;
* ``features_only = true``: its last feature map ``[B, C, h, w]`` (timm's feature extraction
  wrapper; ``C = feature_info.channels()[-1]``), so per-pixel heads decode it back to the input
  resolution and image-level heads pool it.

Weights come only from the file the user names (``weights``), through timm's own loader
(``pretrained_cfg_overlay = {"file": ...}``, which also drops the classifier and adapts the
first convolution to ``in_chans``); without it the backbone starts from random weights: nothing
is ever downloaded. Only safetensors files are read: a ``.pth``/``.bin`` checkpoint is a pickle,
which polytask never loads.

The backbone's layer order for ``[finetune]`` (freezing, layer-wise learning rates, gradual
unfreezing) is timm's own: the modules its ``feature_info`` names (ResNet's ``layer1`` ...
``layer4``, ConvNeXt's ``stages.N``, ViT's ``blocks.N``) are the blocks, below them the stem.

timm is an optional extra (``pip install 'polytask[vision]'``), imported when the encoder is
built: it pulls in torchvision, which a run without a timm backbone must not need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Schema
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.encoders import ENCODERS, Encoder

VISION_EXTRA_HINT = "pip install 'polytask[vision]'"
#: Checkpoint suffixes that are pickles (torch.save, pytorch_model.bin): never loaded.
PICKLE_SUFFIXES = frozenset({".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar"})


class TimmParams(Schema):
    """Parameters of the timm backbone encoder."""

    model_name: str = Field(
        min_length=1, description="timm model name, e.g. resnet18, convnext_tiny"
    )
    weights: str | None = Field(
        default=None,
        description="a .safetensors file of the model's weights (timm's own or a state_dict "
        "saved with safetensors); none = random initialisation (nothing is downloaded)",
    )
    features_only: bool = Field(
        default=False,
        description="return the last feature map [B, C, h, w] (for per-pixel heads) instead "
        "of the pooled features",
    )


def import_timm() -> Any:
    """The ``timm`` module, or a one-line :class:`ConfigError` naming the extra."""
    try:
        # Optional extra, imported here: it imports torchvision, which most runs never need.
        import timm  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"config error: model.encoder.name: encoder 'timm' needs the optional extra: "
            f"{VISION_EXTRA_HINT} ({exc})"
        ) from None
    return timm


def weights_file(path: str) -> Path:
    """The safetensors file ``path`` names, checked: it exists and is not a pickle."""
    file = Path(path).expanduser()
    if file.suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(
            f"config error: model.encoder.weights: '{file}' is a pickle checkpoint, which "
            "polytask never loads; convert it: safetensors.torch.save_file(torch.load(path, "
            "weights_only=True), 'model.safetensors')"
        )
    if not file.is_file():
        raise ConfigError(f"config error: model.encoder.weights: '{file}' is not a file")
    if file.suffix.lower() != ".safetensors":
        raise ConfigError(
            f"config error: model.encoder.weights: '{file}' is not a .safetensors file"
        )
    return file.resolve()


class TimmEncoder(Encoder):
    """A timm model over ``inputs["image"]``: pooled features, or its last feature map when
    ``features_only`` (then ``spatial``)."""

    def __init__(self, spec: InputSpec, params: TimmParams) -> None:
        super().__init__()
        spec.require("image", "timm")
        # The file is checked first: a wrong path or a pickle is named even without timm.
        file = None if params.weights is None else weights_file(params.weights)
        timm = import_timm()
        if not timm.is_model(params.model_name):
            raise ConfigError(
                f"config error: model.encoder.model_name: timm has no model "
                f"{params.model_name!r} (timm.list_models() lists them)"
            )
        kwargs: dict[str, Any] = {"in_chans": spec.shape[0] if spec.shape else 3}
        if params.features_only:
            kwargs["features_only"] = True
        else:
            kwargs["num_classes"] = 0  # the pooled features, no classifier
        if file is not None and torch.get_default_device().type != "meta":
            # (On the meta device a saved model's shapes are checked: no weights load there.)
            # timm's loader reads the named file (never the Hub) and fits it to the model.
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(file)})
        try:
            self.model: nn.Module = timm.create_model(params.model_name, **kwargs)
        except (RuntimeError, ValueError, KeyError) as exc:
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            key, source = ("weights", f" from '{file}'") if file else ("model_name", "")
            raise ConfigError(
                f"config error: model.encoder.{key}: timm cannot build "
                f"{params.model_name!r}{source}: {first}"
            ) from None
        self.spatial = params.features_only
        model: Any = self.model
        self.out_dim = (
            int(model.feature_info.channels()[-1])
            if params.features_only
            else int(model.num_features)
        )

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out = self.model(inputs["image"])
        # The feature wrapper returns one map per level; the deepest is the representation.
        last: Tensor = out[-1] if isinstance(out, list | tuple) else out
        return last

    def layer_blocks(self) -> list[str]:
        """The modules timm's ``feature_info`` names, as submodules of this encoder: the
        feature wrapper renames ``stages.0`` to ``stages_0`` (one level of ``nn.Sequential``
        flattened) or keeps the model under ``model``; leaf modules (ResNet's ``act1``, the end
        of its stem) are no blocks."""
        info: Any = getattr(self.model, "feature_info", None)
        if info is None:
            return []
        names = info.module_name() if hasattr(info, "module_name") else [d["module"] for d in info]
        submodules = dict(self.model.named_modules())
        blocks = []
        for name in names:
            for candidate in (name, name.replace(".", "_"), f"model.{name}"):
                module = submodules.get(candidate)
                if module is not None:
                    if next(module.children(), None) is not None:
                        blocks.append(f"model.{candidate}")
                    break
        return blocks


@ENCODERS.register(
    "timm",
    params=TimmParams,
    summary="images: a timm backbone by name (resnet18, convnext_tiny, vit_small_...), weights "
    "from a local safetensors file (needs polytask[vision])",
)
def build_timm(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, TimmParams)
    return TimmEncoder(spec, params)
