"""``smiles``: molecules from the user's own table, one SMILES string per row, as a Morgan
fingerprint (and optionally RDKit's 2-D descriptors): the featurisation of the registered
Tox21/QM8 loaders (:func:`polytask.data.chem.featurise_smiles`), for any table.

``[data] input = {name = "smiles", column = "smiles", radius = 2, bits = 2048}`` gives the
``mlp`` encoder ``bits`` 0/1 columns (plus the standardised descriptors with ``descriptors =
true``). A SMILES RDKit cannot read is a one-line error naming its row, or with ``invalid =
"missing"`` an all-zero row with an ``unparsed`` flag column set. With ``cache_dir`` the
features of a table are kept on disk, one ``.npz`` per (hash of the SMILES list, settings),
so the same molecules are never featurised twice.

``features = "graph"`` gives the molecular graphs instead, for the message-passing encoders
(``dmpnn``, ``gin``; :mod:`polytask.models.mpnn`): RDKit atom and bond features in chemprop's
layout (:mod:`polytask.data.molgraph`), as per-example padded blocks of small integer codes
(:data:`~polytask.data.molgraph.GRAPH_KEYS`), so a training batch is still ``index_select`` on
in-memory tensors and the encoder rebuilds the flat graph on the batch's device. Molecule-level
features (the standardised descriptors with ``descriptors = true``, the ``unparsed`` flag with
``invalid = "missing"``) come as a ``descriptors`` block that the encoder concatenates after
pooling. The graphs are cached like the fingerprints (``cache_dir``), and the last table's
graphs are kept in memory, so fitting and then transforming the training rows parses them once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from torch import Tensor

from polytask.config_errors import Schema
from polytask.data.chem import DESCRIPTORS, MoleculeFeatures, featurise_smiles
from polytask.data.inputs.base import INPUTS, InputProcessor, StoredState, parse_state
from polytask.data.molgraph import MolGraphStore, featurise_graphs
from polytask.data.spec import InputSpec
from polytask.errors import DataError, PolytaskError
from polytask.safe_read import regular_file


class SmilesParams(Schema):
    """Parameters of the ``smiles`` input."""

    column: str = Field(default="smiles", min_length=1, description="column of SMILES strings")
    features: Literal["fingerprint", "graph"] = Field(
        default="fingerprint",
        description="fingerprint: Morgan bits for the mlp encoder; graph: molecular graphs "
        "(RDKit atom/bond features, chemprop's layout) for the dmpnn and gin encoders",
    )
    radius: int = Field(
        default=2, ge=0, le=8, description="Morgan radius (2 gives ECFP4); fingerprint only"
    )
    bits: int = Field(
        default=2048,
        ge=8,
        le=16384,
        description="length of the folded Morgan fingerprint; fingerprint only",
    )
    descriptors: bool = Field(
        default=False,
        description="add RDKit's 2-D descriptors (molecular weight, logP, TPSA, ...), "
        "standardised on the training rows",
    )
    invalid: Literal["error", "missing"] = Field(
        default="error",
        description="a SMILES RDKit cannot parse: an error naming the row, or 'missing': "
        "all-zero features and the 'unparsed' flag column set",
    )
    cache_dir: str | None = Field(
        default=None,
        description="folder keeping the features of each table (one .npz per hash of the "
        "SMILES list and settings), so no molecule list is featurised twice",
    )
    #: The cache folder is this machine's setting, never saved with a model.
    local_params: ClassVar[frozenset[str]] = frozenset({"cache_dir"})


class SmilesState(StoredState):
    """What the ``smiles`` input fits: the descriptors' training mean and scale."""

    mean: list[float]
    std: list[float]


def smiles_of(df: pd.DataFrame, column: str) -> list[str | None]:
    """The column's cells as SMILES text (None where missing or blank)."""
    out: list[str | None] = []
    for value in df[column].astype(object):
        text = value.strip() if isinstance(value, str) else None
        out.append(text or None)
    return out


def smiles_digest(smiles: list[str | None]) -> str:
    """A hash of the SMILES list (order and blanks included): the key of its cached features."""
    digest = hashlib.sha256()
    for text in smiles:
        digest.update(b"\x00" if text is None else text.encode("utf-8") + b"\x01")
    return digest.hexdigest()[:32]


class FeatureCache:
    """The features of one list of SMILES under one setting, kept as ``{folder}/{name}.npz``
    (packed fingerprint bits, descriptors, parsed flags); written through a temporary file
    and a rename, so a reader never sees a torn file."""

    def __init__(self, folder: Path, smiles: list[str | None], settings: str) -> None:
        self.path = folder / f"smiles-{smiles_digest(smiles)}-{settings}.npz"
        self.n = len(smiles)

    def get(self, n_bits: int, n_descriptors: int) -> MoleculeFeatures | None:
        if not os.path.lexists(self.path):
            return None
        regular_file(self.path)
        try:
            with np.load(self.path, allow_pickle=False) as data:
                packed, values, parsed = data["bits"], data["descriptors"], data["parsed"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise PolytaskError(
                f"'{self.path}' is not a readable SMILES feature cache ({type(exc).__name__}); "
                "delete it to rebuild the cache"
            ) from None
        bits = np.unpackbits(packed, axis=1, count=n_bits) if packed.ndim == 2 else packed
        if not (
            bits.shape == (self.n, n_bits)
            and values.shape == (self.n, n_descriptors)
            and values.dtype == np.float64
            and parsed.shape == (self.n,)
            and parsed.dtype == np.bool_
        ):
            raise PolytaskError(
                f"'{self.path}' does not hold the features of this table's SMILES; delete it "
                "to rebuild the cache"
            )
        return MoleculeFeatures(bits.astype(np.uint8), values, parsed)

    def put(self, features: MoleculeFeatures) -> None:
        partial = self.path.with_name(f".{self.path.stem}.{os.getpid()}.part.npz")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                partial,
                bits=np.packbits(features.bits, axis=1),
                descriptors=features.descriptors,
                parsed=features.parsed,
            )
            partial.replace(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise PolytaskError(
                f"cannot write the SMILES feature cache '{self.path}': {exc.strerror or exc}"
            ) from None


#: Version of the graph featurisation in the cache file names: bump it when
#: :mod:`polytask.data.molgraph` changes what it computes, so stale caches are not read.
GRAPH_CACHE_VERSION = "graph1"


def cached_graphs(folder: Path, smiles: list[str | None]) -> MolGraphStore:
    """The graphs of ``smiles``, read from ``folder`` if featurised before, else featurised
    and written there (through a temporary file and a rename, as :class:`FeatureCache`)."""
    path = folder / f"smiles-{smiles_digest(smiles)}-{GRAPH_CACHE_VERSION}.npz"
    if os.path.lexists(path):
        regular_file(path)
        try:
            store = MolGraphStore.load(path)
        except DataError:
            raise PolytaskError(
                f"'{path}' is not a readable molecular graph cache; delete it to rebuild the cache"
            ) from None
        if len(store) != len(smiles):
            raise PolytaskError(
                f"'{path}' does not hold the graphs of this table's SMILES; delete it to "
                "rebuild the cache"
            )
        return store
    store = featurise_graphs(smiles)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.part.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        store.save(partial)
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise PolytaskError(
            f"cannot write the SMILES feature cache '{path}': {exc.strerror or exc}"
        ) from None
    return store


class SmilesInput(InputProcessor):
    """SMILES -> ``{"numeric": float32[N, bits (+ descriptors) (+ 1)]}``: the Morgan bits as
    0/1, the descriptors standardised with the training rows' mean and scale, and with
    ``invalid = "missing"`` a last column flagging the rows RDKit could not read.

    With ``features = "graph"``: the padded graph blocks of :meth:`MolGraphStore.padded`
    instead of the bits, and the descriptors (and flag) as ``{"descriptors": float32[N, d]}``
    when there are any."""

    name = "smiles"

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, SmilesParams)
        super().__init__(params)
        self.p = params
        self.mean: list[float] = []
        self.std: list[float] = []
        # The graphs of the last table seen (its SMILES hash and store): fit and transform of
        # the training rows parse them once.
        self._graphs: tuple[str, MolGraphStore] | None = None

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    @property
    def n_descriptors(self) -> int:
        return len(DESCRIPTORS) if self.p.descriptors else 0

    @property
    def graph(self) -> bool:
        """Whether this input gives molecular graphs (``features = "graph"``)."""
        return self.p.features == "graph"

    @property
    def molecule_width(self) -> int:
        """Width of the molecule-level block: descriptors, then the ``unparsed`` flag."""
        return self.n_descriptors + (1 if self.p.invalid == "missing" else 0)

    @property
    def width(self) -> int:
        return (0 if self.graph else self.p.bits) + self.molecule_width

    def graphs(self, smiles: list[str | None]) -> MolGraphStore:
        """The molecular graphs of ``smiles``: from memory if they are the last table's, else
        from the cache when ``cache_dir`` is set, else featurised by RDKit."""
        key = smiles_digest(smiles)
        if self._graphs is not None and self._graphs[0] == key:
            return self._graphs[1]
        if self.p.cache_dir is None:
            store = featurise_graphs(smiles)
        else:
            store = cached_graphs(Path(self.p.cache_dir).expanduser(), smiles)
        self._graphs = (key, store)
        return store

    def features(self, smiles: list[str | None]) -> MoleculeFeatures:
        """The features of ``smiles``, from the cache when ``cache_dir`` is set."""
        p = self.p
        if self.graph and not p.descriptors:
            # Graph mode without descriptors needs only the parsed flags, from the graphs.
            parsed = self.graphs(smiles).parsed
            n = len(smiles)
            return MoleculeFeatures(np.zeros((n, 0), np.uint8), np.zeros((n, 0)), parsed)
        if p.cache_dir is None:
            return featurise_smiles(smiles, p.bits, p.radius, p.descriptors)
        settings = f"r{p.radius}-b{p.bits}{'-d' if p.descriptors else ''}"
        cache = FeatureCache(Path(p.cache_dir).expanduser(), smiles, settings)
        found = cache.get(p.bits, self.n_descriptors)
        if found is not None:
            return found
        features = featurise_smiles(smiles, p.bits, p.radius, p.descriptors)
        cache.put(features)
        return features

    def _checked(self, df: pd.DataFrame, source: str) -> tuple[MoleculeFeatures, np.ndarray]:
        self.require_columns(df, source)
        smiles = smiles_of(df, self.p.column)
        features = self.features(smiles)
        failed = features.failed
        if failed and self.p.invalid == "error":
            i = failed[0]
            what = (
                "is blank"
                if smiles[i] is None
                else f"holds {smiles[i]!r}, which RDKit cannot parse"
            )
            raise DataError(
                f"{source}: column '{self.p.column}', row {df.index[i]} {what} ({len(failed)} "
                f"of {len(smiles)} rows unreadable); fix them or set data.input.invalid = "
                "'missing'"
            )
        return features, features.parsed

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        features, parsed = self._checked(train, source)
        if not self.p.descriptors:
            return
        values = features.descriptors[parsed]
        if len(values) == 0:
            raise DataError(
                f"{source}: column '{self.p.column}' has no readable SMILES in the training rows"
            )
        with np.errstate(invalid="ignore"):
            mean = np.nan_to_num(np.nanmean(values, axis=0))
            std = np.nan_to_num(np.nanstd(values, axis=0))
        self.mean = [float(v) for v in mean]
        self.std = [float(v) if v > 0 else 1.0 for v in std]

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        features, parsed = self._checked(df, source)
        blocks = [] if self.graph else [features.bits.astype(np.float32)]
        if self.p.descriptors:
            if len(self.mean) != self.n_descriptors:
                raise ValueError("the smiles input is not fitted")
            scaled = (features.descriptors - np.array(self.mean)) / np.array(self.std)
            blocks.append(np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0))
        if self.p.invalid == "missing":
            blocks.append((~parsed).astype(np.float32)[:, None])
        if not self.graph:
            numeric = np.concatenate(blocks, axis=1).astype(np.float32)
            return {"numeric": torch.from_numpy(numeric)}
        padded = self.graphs(smiles_of(df, self.p.column)).padded()
        out = {k: torch.from_numpy(v) for k, v in padded.items()}
        if blocks:
            molecule = np.concatenate(blocks, axis=1).astype(np.float32)
            out["descriptors"] = torch.from_numpy(molecule)
        return out

    @property
    def input_spec(self) -> InputSpec:
        if self.graph:
            # n_numeric: the width of the molecule-level block concatenated after pooling.
            return InputSpec(kind="graph", n_numeric=self.molecule_width)
        return InputSpec(kind="table", n_numeric=self.width)

    def state(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def load_state(self, state: dict[str, Any]) -> None:
        parsed = parse_state(SmilesState, state)
        if len(parsed.mean) != self.n_descriptors or len(parsed.std) != self.n_descriptors:
            raise DataError(
                f"preprocessing: the smiles input holds {len(parsed.mean)} descriptor means "
                f"for {self.n_descriptors} descriptors"
            )
        if any(v <= 0 for v in parsed.std):
            raise DataError("preprocessing: the smiles input's descriptor scales must be > 0")
        self.mean, self.std = list(parsed.mean), list(parsed.std)


@INPUTS.register(
    "smiles",
    params=SmilesParams,
    summary="a molecule per row as SMILES: Morgan fingerprint or molecular graph (+ RDKit "
    "descriptors), cached",
)
def build_smiles(params: BaseModel) -> InputProcessor:
    return SmilesInput(params)
