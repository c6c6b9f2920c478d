"""The export of molecular-graph models (``smiles`` input with ``features = "graph"``, encoders
``dmpnn`` and ``gin``): what the ONNX graph takes, how it is traced, and the steps a caller
runs before it.

RDKit's parsing and the reading of atom and bond properties have no ONNX operators, so they stay
outside the graph: the graph starts at the padded blocks of small integer codes that the
``smiles`` input produces (:meth:`polytask.data.molgraph.MolGraphStore.padded`, keys
:data:`~polytask.data.molgraph.GRAPH_KEYS`), one row per molecule, padded with zeros to the
largest molecule of the batch. Everything after them is torch and so in the graph: the one-hot
expansion to chemprop's 133 atom and 13 bond features and the flat batch
(:func:`polytask.data.molgraph.unpad`: masks, a cumulative sum, comparisons), the message
passing (``scatter_add`` while exporting, ONNX ``ScatterElements`` with ``reduction="add"``,
opset >= 18; :mod:`polytask.models.mpnn`), pooling and the heads.

The padded atom and bond axes have a dynamic size (:data:`GRAPH_AXES`), like the batch: one
file serves batches of any molecules. The exporters trace with :func:`example_blocks`, small
valid graphs whose sizes differ from each other and from the batch size, so no axis is
specialised to its example (``torch.export`` fixes sizes 0 and 1, and may tie equal ones).

:class:`polytask.export.OnnxPredictor` rebuilds the ``smiles`` input from the file's metadata
and featurises a frame's SMILES column with it (RDKit is then needed where the file is served),
so its predictions equal :meth:`polytask.Predictor.predict`'s, and an unreadable SMILES gives
the same one-line error. :func:`describe` writes the blocks' layout as data
(``polytask.input_processor``), for a client that builds them without polytask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from polytask.data.chem import DESCRIPTORS
from polytask.data.inputs.smiles import SmilesInput
from polytask.data.molgraph import (
    ATOM_DIM,
    BOND_DIM,
    BOND_TYPES,
    CHIRAL_TAGS,
    DEGREES,
    FORMAL_CHARGES,
    GRAPH_KEYS,
    HYBRIDISATIONS,
    MAX_ATOMIC_NUM,
    NUM_HS,
    STEREOS,
)

#: The padded axis (axis 1) of each graph block that has one, by name: every block of atoms
#: shares ``atoms``, every block of directed bonds ``bonds``; both are dynamic in the export.
GRAPH_AXES: dict[str, str] = {
    "atom_codes": "atoms",
    "atom_mass": "atoms",
    "bond_codes": "bonds",
    "bond_ends": "bonds",
}

#: Atoms and undirected bonds of the example molecules the exporters trace with
#: (:func:`example_blocks`): chains, so each has ``atoms - 1`` bonds. The padded widths (4
#: atoms, 6 directed bonds) differ from each other and from the 3 rows, and two molecules are
#: narrower than the padding, so the masks are traced on real padding.
_EXAMPLE_ATOMS = (3, 4, 2)


def example_blocks(rows: int = 3) -> dict[str, Tensor]:
    """Padded graph blocks of ``rows`` small chain molecules (atom and bond codes 0, masses 0.12)
    of different sizes: valid inputs to trace the network with (zeros would be graphs without
    atoms, and widths of 1 would be fixed by ``torch.export``)."""
    atoms = [_EXAMPLE_ATOMS[i % len(_EXAMPLE_ATOMS)] for i in range(rows)]
    width_a = max(atoms)
    width_b = 2 * (width_a - 1)
    atom_codes = torch.zeros((rows, width_a, 7), dtype=torch.int16)
    atom_mass = torch.zeros((rows, width_a), dtype=torch.float32)
    bond_codes = torch.zeros((rows, width_b, 4), dtype=torch.int8)
    bond_ends = torch.zeros((rows, width_b, 2), dtype=torch.int32)
    sizes = torch.zeros((rows, 2), dtype=torch.int32)
    for row, n in enumerate(atoms):
        atom_codes[row, :n, 0] = 5  # carbon (atomic number - 1)
        atom_mass[row, :n] = 0.12
        for k in range(n - 1):  # bond k joins atoms k and k + 1, both directions
            bond_ends[row, 2 * k] = torch.tensor([k, k + 1], dtype=torch.int32)
            bond_ends[row, 2 * k + 1] = torch.tensor([k + 1, k], dtype=torch.int32)
        sizes[row] = torch.tensor([n, 2 * (n - 1)], dtype=torch.int32)
    blocks = (atom_codes, atom_mass, bond_codes, bond_ends, sizes)
    return dict(zip(GRAPH_KEYS, blocks, strict=True))


def _molecule_block(pre: SmilesInput) -> list[str]:
    """The columns of the ``descriptors`` input, in order (empty when there is none)."""
    columns = list(DESCRIPTORS) if pre.p.descriptors else []
    return columns + (["unparsed"] if pre.p.invalid == "missing" else [])


def describe(pre: SmilesInput) -> dict[str, Any]:
    """The graph blocks' layout as data (merged into ``polytask.input_processor``)."""
    p = pre.p
    out: dict[str, Any] = {
        "features": "graph",
        "featuriser": "polytask.data.molgraph.featurise_graphs (RDKit; chemprop v1 atom and "
        "bond features, Yang et al. 2019): polytask and RDKit are needed to build the inputs",
        "parse": "rdkit.Chem.MolFromSmiles(text.strip()); a blank or missing text is unreadable",
        "invalid": p.invalid,
        "padding": "one row per molecule, zeros past its own atoms and bonds; axes 'atoms' and "
        "'bonds' as wide as the largest molecule of the batch (at least 1)",
        "inputs": {
            "atom_codes": "int16[B, atoms, 7]: per atom (RDKit order) the positions of atomic "
            "number, total degree, formal charge, chiral tag, total H count and hybridisation "
            "among 'atom_choices' (the number of choices for any other value), then the "
            "aromatic flag (0/1)",
            "atom_mass": "float32[B, atoms]: atomic mass / 100",
            "bond_codes": "int8[B, bonds, 4]: per directed bond the position of the bond type "
            "among 'bond_choices.type' (4: none of them), conjugated (0/1), in ring (0/1), the "
            "position of the stereo value among 'bond_choices.stereo'",
            "bond_ends": "int32[B, bonds, 2]: begin and end atom (numbered within the molecule); "
            "RDKit bond k gives directed bonds 2k (begin -> end) and 2k + 1 (end -> begin)",
            "graph_sizes": "int32[B, 2]: atoms and directed bonds of each molecule",
        },
        "atom_choices": {
            "atomic_number": f"1..{MAX_ATOMIC_NUM} (position z - 1)",
            "degree": list(DEGREES),
            "formal_charge": list(FORMAL_CHARGES),
            "chiral_tag": list(CHIRAL_TAGS),
            "num_hs": list(NUM_HS),
            "hybridisation": list(HYBRIDISATIONS),
        },
        "bond_choices": {"type": list(BOND_TYPES), "stereo": list(STEREOS)},
        "features_in_graph": {"atom": ATOM_DIM, "bond": BOND_DIM},
    }
    columns = _molecule_block(pre)
    if columns:
        out["inputs"]["descriptors"] = f"float32[B, {len(columns)}]: {', '.join(columns)}"
        out["descriptors"] = {
            "columns": columns,
            "how": "RDKit 2-D descriptors (polytask.data.chem.featurise_smiles), standardised "
            "with polytask.preprocessing -> state.mean / state.std, NaN and inf -> 0"
            if p.descriptors
            else None,
            "unparsed": "1.0 for a SMILES RDKit cannot read (its graph has no atoms), else 0.0"
            if p.invalid == "missing"
            else None,
        }
    return out


def steps(pre: SmilesInput) -> list[str]:
    """The steps in words (``polytask.preprocessing_steps``)."""
    p = pre.p
    unreadable = (
        "an error naming the row"
        if p.invalid == "error"
        else "an empty graph (no atoms: embedding 0) and the 'unparsed' flag set"
    )
    lines = [
        f"smiles: column '{p.column}' parsed by RDKit (blank or unparsable: {unreadable}); "
        "atoms and bonds as small integer codes in chemprop's layout "
        "(polytask.data.molgraph.featurise_graphs; RDKit is needed at the runtime), one row "
        "per molecule padded to the largest of the batch: 'atom_codes' int16[B, atoms, 7], "
        "'atom_mass' float32[B, atoms], 'bond_codes' int8[B, bonds, 4], 'bond_ends' "
        "int32[B, bonds, 2], 'graph_sizes' int32[B, 2] (see polytask.input_processor)",
    ]
    columns = _molecule_block(pre)
    if columns:
        parts = ["RDKit 2-D descriptors standardised with the fitted mean/std, NaN -> 0"]
        parts = (parts if p.descriptors else []) + (
            ["the 'unparsed' flag (1.0 where RDKit cannot read the SMILES)"]
            if p.invalid == "missing"
            else []
        )
        lines.append(
            f"smiles: molecule-level block 'descriptors' float32[B, {len(columns)}]: "
            + ", then ".join(parts)
        )
    lines.append(
        f"in the graph: codes one-hot expanded to {ATOM_DIM} atom and {BOND_DIM} bond features, "
        "the molecules' atoms and directed bonds concatenated, message passing "
        "(ScatterElements, reduction add), pooled per molecule"
        + (", the molecule-level block concatenated" if columns else "")
        + "; then the heads"
    )
    return lines
