"""Molecular graphs from SMILES for message-passing encoders (:mod:`polytask.models.mpnn`).

Atom and bond features follow chemprop v1 (Yang et al., "Analyzing Learned Molecular
Representations for Property Prediction", J. Chem. Inf. Model. 59, 2019, table 1):

* atom (:data:`ATOM_DIM` = 133): one-hot atomic number (1..100, plus "other"), total degree
  (0..5 + other), formal charge (-1, -2, 1, 2, 0 + other), chiral tag (0..3 + other), total
  number of hydrogens (0..4 + other), hybridisation (SP, SP2, SP3, SP3D, SP3D2 + other),
  aromatic flag, mass / 100;
* bond (:data:`BOND_DIM` = 13): one-hot bond type (single, double, triple, aromatic),
  conjugated flag, in-ring flag, one-hot stereo (0..5 + other). chemprop's 14th entry, a "no
  bond" flag, only marks its padding rows and is always 0 on a real bond, so it is omitted.

Each undirected bond ``k`` of a molecule becomes two directed bonds: ``2k`` (begin -> end atom)
and ``2k + 1`` (end -> begin), so the reverse of directed bond ``i`` is ``i ^ 1``. Because every
molecule holds an even number of directed bonds, that stays true after batching, and a batch's
``reverse`` is computed, never stored.

A dataset is featurised once into a :class:`MolGraphStore` (RDKit runs once per molecule):
small integer codes per atom and bond, concatenated over molecules, with per-molecule offsets.
:meth:`MolGraphStore.gather` builds the batch of any list of rows with numpy fancy indexing
and one-hot expansion only, so the training loop runs no per-molecule Python.

**Padded layout (what the ``smiles`` input hands the trainer).** polytask's in-memory batches
are ``index_select`` calls on per-example tensors (:mod:`polytask.data.tensors`), which also
move to a device, shard across ranks and pin memory as they are. :meth:`MolGraphStore.padded`
therefore lays each molecule's codes out in one row of fixed-width blocks (:data:`GRAPH_KEYS`:
atom codes ``[M, A, 7]``, masses ``[M, A]``, bond codes ``[M, B, 4]``, bond ends ``[M, B, 2]``
numbered within the molecule, and the sizes ``[M, 2]``), padded to the largest molecule of the
table; the codes are small integers, so Tox21's 7,831 molecules take 11 MB. An encoder turns a
batch of such rows back into flat index tensors with :func:`unpad` (boolean masks, a cumulative
sum and comparisons: torch only, on the batch's device, and exportable to ONNX).

RDKit is an optional dependency, imported (through :func:`polytask.data.chem.import_rdkit`)
only when SMILES are featurised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polytask.data.chem import import_rdkit
from polytask.errors import DataError
from polytask.progress import long_step

#: Atomic numbers with their own one-hot entry (chemprop: the first 100 elements).
MAX_ATOMIC_NUM = 100
DEGREES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
#: chemprop's order; any other charge goes to the "other" entry.
FORMAL_CHARGES: tuple[int, ...] = (-1, -2, 1, 2, 0)
CHIRAL_TAGS: tuple[int, ...] = (0, 1, 2, 3)
NUM_HS: tuple[int, ...] = (0, 1, 2, 3, 4)
#: Names of RDKit's ``HybridizationType`` values, resolved when RDKit is imported.
HYBRIDISATIONS: tuple[str, ...] = ("SP", "SP2", "SP3", "SP3D", "SP3D2")
BOND_TYPES: tuple[str, ...] = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
STEREOS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)

#: Width of each one-hot block of the atom features, in order (each has an "other" entry),
#: then the aromatic flag and the scaled mass.
ATOM_BLOCKS: tuple[int, ...] = (
    MAX_ATOMIC_NUM + 1,
    len(DEGREES) + 1,
    len(FORMAL_CHARGES) + 1,
    len(CHIRAL_TAGS) + 1,
    len(NUM_HS) + 1,
    len(HYBRIDISATIONS) + 1,
)
ATOM_DIM = sum(ATOM_BLOCKS) + 2
#: Width of each one-hot block of the bond features: type (no "other": RDKit's dative and
#: similar rare types get an all-zero block), stereo (with "other"); plus 2 flags in between.
BOND_TYPE_WIDTH = len(BOND_TYPES)
STEREO_WIDTH = len(STEREOS) + 1
BOND_DIM = BOND_TYPE_WIDTH + 2 + STEREO_WIDTH

# Columns of MolGraphStore.atom_codes / bond_codes.
_ATOMIC, _DEGREE, _CHARGE, _CHIRAL, _HS, _HYBRID, _AROMATIC = range(7)
_BTYPE, _CONJ, _RING, _STEREO = range(4)

#: The per-example tensors of the padded layout (:meth:`MolGraphStore.padded`), in the order
#: :func:`unpad` takes them.
GRAPH_KEYS: tuple[str, ...] = ("atom_codes", "atom_mass", "bond_codes", "bond_ends", "graph_sizes")


def _lookup(values: np.ndarray, choices: Sequence[int]) -> np.ndarray:
    """Position of each value in ``choices``, or ``len(choices)`` (the "other" entry)."""
    codes = np.full(len(values), len(choices), dtype=np.int16)
    for position, choice in enumerate(choices):  # a handful of choices, vectorised over values
        codes[values == choice] = position
    return codes


@dataclass
class MolGraphBatch:
    """A batch of molecular graphs as flat index tensors (atoms and directed bonds of all
    molecules concatenated).

    Attributes:
        atom_features: float32 ``[N_atoms, ATOM_DIM]``.
        bond_features: float32 ``[N_bonds_directed, BOND_DIM]``.
        edge_index: int64 ``[2, N_bonds_directed]``: source and target atom of each bond.
        reverse: int64 ``[N_bonds_directed]``: index of the reverse directed bond.
        graph_of_atom: int64 ``[N_atoms]``: the molecule (0 .. n_graphs-1) of each atom.
        n_graphs: number of molecules (a molecule may have no atoms: an unparsed SMILES).
    """

    atom_features: Tensor
    bond_features: Tensor
    edge_index: Tensor
    reverse: Tensor
    graph_of_atom: Tensor
    n_graphs: int

    @property
    def atoms_per_graph(self) -> Tensor:
        """int64 ``[n_graphs]``: the number of atoms of each molecule."""
        return torch.bincount(self.graph_of_atom, minlength=self.n_graphs)

    def to(self, device: torch.device | str) -> MolGraphBatch:
        """The same batch on ``device``."""
        return MolGraphBatch(
            self.atom_features.to(device),
            self.bond_features.to(device),
            self.edge_index.to(device),
            self.reverse.to(device),
            self.graph_of_atom.to(device),
            self.n_graphs,
        )


@dataclass
class MolGraphStore:
    """Graphs of a whole dataset as concatenated integer codes plus per-molecule offsets.

    Attributes:
        atom_codes: int16 ``[N_atoms, 7]``: per atom the one-hot positions of atomic number,
            degree, formal charge, chiral tag, number of Hs, hybridisation, and the aromatic
            flag (0/1).
        atom_mass: float32 ``[N_atoms]``: atomic mass / 100.
        bond_codes: int8 ``[N_bonds_directed, 4]``: bond type position (``BOND_TYPE_WIDTH``
            for none of them), conjugated, in ring, stereo position.
        edge_index: int32 ``[2, N_bonds_directed]``: endpoints, numbered within the molecule.
        atom_offsets: int64 ``[M + 1]``: the atoms of molecule ``i`` are
            ``atom_offsets[i]:atom_offsets[i + 1]``.
        bond_offsets: int64 ``[M + 1]``: the same for directed bonds (always even).
        parsed: bool ``[M]``: whether RDKit read the SMILES (an unparsed one has no atoms).
    """

    atom_codes: np.ndarray
    atom_mass: np.ndarray
    bond_codes: np.ndarray
    edge_index: np.ndarray
    atom_offsets: np.ndarray
    bond_offsets: np.ndarray
    parsed: np.ndarray

    def __len__(self) -> int:
        return len(self.parsed)

    @property
    def failed(self) -> list[int]:
        """Positions of the SMILES RDKit cannot parse."""
        return [int(i) for i in np.flatnonzero(~self.parsed)]

    def gather(self, rows: Sequence[int] | np.ndarray) -> MolGraphBatch:
        """The batch of molecules ``rows`` (in that order, repeats allowed), by fancy indexing."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"molecule rows must lie in 0..{len(self) - 1}")
        atoms = _ranges(self.atom_offsets[rows], self.atom_offsets[rows + 1])
        bonds = _ranges(self.bond_offsets[rows], self.bond_offsets[rows + 1])
        n_atoms = self.atom_offsets[rows + 1] - self.atom_offsets[rows]
        n_bonds = self.bond_offsets[rows + 1] - self.bond_offsets[rows]
        # Where each molecule's atoms start in the batch, added to its molecule-local indices.
        start = np.cumsum(n_atoms) - n_atoms
        edges = self.edge_index[:, bonds].astype(np.int64) + np.repeat(start, n_bonds)
        n_directed = int(n_bonds.sum())
        return MolGraphBatch(
            atom_features=torch.from_numpy(
                encode_atoms(self.atom_codes[atoms], self.atom_mass[atoms])
            ),
            bond_features=torch.from_numpy(encode_bonds(self.bond_codes[bonds])),
            edge_index=torch.from_numpy(edges),
            # Bonds 2k and 2k+1 are each other's reverse, and every offset is even.
            reverse=torch.from_numpy(np.arange(n_directed, dtype=np.int64) ^ 1),
            graph_of_atom=torch.from_numpy(np.repeat(np.arange(len(rows)), n_atoms)),
            n_graphs=len(rows),
        )

    def all(self) -> MolGraphBatch:
        """The batch of every molecule, in order."""
        return self.gather(np.arange(len(self)))

    def padded(self) -> dict[str, np.ndarray]:
        """Every molecule as one row of padded blocks (keys :data:`GRAPH_KEYS`; see the module
        docstring), at least one atom and one bond wide so no block has a zero-width axis.

        ``graph_sizes[i]`` is (atoms, directed bonds) of molecule ``i``; entries past them are
        zeros and never read. Built by fancy indexing, no loop over molecules.
        """
        n = len(self)
        n_atoms = np.diff(self.atom_offsets)
        n_bonds = np.diff(self.bond_offsets)
        width_a = max(1, int(n_atoms.max(initial=0)))
        width_b = max(1, int(n_bonds.max(initial=0)))
        # Row and within-molecule position of every atom (bond) of the concatenation.
        atom_row = np.repeat(np.arange(n), n_atoms)
        atom_pos = np.arange(len(atom_row)) - self.atom_offsets[atom_row]
        bond_row = np.repeat(np.arange(n), n_bonds)
        bond_pos = np.arange(len(bond_row)) - self.bond_offsets[bond_row]
        atom_codes = np.zeros((n, width_a, self.atom_codes.shape[1]), dtype=np.int16)
        atom_codes[atom_row, atom_pos] = self.atom_codes
        atom_mass = np.zeros((n, width_a), dtype=np.float32)
        atom_mass[atom_row, atom_pos] = self.atom_mass
        bond_codes = np.zeros((n, width_b, self.bond_codes.shape[1]), dtype=np.int8)
        bond_codes[bond_row, bond_pos] = self.bond_codes
        bond_ends = np.zeros((n, width_b, 2), dtype=np.int32)
        bond_ends[bond_row, bond_pos] = self.edge_index.T
        sizes = np.stack([n_atoms, n_bonds], axis=1).astype(np.int32)
        return dict(
            zip(GRAPH_KEYS, (atom_codes, atom_mass, bond_codes, bond_ends, sizes), strict=True)
        )

    def save(self, path: Path) -> None:
        """Write the store to ``path`` (an uncompressed ``.npz``: loading is a plain read, so
        a dataset is featurised by RDKit once)."""
        with open(path, "wb") as handle:  # a file object: np.savez would append ".npz"
            np.savez(handle, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> MolGraphStore:
        """A store written by :meth:`save`; a DataError naming the file and the missing
        arrays if it is not one."""
        names = [f.name for f in fields(cls)]
        try:
            with np.load(path, allow_pickle=False) as arrays:
                missing = [n for n in names if n not in arrays.files]
                if not missing:
                    return cls(**{n: arrays[n] for n in names})
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a molecular graph store ({exc})") from exc
        raise DataError(f"{path}: not a molecular graph store (missing arrays: {missing})")


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, b) for a, b in zip(starts, stops)])`` without a Python loop."""
    lengths = stops - starts
    total = int(lengths.sum())
    # Position within the output minus where each range begins in it, plus the range's start.
    begins = np.cumsum(lengths) - lengths
    out: np.ndarray = np.arange(total, dtype=np.int64) - np.repeat(begins - starts, lengths)
    return out


def _one_hot(codes: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(codes), width), dtype=np.float32)
    valid = codes < width  # a bond type outside BOND_TYPES has code == width: all zeros
    out[np.flatnonzero(valid), codes[valid].astype(np.int64)] = 1.0
    return out


def encode_atoms(codes: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """float32 ``[n, ATOM_DIM]`` atom features from :attr:`MolGraphStore.atom_codes` rows."""
    blocks = [_one_hot(codes[:, col], width) for col, width in enumerate(ATOM_BLOCKS)]
    blocks.append(codes[:, _AROMATIC : _AROMATIC + 1].astype(np.float32))
    blocks.append(mass.astype(np.float32)[:, None])
    return np.concatenate(blocks, axis=1)


def encode_bonds(codes: np.ndarray) -> np.ndarray:
    """float32 ``[n, BOND_DIM]`` bond features from :attr:`MolGraphStore.bond_codes` rows."""
    return np.concatenate(
        [
            _one_hot(codes[:, _BTYPE], BOND_TYPE_WIDTH),
            codes[:, _CONJ : _RING + 1].astype(np.float32),
            _one_hot(codes[:, _STEREO], STEREO_WIDTH),
        ],
        axis=1,
    )


def _offsets(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def featurise_graphs(smiles: Sequence[object]) -> MolGraphStore:
    """The graphs of every SMILES as one :class:`MolGraphStore`, in input order; a blank,
    missing or unparsable SMILES gets an empty graph and ``parsed`` False (RDKit's own log lines
    about it are suppressed, as in :func:`polytask.data.chem.featurise_smiles`)."""
    Chem, rdBase, *_ = import_rdkit()
    blocker = rdBase.BlockLogs()
    try:
        mols = [
            Chem.MolFromSmiles(text) if isinstance(text, str) and text.strip() else None
            for text in smiles
        ]
    finally:
        del blocker
    return featurise_mols(mols)


def featurise_mols(mols: Sequence[Any]) -> MolGraphStore:
    """The graphs of RDKit molecules (``None`` for one that could not be read: an empty graph
    and ``parsed`` False), atoms in the molecules' own order.

    Python touches each atom and bond once, to read RDKit's raw values into flat lists; the
    mapping to one-hot positions runs in numpy over the whole dataset (twice as fast as
    mapping atom by atom).
    """
    Chem, *_ = import_rdkit()
    hybrid = [int(getattr(Chem.rdchem.HybridizationType, n)) for n in HYBRIDISATIONS]
    btype = [int(getattr(Chem.rdchem.BondType, n)) for n in BOND_TYPES]
    atom_rows: list[tuple[int, int, int, int, int, int, bool, float]] = []
    bond_rows: list[tuple[int, bool, bool, int, int, int]] = []
    n_atoms: list[int] = []
    n_bonds: list[int] = []
    with long_step("building molecular graphs", len(mols), "molecules") as advance:
        for mol in mols:
            advance(1)
            if mol is None:
                n_atoms.append(0)
                n_bonds.append(0)
                continue
            atoms = list(map(mol.GetAtomWithIdx, range(mol.GetNumAtoms())))
            atom_rows += [
                (
                    a.GetAtomicNum(),
                    a.GetTotalDegree(),
                    a.GetFormalCharge(),
                    int(a.GetChiralTag()),
                    a.GetTotalNumHs(),
                    int(a.GetHybridization()),
                    a.GetIsAromatic(),
                    a.GetMass(),
                )
                for a in atoms
            ]
            bonds = list(map(mol.GetBondWithIdx, range(mol.GetNumBonds())))
            bond_rows += [
                (
                    int(b.GetBondType()),
                    b.GetIsConjugated(),
                    b.IsInRing(),
                    int(b.GetStereo()),
                    b.GetBeginAtomIdx(),
                    b.GetEndAtomIdx(),
                )
                for b in bonds
            ]
            n_atoms.append(len(atoms))
            n_bonds.append(2 * len(bonds))
    raw = np.array(atom_rows, dtype=np.float64).reshape(-1, 8)
    z = raw[:, 0].astype(np.int64)
    atom_codes = np.stack(
        [
            # Atomic number z has position z - 1 (H = 0); 0 (a dummy atom "*") and any z > 100
            # go to "other".
            np.where((z >= 1) & (z <= MAX_ATOMIC_NUM), z - 1, MAX_ATOMIC_NUM).astype(np.int16),
            _lookup(raw[:, 1], DEGREES),
            _lookup(raw[:, 2], FORMAL_CHARGES),
            _lookup(raw[:, 3], CHIRAL_TAGS),
            _lookup(raw[:, 4], NUM_HS),
            _lookup(raw[:, 5], hybrid),
            raw[:, 6].astype(np.int16),
        ],
        axis=1,
    )
    braw = np.array(bond_rows, dtype=np.int64).reshape(-1, 6)
    undirected = np.stack(
        [_lookup(braw[:, 0], btype), braw[:, 1], braw[:, 2], _lookup(braw[:, 3], STEREOS)],
        axis=1,
    ).astype(np.int8)
    # Directed bond 2k: begin -> end; 2k + 1: end -> begin (same features).
    ends = braw[:, 4:6].astype(np.int32)
    edges = np.stack([ends, ends[:, ::-1]], axis=1).reshape(-1, 2).T
    return MolGraphStore(
        atom_codes=atom_codes,
        atom_mass=(raw[:, 7] / 100.0).astype(np.float32),
        bond_codes=np.repeat(undirected, 2, axis=0),
        edge_index=np.ascontiguousarray(edges),
        atom_offsets=_offsets(n_atoms),
        bond_offsets=_offsets(n_bonds),
        parsed=np.array([mol is not None for mol in mols], dtype=bool),
    )


def concat_stores(stores: Sequence[MolGraphStore]) -> MolGraphStore:
    """One store holding the molecules of ``stores`` in order (e.g. per-molecule stores, or
    the shards of a dataset featurised in parts)."""
    if not stores:
        return featurise_mols([])

    def offsets(name: str) -> np.ndarray:
        parts = [getattr(s, name) for s in stores]
        shift = np.cumsum([0] + [int(p[-1]) for p in parts[:-1]])
        return np.concatenate(
            [parts[0][:1]] + [p[1:] + d for p, d in zip(parts, shift, strict=True)]
        )

    return MolGraphStore(
        atom_codes=np.concatenate([s.atom_codes for s in stores]),
        atom_mass=np.concatenate([s.atom_mass for s in stores]),
        bond_codes=np.concatenate([s.bond_codes for s in stores]),
        edge_index=np.concatenate([s.edge_index for s in stores], axis=1),
        atom_offsets=offsets("atom_offsets"),
        bond_offsets=offsets("bond_offsets"),
        parsed=np.concatenate([s.parsed for s in stores]),
    )


def batch_graphs(graphs: Sequence[MolGraphStore]) -> MolGraphBatch:
    """One batch of the molecules of ``graphs`` (each a store, typically of one molecule, as
    :func:`featurise_graphs` gives for one SMILES), with atom offsets added by numpy."""
    return concat_stores(graphs).all()


def _one_hot_torch(codes: Tensor, width: int) -> Tensor:
    """float ``[n, width]``; a code outside ``0..width-1`` gives a zero row (as
    :func:`_one_hot`). A comparison, not ``scatter``: it exports to ONNX as it is."""
    return (codes.unsqueeze(1) == torch.arange(width, device=codes.device)).float()


def unpad(
    atom_codes: Tensor, atom_mass: Tensor, bond_codes: Tensor, bond_ends: Tensor, sizes: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A batch of padded rows (:meth:`MolGraphStore.padded`, any rows in any order) as the
    flat tensors of a :class:`MolGraphBatch`: ``(atom_features, bond_features, edge_index,
    reverse, graph_of_atom, atoms_per_graph)``, equal to :meth:`MolGraphStore.gather` of the
    same molecules. Torch only, so it runs on the batch's device."""
    rows, width_a = atom_codes.shape[0], atom_codes.shape[1]
    width_b = bond_codes.shape[1]
    n_atoms = sizes[:, 0].long()
    n_bonds = sizes[:, 1].long()
    atom_mask = torch.arange(width_a, device=sizes.device).unsqueeze(0) < n_atoms.unsqueeze(1)
    bond_mask = torch.arange(width_b, device=sizes.device).unsqueeze(0) < n_bonds.unsqueeze(1)
    codes = atom_codes[atom_mask].long()
    blocks = [_one_hot_torch(codes[:, col], w) for col, w in enumerate(ATOM_BLOCKS)]
    blocks.append(codes[:, _AROMATIC : _AROMATIC + 1].float())
    blocks.append(atom_mass[atom_mask].float().unsqueeze(1))
    atom_features = torch.cat(blocks, dim=1)
    bcodes = bond_codes[bond_mask].long()
    bond_features = torch.cat(
        [
            _one_hot_torch(bcodes[:, _BTYPE], BOND_TYPE_WIDTH),
            bcodes[:, _CONJ : _RING + 1].float(),
            _one_hot_torch(bcodes[:, _STEREO], STEREO_WIDTH),
        ],
        dim=1,
    )
    # Each molecule's atoms start after those of the rows before it in the batch.
    start = torch.cumsum(n_atoms, 0) - n_atoms
    edge_index = (bond_ends.long() + start.view(-1, 1, 1))[bond_mask].t()
    # Every molecule holds an even number of directed bonds, 2k and 2k + 1 reverse each other:
    # i ^ 1, in arithmetic (the TorchScript ONNX exporter has no XOR of integers).
    position = torch.arange(bcodes.shape[0], device=sizes.device)
    reverse = position + 1 - 2 * (position % 2)
    graph_of_atom = torch.arange(rows, device=sizes.device).unsqueeze(1).expand(rows, width_a)
    return (
        atom_features,
        bond_features,
        edge_index,
        reverse,
        graph_of_atom[atom_mask],
        n_atoms,
    )
