"""Multi-Task Attention Network, MTAN (Liu, Johns & Davison, "End-to-End Multi-Task Learning
with Attention", CVPR 2019).

One shared convolutional backbone (the configured ``cnn`` encoder) builds a global feature pool;
every task reads it through its own chain of soft-attention modules, one per backbone stage.
At stage ``j`` the attention module of task ``t`` computes a mask in ``(0, 1)`` for every
channel and position of the stage's shared features ``p_j``,

    a_j^t = sigmoid(BN(conv1x1(ReLU(BN(conv1x1([u_j, f_{j-1}(a_{j-1}^t)])))))) ⊙ p_j,

where ``u_j`` are the shared features the mask is computed from and ``f_{j-1}`` is a 3x3
convolution block (conv, batch norm, ReLU) from stage ``j-1``'s width to stage ``j``'s, followed
by max pooling to stage ``j``'s resolution. The first stage's mask reads ``u_1`` alone; the last
stage has no ``f``, its attended features go straight to the task's head. As in the paper
(Section 3.1 and its released code), the ``f`` blocks are shared by the tasks (one block per
stage, applied to each task's attended features in turn) while the attention modules are the
tasks' own; the paper's "shared features from the first layer of the block" are the features
before the stage's last residual block when the stage has several (``blocks > 1``, the layout of
the official ResNet-MTAN, which masks the output of the last block with features from before
it), and the stage's output itself when it has one.

Ownership follows the gradient, as for every architecture here: the backbone and the ``f``
blocks are reached by every task's loss and are shared; task ``t``'s attention modules and head
are reached by its loss only and are its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Schema, Width
from polytask.errors import ConfigError
from polytask.models.architectures import ARCHITECTURES, Architecture, _params
from polytask.models.cnn import BasicBlock, CNNEncoder
from polytask.models.encoders import Encoder
from polytask.models.heads import HeadFactory


class MTANParams(Schema):
    """Parameters of MTAN."""

    reduction: Width = Field(
        default=4,
        description="hidden channels of each attention module = its stage's width // reduction "
        "(at least 1); the official ResNet-MTAN uses 4, the SegNet-MTAN 1",
    )


class AttentionModule(nn.Module):
    """A task's soft mask over one stage: conv1x1-BN-ReLU-conv1x1-BN-sigmoid."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x))


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """The paper's shared 3x3 convolution block ``f``: conv, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


def _pool_to(x: Tensor, size: torch.Size) -> Tensor:
    """Max pooling to the next stage's resolution: the paper's 2x2 pooling, rounding up as the
    stride-2 convolutions do (9 -> 5); adaptive pooling for any other pair of sizes."""
    if x.shape[-2:] == size:
        return x
    pooled = F.max_pool2d(x, 2, 2, ceil_mode=True)
    if pooled.shape[-2:] == size:
        return pooled
    return F.adaptive_max_pool2d(x, (size[0], size[1]))


class MTAN(Architecture):
    """MTAN over the stages of the ``cnn`` encoder's backbone (see the module docstring)."""

    def __init__(
        self,
        make_encoder: Callable[[], Encoder],
        heads: HeadFactory,
        params: MTANParams,
    ) -> None:
        super().__init__()
        encoder = make_encoder()
        if not isinstance(encoder, CNNEncoder):
            raise ConfigError(
                "config error: model.architecture: architecture 'mtan' attends over the stages "
                "of the 'cnn' encoder; set model.encoder.name = 'cnn' "
                f"(got {type(encoder).__name__})"
            )
        self.tasks = heads.tasks
        self.encoder = encoder
        widths = encoder.backbone.widths
        # Index of each stage's last residual block: the mask reads the features before it
        # (when there are any) and is applied to the features after it.
        self._split = [
            max(i for i, m in enumerate(stage) if isinstance(m, BasicBlock))
            for stage in encoder.backbone.stages
            if isinstance(stage, nn.Sequential)
        ]
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    AttentionModule(w if j == 0 else 2 * w, max(1, w // params.reduction), w)
                    for j, w in enumerate(widths)
                )
                for t in self.tasks
            }
        )
        self.blocks = nn.ModuleList(
            _conv_block(widths[j], widths[j + 1]) for j in range(len(widths) - 1)
        )
        self.heads = nn.ModuleDict(
            {t: heads.build(t, widths[-1], spatial=True) for t in self.tasks}
        )

    def _stages(self, inputs: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per stage, the shared features a mask reads (``u``) and those it weights (``p``)."""
        backbone = self.encoder.backbone
        x = backbone.stem(inputs["image"])
        out: list[tuple[Tensor, Tensor]] = []
        for stage, split in zip(backbone.stages, self._split, strict=True):
            layers = list(stage.children())
            for layer in layers[:split]:
                x = layer(x)
            before = x
            for layer in layers[split:]:
                x = layer(x)
            out.append((before if split > 0 else x, x))
        return out

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        stages = self._stages(inputs)
        outputs: dict[str, Tensor] = {}
        for t in self.tasks:
            modules = self.attention[t]
            assert isinstance(modules, nn.ModuleList)
            attended: Tensor | None = None
            for j, (u, p) in enumerate(stages):
                if attended is None:
                    mask_in = u
                else:
                    prev = _pool_to(self.blocks[j - 1](attended), p.shape[-2:])
                    mask_in = torch.cat([u, prev], dim=1)
                attended = modules[j](mask_in) * p
            assert attended is not None
            outputs[t] = self.heads[t](attended)
        return outputs

    def shared_parameters(self) -> list[nn.Parameter]:
        return _params(*self.shared_modules())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return _params(self.attention[task], self.heads[task])

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoder, self.blocks] if len(self.blocks) else [self.encoder]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The backbone's last layer: its output is what every task's last mask weights."""
        return self.encoder.last_layer_parameters()


@ARCHITECTURES.register(
    "mtan", params=MTANParams, summary="MTAN: shared CNN + per-task attention (needs 'cnn')"
)
def build_mtan(
    make_encoder: Callable[[], Encoder],
    heads: HeadFactory,
    params: BaseModel,
) -> Architecture:
    assert isinstance(params, MTANParams)
    return MTAN(make_encoder, heads, params)
