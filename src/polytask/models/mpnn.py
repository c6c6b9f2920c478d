"""Message-passing encoders over molecular graphs: the directed MPNN (D-MPNN) and GIN.

Yang et al., "Analyzing Learned Molecular Representations for Property Prediction", J. Chem.
Inf. Model. 59 (2019), the model behind chemprop. Hidden states live on directed bonds, and a
bond's message excludes its own reverse bond, which keeps information from flowing straight
back to where it came from (the "totter" of undirected message passing):

* ``h0_vw = act(W_i [x_v || e_vw])``
* ``m_vw = sum_{k in N(v) \\ w} h_kv`` = (sum of the bonds into ``v``) - ``h_wv``
* ``h_vw <- act(h0_vw + W_m m_vw)``, ``depth - 1`` times (chemprop's count: ``depth`` layers
  of bond states including the first)
* atom states ``h_v = act(W_o [x_v || sum_{k in N(v)} h_kv])``
* molecule embedding: mean (or sum) of its atom states, then optionally molecule-level
  descriptors concatenated after pooling.

Everything is index_add / gather over a :class:`~polytask.data.molgraph.MolGraphBatch`: no
Python loop over molecules, atoms or bonds. :meth:`DMPNN.forward_tensors` takes plain tensors
so the module exports to ONNX.

:class:`GIN` (Xu et al. 2019) is the simpler alternative: atom-centred sum aggregation, no
bond features. Both derive from :class:`GraphEncoder` (descriptor check, pooling, the batch
and tensor entry points).

Registered in :data:`~polytask.models.encoders.ENCODERS` as ``dmpnn`` and ``gin``
(:class:`MolGraphEncoder`), reading the padded graph blocks of the ``smiles`` input with
``features = "graph"`` (:meth:`~polytask.data.molgraph.MolGraphStore.padded`), which
:func:`~polytask.data.molgraph.unpad` turns back into the flat batch on the batch's device.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Schema, Width
from polytask.data.molgraph import ATOM_DIM, BOND_DIM, GRAPH_KEYS, MolGraphBatch, unpad
from polytask.data.spec import InputSpec
from polytask.models.encoders import ENCODERS, Activation, Encoder, Norm, make_activation

Readout = Literal["mean", "sum"]


def _sum_into(index: Tensor, values: Tensor, n: int) -> Tensor:
    """``out[i] = sum of values[j] over index[j] == i``, ``[n, width]``.

    ``index_add`` in torch (2-3x faster than ``scatter_add`` on CPU, measured on Tox21
    batches); ``scatter_add`` while exporting to ONNX (either exporter: dynamo sets the flag
    too), because the TorchScript exporter turns ``index_add`` into a ScatterND that keeps only
    one of the repeated indices (a wrong graph, with just a warning) but ``scatter_add`` into
    ScatterElements with ``reduction="add"`` (opset >= 16; the export writes 18 and up). The
    two paths are equal (tests/test_export_graph.py), so the state dict and outputs do not
    depend on which one ran.
    """
    out = values.new_zeros(n, values.shape[1])
    if torch.onnx.is_in_onnx_export():
        return out.scatter_add(0, index.unsqueeze(1).expand_as(values), values)
    return out.index_add(0, index, values)


class MPNNParams(Schema):
    """Parameters of the D-MPNN encoder (defaults: chemprop's)."""

    hidden: Width = Field(default=300, description="width of the bond and atom hidden states")
    depth: int = Field(
        default=3, ge=1, le=20, description="message-passing steps (layers of bond states)"
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="dropout after each bond and atom update"
    )
    activation: Activation = Field(default="relu", description="non-linearity (tau)")
    readout: Readout = Field(
        default="mean",
        description="pooling of atom states per molecule: mean (size-independent) or sum "
        "(keeps counts, e.g. for additive properties)",
    )
    bias: bool = Field(default=False, description="bias in W_i and W_m (chemprop: none)")
    norm: Norm = Field(
        default="none",
        description="normalisation of the pooled molecule embedding (chemprop's --batch-norm: "
        "batch); 'film' preference conditioning modulates it",
    )


class GraphEncoder(nn.Module):
    """Base of the molecular-graph encoders: a :class:`MolGraphBatch` (plus optional
    molecule-level descriptors ``[n_graphs, n_descriptors]``, concatenated after pooling) to
    embeddings ``[n_graphs, out_dim]``. Subclasses implement :meth:`atom_states`."""

    out_dim: int

    def __init__(self, readout: Readout, n_descriptors: int) -> None:
        super().__init__()
        self.readout = readout
        self.n_descriptors = n_descriptors

    def _set_norm(self, norm: str, width: int) -> None:
        """The normalisation of the pooled embedding (before the descriptors); subclasses call
        it after building their layers, so it is registered, and frozen, as the last layer."""
        self.norm: nn.Module = nn.Identity()
        if norm == "batch":
            self.norm = nn.BatchNorm1d(width)
        elif norm == "layer":
            self.norm = nn.LayerNorm(width)

    def forward(self, batch: MolGraphBatch, descriptors: Tensor | None = None) -> Tensor:
        """Molecule embeddings ``[batch.n_graphs, out_dim]``."""
        return self.forward_tensors(
            batch.atom_features,
            batch.bond_features,
            batch.edge_index,
            batch.reverse,
            batch.graph_of_atom,
            batch.atoms_per_graph,
            descriptors,
        )

    def forward_tensors(
        self,
        atom_features: Tensor,
        bond_features: Tensor,
        edge_index: Tensor,
        reverse: Tensor,
        graph_of_atom: Tensor,
        atoms_per_graph: Tensor,
        descriptors: Tensor | None = None,
    ) -> Tensor:
        """:meth:`forward` on the batch's tensors; ``atoms_per_graph`` (int64 ``[n_graphs]``)
        carries the number of molecules as a shape, so an exported graph keeps it dynamic."""
        name = type(self).__name__
        if descriptors is None and self.n_descriptors:
            raise ValueError(f"this {name} expects {self.n_descriptors} molecule descriptors")
        if descriptors is not None and descriptors.shape[-1] != self.n_descriptors:
            raise ValueError(
                f"descriptors have {descriptors.shape[-1]} columns; "
                f"this {name} expects {self.n_descriptors}"
            )
        states = self.atom_states(atom_features, bond_features, edge_index, reverse)
        pooled: Tensor = self.norm(self.pool(states, graph_of_atom, atoms_per_graph))
        if descriptors is not None:
            pooled = torch.cat([pooled, descriptors.to(pooled.dtype)], dim=1)
        return pooled

    def pool(self, states: Tensor, graph_of_atom: Tensor, atoms_per_graph: Tensor) -> Tensor:
        """Sum or mean of ``states`` ``[N_atoms, width]`` per molecule."""
        pooled = _sum_into(graph_of_atom, states, atoms_per_graph.shape[0])
        if self.readout == "mean":
            # An unparsed SMILES has no atoms: its embedding is 0, not NaN.
            pooled = pooled / atoms_per_graph.clamp(min=1).to(pooled.dtype).unsqueeze(1)
        return pooled

    def atom_states(
        self, atom_features: Tensor, bond_features: Tensor, edge_index: Tensor, reverse: Tensor
    ) -> Tensor:  # pragma: no cover - abstract
        """Per-atom states ``[N_atoms, width]`` that :meth:`pool` reduces per molecule."""
        raise NotImplementedError


class DMPNN(GraphEncoder):
    """D-MPNN encoder (Yang et al. 2019): ``out_dim = hidden + n_descriptors``."""

    def __init__(
        self,
        params: MPNNParams | None = None,
        atom_dim: int = ATOM_DIM,
        bond_dim: int = BOND_DIM,
        n_descriptors: int = 0,
    ) -> None:
        params = params or MPNNParams()
        super().__init__(params.readout, n_descriptors)
        self.params = params
        hidden = params.hidden
        self.W_i = nn.Linear(atom_dim + bond_dim, hidden, bias=params.bias)
        self.W_m = nn.Linear(hidden, hidden, bias=params.bias)
        self.W_o = nn.Linear(atom_dim + hidden, hidden)
        self.act = make_activation(params.activation)
        self.dropout = nn.Dropout(params.dropout)
        self._set_norm(params.norm, hidden)
        self.out_dim = hidden + n_descriptors

    def atom_states(
        self, atom_features: Tensor, bond_features: Tensor, edge_index: Tensor, reverse: Tensor
    ) -> Tensor:
        """``h_v = act(W_o [x_v || sum of the final states of the bonds into v])``."""
        source, target = edge_index[0], edge_index[1]
        n_atoms = atom_features.shape[0]
        h0 = self.W_i(torch.cat([atom_features[source], bond_features], dim=1))
        h = self.dropout(self.act(h0))
        for _ in range(self.params.depth - 1):
            # Sum of the states of the bonds into each atom, then for bond v->w take the sum
            # at v minus the state of w->v (its reverse).
            into = _sum_into(target, h, n_atoms)
            message = into[source] - h[reverse]
            h = self.dropout(self.act(h0 + self.W_m(message)))
        into = _sum_into(target, h, n_atoms)
        states: Tensor = self.dropout(self.act(self.W_o(torch.cat([atom_features, into], dim=1))))
        return states


class GINParams(Schema):
    """Parameters of the GIN encoder."""

    hidden: Width = Field(default=300, description="width of the atom states of each layer")
    depth: int = Field(default=3, ge=1, le=20, description="number of GIN layers")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout after each layer")
    activation: Activation = Field(default="relu", description="non-linearity of the MLPs")
    readout: Readout = Field(
        default="sum",
        description="pooling of atom states per molecule: sum (Xu et al.: injective, keeps "
        "counts) or mean",
    )
    learn_eps: bool = Field(
        default=True, description="learn each layer's epsilon (GIN-eps) or fix it at 0 (GIN-0)"
    )
    norm: Norm = Field(
        default="none",
        description="normalisation of the pooled molecule embedding: none, batch or layer; "
        "'film' preference conditioning modulates it",
    )


class GIN(GraphEncoder):
    """Graph isomorphism network (Xu et al., "How Powerful are Graph Neural Networks?", ICLR
    2019) over the atoms: ``h_v <- MLP((1 + eps) h_v + sum_{u in N(v)} h_u)`` per layer, a
    2-layer MLP each, and the molecule embedding the concatenation of every layer's pooled
    states (the paper's readout, eq. 4.2): ``out_dim = hidden * depth + n_descriptors``.

    Bond features are not used (the original GIN has none); the D-MPNN is the encoder that
    reads them. No batch normalisation inside the MLPs, unlike the paper, so one molecule gives
    the same embedding alone as in any batch.
    """

    def __init__(
        self, params: GINParams | None = None, atom_dim: int = ATOM_DIM, n_descriptors: int = 0
    ) -> None:
        params = params or GINParams()
        super().__init__(params.readout, n_descriptors)
        self.params = params
        widths = [atom_dim] + [params.hidden] * params.depth
        # One module per layer holding its MLP and its epsilon, so that freezing and layer-wise
        # learning rates (polytask.train.freeze) see each GIN layer as one block.
        self.layers = nn.ModuleList(_GINLayer(widths[i], params) for i in range(params.depth))
        self._set_norm(params.norm, params.hidden * params.depth)
        self.out_dim = params.hidden * params.depth + n_descriptors

    def atom_states(
        self, atom_features: Tensor, bond_features: Tensor, edge_index: Tensor, reverse: Tensor
    ) -> Tensor:
        """Every layer's atom states side by side, ``[N_atoms, hidden * depth]``: pooling the
        concatenation equals concatenating the per-layer poolings."""
        source, target = edge_index[0], edge_index[1]
        h = atom_features
        states = []
        for layer in self.layers:
            assert isinstance(layer, _GINLayer)
            neighbours = _sum_into(target, h[source], h.shape[0])
            h = layer(h, neighbours)
            states.append(h)
        return torch.cat(states, dim=1)


class _GINLayer(nn.Module):
    """One GIN layer: ``h_v <- MLP((1 + eps) h_v + sum_{u in N(v)} h_u)``."""

    def __init__(self, in_dim: int, params: GINParams) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, params.hidden),
            make_activation(params.activation),
            nn.Linear(params.hidden, params.hidden),
            make_activation(params.activation),
            nn.Dropout(params.dropout),
        )
        self.eps = nn.Parameter(torch.zeros(()), requires_grad=params.learn_eps)

    def forward(self, h: Tensor, neighbours: Tensor) -> Tensor:
        out: Tensor = self.mlp((1 + self.eps) * h + neighbours)
        return out


class MolGraphEncoder(Encoder):
    """A :class:`GraphEncoder` as a polytask encoder: ``forward(inputs)`` reads the padded
    graph blocks of the ``smiles`` input (``features = "graph"``) and its optional
    ``descriptors`` block, and returns molecule embeddings ``[B, out_dim]``."""

    def __init__(self, graph: GraphEncoder) -> None:
        super().__init__()
        self.graph = graph
        self.out_dim = graph.out_dim

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        missing = [k for k in GRAPH_KEYS if k not in inputs]
        if missing:
            raise ValueError(
                f"{type(self.graph).__name__} reads molecular graphs (data.input = smiles with "
                f"features = 'graph'); the inputs lack {missing}"
            )
        flat = unpad(*(inputs[k] for k in GRAPH_KEYS))
        return self.graph.forward_tensors(*flat, inputs.get("descriptors"))


@ENCODERS.register(
    "dmpnn",
    params=MPNNParams,
    summary="molecular graphs: directed message passing (D-MPNN, chemprop) + descriptors",
)
def build_dmpnn(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, MPNNParams)
    spec.require("graph", "dmpnn")
    return MolGraphEncoder(DMPNN(params, n_descriptors=spec.n_numeric))


@ENCODERS.register(
    "gin", params=GINParams, summary="molecular graphs: graph isomorphism network (GIN)"
)
def build_gin(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, GINParams)
    spec.require("graph", "gin")
    return MolGraphEncoder(GIN(params, n_descriptors=spec.n_numeric))
