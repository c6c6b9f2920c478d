"""The biaffine dependency scorer: the head module of the ``dependency`` task kind.

Dozat & Manning, "Deep Biaffine Attention for Neural Dependency Parsing" (ICLR 2017): four
MLPs read each word's representation ``x_i`` (from the shared token encoder) and give

* ``d_i = MLP_arc-dep(x_i)``, ``h_j = MLP_arc-head(x_j)`` (``arc_dim`` wide): the score of
  word ``j`` heading word ``i`` is the biaffine ``s_ij = d_i^T U h_j + u^T h_j`` (the paper's
  eq. 2; a term in ``d_i`` alone would be the same for every head of ``i``, so it is left out
  as the paper does);
* ``e_i = MLP_label-dep(x_i)``, ``g_j = MLP_label-head(x_j)`` (``label_dim`` wide): the score
  of relation ``l`` for the arc ``j -> i`` is the bilinear classifier
  ``e_i^T U_l g_j + w_l^T e_i + v_l^T g_j + b_l`` (eq. 3).

The artificial ROOT (head 0) is a learnt vector in the encoder's space that goes through the
same head-side MLPs as a word would (the paper prepends a ROOT token to the sentence).

**Output layout.** Scoring every relation for every (dependent, head) pair gives
``[B, T, T+1, L]`` numbers; a split's outputs are kept whole for evaluation, and for EWT's
development set (2,001 sentences padded to 75 words, 50 relations) that tensor alone would be
2.3 GB. So the relation scores leave the module *factorised*, each ``U_l`` of rank ``rank``
(``U_l = P_l^T Q_l``, low-rank bilinear pooling: Pirsiavash, Ramanan & Fowlkes, NeurIPS 2009;
Kim et al., "Hadamard Product for Low-rank Bilinear Pooling", ICLR 2017), and the kind
combines the factors for the heads it needs (the gold head in the loss, the predicted head in
metrics and predictions; every head only for distillation, batch by batch). Per word the
output holds ``1 + L + 2 L (rank + 1)`` fixed channels then ``T + 1`` arc scores:

==========================  ===================================================================
channels                    meaning
==========================  ===================================================================
``0``                       1 for a word of the sentence, 0 for padding
``1 .. L``                  relation scores when the head is ROOT
``dep = L(rank+1)``         ``P_l e_i`` (``rank`` per relation) then ``w_l^T e_i + b_l``
``head = L(rank+1)``        ``Q_l g_i`` then ``v_l^T g_i``: word ``i`` as a head
``T + 1`` (last)            arc scores ``s_ij``: ``j = 0`` ROOT, ``j = k`` word ``k``
==========================  ===================================================================

The arc scores come last so that outputs of batches trimmed to different lengths can be
padded to one shape at the end of each dimension (:func:`polytask.tasks.kinds.tokens.pad_rows`):
padded words and padded heads then carry a word flag of 0 and are never read.

Which positions are words is read from the encoder's output: the token encoders give exactly
zero vectors at padding positions (a real word's representation is never all zeros).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BiaffineScorer", "fixed_channels"]


def fixed_channels(n_labels: int, rank: int) -> int:
    """The channels of a word's output before its arc scores (see the module's table)."""
    return 1 + n_labels + 2 * n_labels * (rank + 1)


def _mlp(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    # One layer with a leaky ReLU and dropout after it, as in the paper (Table 2: ReLU-like
    # nonlinearity, MLP dropout 0.33).
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LeakyReLU(0.1), nn.Dropout(dropout))


class BiaffineScorer(nn.Module):
    """Arc and relation scores of every word of a batch of sentences ``[B, T, in_dim]``.

    Args:
        in_dim: width of the word representations.
        n_labels: number of relation labels ``L``.
        arc_dim: width of the arc MLPs (the paper: 500; smaller suits a CPU).
        label_dim: width of the relation MLPs (the paper: 100).
        rank: rank of each relation's bilinear matrix (see the module docstring).
        dropout: dropout on the MLP outputs (the paper: 0.33).
    """

    def __init__(
        self,
        in_dim: int,
        n_labels: int,
        arc_dim: int = 256,
        label_dim: int = 64,
        rank: int = 4,
        dropout: float = 0.33,
    ) -> None:
        super().__init__()
        if n_labels < 1 or rank < 1:
            raise ValueError(
                f"biaffine scorer: n_labels and rank must be >= 1 ({n_labels}, {rank})"
            )
        self.n_labels = n_labels
        self.rank = rank
        self.root = nn.Parameter(torch.randn(in_dim) * in_dim**-0.5)
        self.arc_dep = _mlp(in_dim, arc_dim, dropout)
        self.arc_head = _mlp(in_dim, arc_dim, dropout)
        self.label_dep = _mlp(in_dim, label_dim, dropout)
        self.label_head = _mlp(in_dim, label_dim, dropout)
        # The paper initialises U at zero: every head starts equally likely.
        self.arc_u = nn.Parameter(torch.zeros(arc_dim, arc_dim))
        self.arc_bias = nn.Linear(arc_dim, 1, bias=False)
        # Dependent side: P_l e (rank per label) and w_l^T e + b_l; head side: Q_l g, v_l^T g.
        self.dep_factors = nn.Linear(label_dim, n_labels * (rank + 1))
        self.head_factors = nn.Linear(label_dim, n_labels * (rank + 1), bias=False)

    def forward(self, words: Tensor) -> Tensor:
        """``[B, T, fixed_channels + T + 1]`` scores (layout in the module docstring)."""
        if words.dim() != 3:
            raise ValueError(
                f"biaffine scorer: input of shape {tuple(words.shape)}; expected [B, T, D] word "
                "representations from a token encoder"
            )
        batch = words.shape[0]
        is_word = (words != 0).any(dim=-1)
        root = self.root.expand(batch, 1, -1)
        heads = torch.cat([root, words], dim=1)  # [B, T+1, D]: ROOT is head 0
        d = self.arc_dep(words)
        h = self.arc_head(heads)
        arcs = torch.einsum("bid,de,bje->bij", d, self.arc_u, h) + self.arc_bias(h).transpose(1, 2)
        e = self.label_dep(words)
        g = self.label_head(heads)
        shape = (batch, -1, self.n_labels, self.rank + 1)
        dep = self.dep_factors(e).view(shape)
        head = self.head_factors(g).view(shape)
        root_labels = (
            (dep[..., :-1] * head[:, :1, :, :-1]).sum(-1) + dep[..., -1] + head[:, :1, :, -1]
        )
        flag = is_word.to(arcs.dtype).unsqueeze(-1)
        out = torch.cat([flag, root_labels, dep.flatten(2), head[:, 1:].flatten(2), arcs], dim=-1)
        # Padding rows carry zeros: nothing there is read, and zeros keep outputs comparable.
        # While exported, always multiplied (the test is a data-dependent branch; times 1 is
        # exact where every position is a word).
        if torch.compiler.is_exporting() or torch._C._is_tracing():
            return out * flag
        return out * flag if not bool(is_word.all()) else out
