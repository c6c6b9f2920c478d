"""Modern tabular building blocks: numerical feature embeddings and a TabM ensemble backbone.

* **Numerical feature embeddings** (Gorishniy, Rubachev & Babenko, "On Embeddings for
  Numerical Features in Tabular Deep Learning", NeurIPS 2022): each numeric column becomes a
  vector before the MLP sees it, either piecewise-linear (its quantile bins, Section 3.2) or
  periodic (``cos``/``sin`` of learned frequencies, Section 3.3). The modules are the
  ``rtdl-num-embeddings`` package's; :class:`NumericBlock` applies them to the numeric
  columns of the dense block only (missing indicators and one-hot columns pass through as
  they are; categorical embeddings are the encoder's, untouched).

  The bins are fitted by the table preprocessing (``data.numeric_bins``), not by the
  encoder: the preprocessing is what every run path (the run, its single-task baselines,
  compare, fine-tuning, streaming) already fits on the training rows and only on them, and
  it saves what it fitted as JSON. An encoder is built from the :class:`InputSpec` alone
  (also on the ``meta`` device, to check a model directory before anything is read), so the
  bins reach it through the spec (``numeric_at``, ``numeric_bins``) and the encoding
  buffers derived from them are not saved with the weights: one source of truth.

* **TabM** (Gorishniy, Kotelnikov & Babenko, "TabM: Advancing Tabular Deep Learning with
  Parameter-Efficient Ensembling", ICLR 2025): k MLPs in one, sharing their weights except
  for BatchEnsemble's per-member scalings and biases, trained together. The backbone is the
  ``tabm`` package's (``make_tabm_backbone``).

  How the k members meet the multi-task heads: the encoder returns the **mean of the k
  members' representations** ``[B, D]``. The paper instead gives each member its own output
  layer and trains the k predictions independently (loss = mean of the members' losses),
  averaging predictions at inference. Here every architecture, balancer and export path is
  built on one ``[B, D]`` representation per example (the heads' batched towers, MMoE's gates
  mixing expert outputs, the Gramian engine's representation mode, ONNX), and per-member
  heads would need a k-fold batch in every loss, metric and balancer. With linear heads
  (``model.head.widths = []``) the mean representation is exactly the average of k
  members' logits through one shared head; what is given up is the independent training of
  the members (they are trained through their average), which the paper reports helps.
  ``benchmarks/run_tabular.py`` measures what remains.
"""

from __future__ import annotations

import warnings
from typing import Literal

import rtdl_num_embeddings
import tabm
import torch
from pydantic import Field
from torch import Tensor, nn

from polytask.config_errors import Layers, Schema, Width
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError

NumericEmbedding = Literal["none", "piecewise_linear", "periodic"]


class NumericEmbeddingParams(Schema):
    """The numeric-embedding options every encoder of tables takes (the ``mlp`` encoder's and
    ``tabm``'s)."""

    numeric_embedding: NumericEmbedding = Field(
        default="none",
        description="embed each numeric column: piecewise_linear (quantile bins, needs "
        "data.numeric_bins) or periodic (Gorishniy et al. 2022); none: the standardised value",
    )
    numeric_embedding_dim: Width = Field(
        default=16, description="numeric_embedding: width of each numeric column's embedding"
    )
    periodic_frequencies: Width = Field(
        default=48, description="periodic: frequencies per column (k in the paper)"
    )
    periodic_scale: float = Field(
        default=0.1,
        gt=0.0,
        le=100.0,
        description="periodic: std of the initial frequencies (sigma in the paper; its most "
        "important hyperparameter)",
    )


def _float32_edges(edges: list[float]) -> Tensor:
    """One column's bin edges as float32 on the CPU (also when the model is built on the
    ``meta`` device: the encoding's buffers are computed from their values), repeated edges
    that float32 rounding merged dropped, at least two."""
    t: Tensor = torch.unique(torch.tensor(edges, dtype=torch.float32, device="cpu"))
    if len(t) < 2:
        t = torch.cat([t, t + 1.0])
    return t


class NumericBlock(nn.Module):
    """The dense block ``[B, D]`` with its numeric columns embedded: ``[B, out_dim]``.

    Columns at ``spec.numeric_at`` go through the embedding (``[B, F, d]``, flattened); the
    other dense columns (missing indicators, one-hot blocks, appended preference columns)
    follow unchanged. ``numeric_embedding = "none"`` is the identity."""

    numbers: Tensor
    rest: Tensor

    def __init__(self, spec: InputSpec, params: NumericEmbeddingParams) -> None:
        super().__init__()
        self.kind = params.numeric_embedding
        self.embedding: nn.Module | None = None
        numbers = list(spec.numeric_at)
        # The column indices are the spec's, rebuilt with the model: not saved as weights.
        self.register_buffer(
            "numbers", torch.tensor(numbers, dtype=torch.long, device="cpu"), persistent=False
        )
        rest = sorted(set(range(spec.n_numeric)) - set(numbers))
        self.register_buffer(
            "rest", torch.tensor(rest, dtype=torch.long, device="cpu"), persistent=False
        )
        self.out_dim = spec.n_numeric
        #: Width of each input feature, in output order (TabM's first scaling is drawn
        #: once per feature: the package's ``start_scaling_init_chunks``).
        self.feature_widths = [1] * spec.n_numeric
        if self.kind == "none":
            return
        if not numbers:
            raise ConfigError(
                f"config error: model.encoder.numeric_embedding: {self.kind!r} embeds the "
                "table's numeric columns, and the data describes none: set data.numeric_bins "
                "(e.g. 48) so that the preprocessing records them (a table with numeric "
                "columns, not another input)"
            )
        d = params.numeric_embedding_dim
        if self.kind == "piecewise_linear":
            if len(spec.numeric_bins) != len(numbers):
                raise ConfigError(
                    "config error: model.encoder.numeric_embedding: 'piecewise_linear' needs "
                    "quantile bins fitted on the training rows, and the data has none: set "
                    "data.numeric_bins (e.g. 48; a streamed table fits none)"
                )
            bins = [_float32_edges(edges) for edges in spec.numeric_bins]
            target = torch.get_default_device()
            # The package computes the encoding from the edges' values (Python branches on
            # tensors), which the meta device has not: built on the CPU, then moved. The
            # edges' count is bounded by the model.json that holds them.
            with warnings.catch_warnings(), torch.device("cpu"):
                # rtdl warns about columns with a single bin (binary flags): they are meant.
                warnings.simplefilter("ignore", UserWarning)
                # Version "B" (the TabM paper's): a linear embedding plus the
                # piecewise-linear term, zero-initialised, so training starts linear.
                embedding: nn.Module = rtdl_num_embeddings.PiecewiseLinearEmbeddings(
                    bins, d, activation=False, version="B"
                )
            embedding = embedding.to(target)
            # The encoding's weight/bias/masks are functions of the bins (in the spec): not
            # weights, so not saved twice where the two copies could disagree.
            impl = embedding.get_submodule("impl")
            for name in list(impl._buffers):
                impl._non_persistent_buffers_set.add(name)
        else:
            embedding = rtdl_num_embeddings.PeriodicEmbeddings(
                len(numbers),
                d,
                n_frequencies=params.periodic_frequencies,
                frequency_init_scale=params.periodic_scale,
                lite=False,
            )
        self.embedding = embedding
        self.out_dim = len(numbers) * d + len(rest)
        self.feature_widths = [d] * len(numbers) + [1] * len(rest)

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is None:
            return x
        embedded: Tensor = self.embedding(x.index_select(1, self.numbers)).flatten(1)
        if self.rest.numel() == 0:
            return embedded
        return torch.cat([embedded, x.index_select(1, self.rest)], dim=1)


class TabMParams(NumericEmbeddingParams):
    """Parameters of the TabM encoder (defaults: the package's, narrower for CPUs)."""

    k: Layers = Field(default=32, description="ensemble members sharing the backbone")
    n_blocks: Layers = Field(default=3, description="MLP blocks (Linear, ReLU, dropout)")
    d_block: Width = Field(default=256, description="width of every block (the representation)")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout after each block")
    arch: Literal["tabm", "tabm-mini", "tabm-packed"] = Field(
        default="tabm",
        description="tabm: BatchEnsemble in every layer; tabm-mini: one per-member scaling "
        "before a shared MLP; tabm-packed: k separate MLPs",
    )
    embedding_dim: Width | None = Field(
        default=None, description="categorical embedding width; default min(32, 1.6 * n^0.56)"
    )


class TabMBackbone(nn.Module):
    """k ensemble members over one flat feature vector ``[B, in_dim]`` -> the mean of their
    representations ``[B, d_block]`` (see the module docstring for why the mean).

    ``feature_widths`` (summing to ``in_dim``): each input feature's width, so that TabM's
    first per-member scaling is drawn once per feature as in the package's ``TabM``."""

    def __init__(self, in_dim: int, feature_widths: list[int], params: TabMParams) -> None:
        super().__init__()
        embedded = params.numeric_embedding != "none"
        packed = params.arch == "tabm-packed"
        # The package's own defaults (TabM.make): normal scalings with numeric embeddings,
        # random signs without.
        start: Literal["normal", "random-signs"] | None = (
            None if packed else ("normal" if embedded else "random-signs")
        )
        self.k = params.k
        self.view = tabm.EnsembleView(k=params.k)
        self.backbone = tabm.make_tabm_backbone(
            d_in=in_dim,
            n_blocks=params.n_blocks,
            d_block=params.d_block,
            dropout=params.dropout,
            k=params.k,
            arch_type=params.arch,
            start_scaling_init=start,
            start_scaling_init_chunks=None if packed else feature_widths,
        )
        self.out_dim = params.d_block

    def forward(self, x: Tensor) -> Tensor:
        members: Tensor = self.backbone(self.view(x))  # [B, k, d_block]
        return members.mean(dim=1)
