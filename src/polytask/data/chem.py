"""RDKit featurisation of molecules given as SMILES: a folded Morgan fingerprint and the 2-D
descriptors of :data:`DESCRIPTORS`. One function (:func:`featurise_smiles`) serves both the
registered MoleculeNet loaders (:mod:`polytask.data.datasets.molecules`) and the ``smiles``
input processor (:mod:`polytask.data.inputs.smiles`), so a molecule gets the same features
whichever way it comes in.

RDKit is an optional dependency (``pip install 'polytask[chem]'``), imported only when a
molecule is featurised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from polytask.errors import DataError
from polytask.progress import long_step

MORGAN_RADIUS = 2
DEFAULT_BITS = 2048
FINGERPRINT_PREFIX = "morgan_"

#: The 2-D descriptors computed for every molecule, in column order. Size, lipophilicity,
#: polarity, hydrogen bonding, flexibility, rings, saturation, charge and stereo: cheap (about
#: 0.3 ms per Tox21 molecule in all) and the usual physico-chemical context for a fingerprint,
#: whose bits say which substructures occur but not how large or polar the molecule is.
#: NumFragments counts the disconnected parts (Tox21 holds salts and mixtures).
DESCRIPTORS: tuple[str, ...] = (
    "MolWt",
    "HeavyAtomCount",
    "MolLogP",
    "MolMR",
    "TPSA",
    "LabuteASA",
    "NumHDonors",
    "NumHAcceptors",
    "NumHeteroatoms",
    "NumRotatableBonds",
    "RingCount",
    "NumAromaticRings",
    "FractionCSP3",
    "NumAtomStereoCenters",
    "FormalCharge",
    "NumFragments",
)


def import_rdkit() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType, ModuleType]:
    """RDKit's modules, or a one-line DataError saying how to install the optional extra."""
    try:
        from rdkit import Chem, rdBase
        from rdkit.Chem import Descriptors, rdFingerprintGenerator, rdMolDescriptors
    except ImportError as exc:
        raise DataError(
            "molecular features need RDKit, which is not installed; "
            "run: pip install 'polytask[chem]'"
        ) from exc
    return Chem, rdBase, Descriptors, rdFingerprintGenerator, rdMolDescriptors


def fingerprint_columns(n_bits: int = DEFAULT_BITS) -> list[str]:
    """Names of the fingerprint columns: ``morgan_0000`` ... (zero-padded, so they sort)."""
    width = len(str(n_bits - 1))
    return [f"{FINGERPRINT_PREFIX}{i:0{width}d}" for i in range(n_bits)]


def _descriptor_functions(
    Chem: ModuleType, Descriptors: ModuleType, rd: ModuleType
) -> list[Callable[[Any], float]]:
    """One function per entry of :data:`DESCRIPTORS`, in the same order."""
    table: dict[str, Callable[[Any], float]] = {
        "MolWt": Descriptors.MolWt,
        "HeavyAtomCount": lambda mol: mol.GetNumHeavyAtoms(),
        "MolLogP": Descriptors.MolLogP,
        "MolMR": Descriptors.MolMR,
        "TPSA": rd.CalcTPSA,
        "LabuteASA": rd.CalcLabuteASA,
        "NumHDonors": rd.CalcNumHBD,
        "NumHAcceptors": rd.CalcNumHBA,
        "NumHeteroatoms": rd.CalcNumHeteroatoms,
        # RDKit's default (strict) definition, as Descriptors.NumRotatableBonds: the non-strict
        # one is 4x cheaper (0.1 s instead of 0.5 s on Tox21) but counts amide C-N and similar
        # bonds and so differs on a third of the Tox21 molecules, under the same name.
        "NumRotatableBonds": rd.CalcNumRotatableBonds,
        "RingCount": rd.CalcNumRings,
        "NumAromaticRings": rd.CalcNumAromaticRings,
        "FractionCSP3": rd.CalcFractionCSP3,
        "NumAtomStereoCenters": rd.CalcNumAtomStereoCenters,
        "FormalCharge": Chem.GetFormalCharge,
        "NumFragments": lambda mol: len(Chem.GetMolFrags(mol)),
    }
    return [table[name] for name in DESCRIPTORS]


@dataclass
class MoleculeFeatures:
    """Features of a list of SMILES, one row per SMILES in input order.

    Attributes:
        bits: uint8 ``[N, n_bits]`` 0/1 Morgan fingerprint (zeros where not parsed).
        descriptors: float64 ``[N, len(DESCRIPTORS)]`` (``[N, 0]`` when not asked for; NaN
            where not parsed).
        parsed: bool ``[N]``: whether RDKit read the SMILES.
    """

    bits: np.ndarray
    descriptors: np.ndarray
    parsed: np.ndarray

    @property
    def failed(self) -> list[int]:
        """Positions of the SMILES RDKit cannot parse."""
        return [int(i) for i in np.flatnonzero(~self.parsed)]


def featurise_smiles(
    smiles: Sequence[object],
    n_bits: int = DEFAULT_BITS,
    radius: int = MORGAN_RADIUS,
    descriptors: bool = True,
) -> MoleculeFeatures:
    """The Morgan fingerprint (``radius``, folded to ``n_bits``) and, with ``descriptors``,
    the :data:`DESCRIPTORS` of every SMILES; a blank, missing or unparsable one is marked in
    ``parsed`` (RDKit's own log lines about it are suppressed: the caller reports it once)."""
    if n_bits < 1 or radius < 0:
        raise ValueError(f"need n_bits >= 1 and radius >= 0 (got {n_bits}, {radius})")
    Chem, rdBase, Descriptors, rdFingerprintGenerator, rd = import_rdkit()
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    functions = _descriptor_functions(Chem, Descriptors, rd) if descriptors else []
    bits = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    values = np.full((len(smiles), len(functions)), np.nan)
    parsed = np.zeros(len(smiles), dtype=bool)
    blocker = rdBase.BlockLogs()
    try:
        with long_step("featurising molecules", len(smiles), "molecules") as advance:
            for i, text in enumerate(smiles):
                advance(1)
                mol = Chem.MolFromSmiles(text) if isinstance(text, str) and text.strip() else None
                if mol is None:
                    continue
                parsed[i] = True
                bits[i] = generator.GetFingerprintAsNumPy(mol)
                if functions:
                    values[i] = [function(mol) for function in functions]
    finally:
        del blocker
    return MoleculeFeatures(bits, values, parsed)
