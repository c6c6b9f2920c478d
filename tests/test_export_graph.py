"""ONNX export of molecular-graph models (``smiles`` input, ``features = "graph"``; the ``dmpnn``
and ``gin`` encoders): tiny models trained for one epoch on 40 generated molecules, exported,
and run by onnxruntime on batches whose molecules, and so padded atom and bond widths, differ
from the tracing example: the network's raw outputs equal torch's (atol 1e-4), and
``OnnxPredictor.predict`` equals ``Predictor.predict`` from the SMILES column. One model adds
the molecule-level block (RDKit descriptors and the ``unparsed`` flag); GIN and it take the
TorchScript exporter, the D-MPNN the dynamo exporter (the default)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from polytask.data import molgraph as mg
from polytask.data.chem import DESCRIPTORS
from polytask.errors import DataError
from polytask.export import OnnxPredictor, export_onnx
from polytask.export.graphs import GRAPH_AXES, example_blocks
from polytask.export.network import NET, Exporter
from polytask.export.verify import compare_predictions
from polytask.models import mpnn
from polytask.run.predictor import Predictor

pytest.importorskip("rdkit.Chem")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from test_molgraph_pipeline import generated  # noqa: E402  (needs RDKit, checked above)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TOL = 1e-4
#: The dynamo exporter takes 10-20 s on these models against TorchScript's 0.6 s: the default
#: path (auto = dynamo) is tested on the D-MPNN, the fallback on the others.


@dataclass(frozen=True)
class Model:
    encoder: dict[str, Any]
    smiles: dict[str, Any]
    exporter: Exporter


MODELS = {
    "dmpnn": Model({"name": "dmpnn", "hidden": 16, "depth": 2}, {}, "dynamo"),
    "gin": Model({"name": "gin", "hidden": 16, "depth": 2}, {}, "torchscript"),
    # The molecule-level block: the standardised RDKit descriptors and the unparsed flag,
    # concatenated after pooling.
    "dmpnn_descriptors": Model(
        {"name": "dmpnn", "hidden": 16, "depth": 2, "norm": "layer"},
        {"descriptors": True, "invalid": "missing"},
        "torchscript",
    ),
}


@dataclass(frozen=True)
class Exported:
    name: str
    model: Model
    predictor: Predictor
    path: Path
    onnx: OnnxPredictor


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    name: str = request.param
    model = MODELS[name]
    cfg = polytask.config_from_dict(
        {
            "seed": 0,
            "baselines": False,
            "data": {
                "input": {"name": "smiles", "features": "graph", **model.smiles},
                "split": {"method": "random", "val": 0.2, "test": 0.0},
            },
            "tasks": [
                {"name": "n_count", "kind": "regression", "target": "n_count"},
                {"name": "ring", "kind": "binary", "target": "ring"},
            ],
            "model": {"encoder": model.encoder, "head": {"widths": [16]}},
            "train": {"epochs": 1, "batch_size": 16, "progress": False},
        }
    )
    out = tmp_path_factory.mktemp(name)
    result = polytask.run(cfg, frame=generated(40, seed=0), out=out / "run", quiet=True)
    path = export_onnx(result.predictor, out / "model.onnx", exporter=model.exporter)
    return Exported(name, model, result.predictor, path, OnnxPredictor(path))


def other_molecules(e: Exported) -> pd.DataFrame:
    """Molecules the export never saw, larger than its tracing example (4 atoms, 6 directed
    bonds), with one of a single atom (no bond); plus an unreadable SMILES where the model
    takes them (``invalid = "missing"``)."""
    smiles = [*generated(11, seed=7)["smiles"].tolist(), "C"]
    if e.model.smiles.get("invalid") == "missing":
        smiles.insert(3, "C1CC(")
    return pd.DataFrame({"smiles": smiles}, index=pd.RangeIndex(100, 100 + len(smiles)))


def raw_session(path: Path, tasks: list[str]) -> Any:
    """The exported graph with the network's own outputs (``net/<task>``, before decoding)
    added as graph outputs."""
    graph = onnx.load(path)
    for task in tasks:
        graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(NET + task))
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("rows", ["many", "one"])
def test_raw_outputs_equal_torch_on_other_sizes(exported: Exported, rows: str) -> None:
    df = other_molecules(exported)
    if rows == "one":  # a batch of one molecule without bonds: every dynamic axis at 1
        df = df.tail(1)
    feeds = exported.onnx.feeds(df)
    widths = feeds["atom_codes"].shape[1], feeds["bond_codes"].shape[1]
    if rows == "one":
        assert widths == (1, 1)
    else:  # wider than the tracing example (4 atoms, 6 directed bonds)
        assert widths[0] > 4 and widths[1] > 6, widths
    tasks = exported.predictor.task_names
    session = raw_session(exported.path, tasks)
    got = session.run([NET + t for t in tasks], feeds)
    inputs = exported.predictor.preprocessor.transform(df, "test")
    model = exported.predictor.model.eval()
    with torch.no_grad():
        want = model(inputs)
    for task, value in zip(tasks, got, strict=True):
        assert value.shape == (len(df),)
        np.testing.assert_allclose(value, want[task].numpy(), atol=TOL, rtol=0)


def test_predict_equals_the_torch_predictor(exported: Exported) -> None:
    df = other_molecules(exported)
    want = exported.predictor.predict(df)
    got = exported.onnx.predict(df)
    assert list(got.index) == list(df.index)
    diffs = compare_predictions(want, got)
    assert diffs and all(d.within(TOL, TOL) for d in diffs), diffs
    if exported.model.smiles.get("invalid") == "missing":
        # The unreadable SMILES is an empty graph: predicted, from the flag and zeros.
        assert np.isfinite(got.loc[103, "n_count"])


def test_unreadable_smiles_is_the_torch_predictors_one_line_error(exported: Exported) -> None:
    if exported.model.smiles.get("invalid") == "missing":
        pytest.skip("invalid = 'missing' predicts an unreadable SMILES (see the test above)")
    df = pd.DataFrame({"smiles": ["CCO", "C1CC(", "c1ccccc1"]})
    with pytest.raises(DataError) as torch_error:
        exported.predictor.predict(df)
    with pytest.raises(DataError) as onnx_error:
        exported.onnx.predict(df)
    message = str(onnx_error.value)
    assert message == str(torch_error.value)
    assert "\n" not in message and "row 1" in message and "'C1CC('" in message


def test_metadata_and_inputs_name_the_graph_blocks(exported: Exported) -> None:
    meta = exported.onnx.metadata
    descriptors = exported.model.smiles.get("descriptors", False)
    keys = [*mg.GRAPH_KEYS] + (["descriptors"] if descriptors else [])
    schema = {entry["name"]: entry for entry in meta["polytask.inputs"]}
    assert list(schema) == keys
    assert schema["atom_codes"]["shape"] == ["batch", "atoms", 7]
    assert schema["bond_ends"] == {
        "name": "bond_ends",
        "type": "tensor",
        "dtype": "int32",
        "shape": ["batch", "bonds", 2],
    }
    # The ONNX inputs: batch and padded axes symbolic, the code widths fixed.
    inputs = {i.name: i for i in exported.onnx.session.get_inputs()}
    assert isinstance(inputs["atom_mass"].shape[1], str)
    assert isinstance(inputs["bond_codes"].shape[1], str) and inputs["bond_codes"].shape[2] == 4
    described = meta["polytask.input_processor"]
    assert described["name"] == "smiles" and described["features"] == "graph"
    assert set(described["inputs"]) == set(keys)
    assert described["features_in_graph"] == {"atom": mg.ATOM_DIM, "bond": mg.BOND_DIM}
    used = exported.onnx.session.get_modelmeta().custom_metadata_map["polytask.exporter"]
    assert used == exported.model.exporter
    steps = " ".join(meta["polytask.preprocessing_steps"])
    assert "RDKit is needed at the runtime" in steps
    if descriptors:
        assert described["descriptors"]["columns"] == [*DESCRIPTORS, "unparsed"]
        assert inputs["descriptors"].shape[1] == len(DESCRIPTORS) + 1


def test_serving_without_rdkit_is_a_one_line_error(
    exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file loads without RDKit; featurising a frame's SMILES needs it.
    monkeypatch.setitem(sys.modules, "rdkit", None)
    served = OnnxPredictor(exported.path)
    with pytest.raises(DataError) as info:
        served.predict(pd.DataFrame({"smiles": ["CCCl"]}))
    assert "\n" not in str(info.value) and "pip install 'polytask[chem]'" in str(info.value)


# ---------------------------------------------------------------------------------------------
# The pieces, without a trained model


def test_scatter_add_while_exporting_equals_index_add(monkeypatch: pytest.MonkeyPatch) -> None:
    # Repeated targets (several bonds into one atom, several atoms per molecule): the case the
    # TorchScript exporter's ScatterND of index_add gets wrong, and ScatterElements(add) right.
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([0, 2, 2, 2, 4, 0, 1])
    values = torch.randn(7, 5, generator=g)
    eager = mpnn._sum_into(index, values, 6)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    exporting = mpnn._sum_into(index, values, 6)
    np.testing.assert_allclose(exporting.numpy(), eager.numpy(), atol=1e-6)
    np.testing.assert_allclose(eager[2].numpy(), values[1:4].sum(0).numpy(), atol=1e-6)
    assert eager[3].abs().sum().item() == 0.0 and eager[5].abs().sum().item() == 0.0


def test_tracing_example_is_valid_graphs_of_distinct_sizes() -> None:
    blocks = example_blocks()
    assert set(GRAPH_AXES) < set(blocks) and list(blocks) == list(mg.GRAPH_KEYS)
    assert blocks["graph_sizes"].tolist() == [[3, 4], [4, 6], [2, 2]]
    # Batch 3, atoms 4, bonds 6: no two traced axes of the same size, none of size 0 or 1.
    assert blocks["atom_codes"].shape == (3, 4, 7) and blocks["bond_ends"].shape == (3, 6, 2)
    atoms, bonds, edges, reverse, graph_of_atom, per_graph = mg.unpad(*blocks.values())
    assert atoms.shape == (9, mg.ATOM_DIM) and bonds.shape == (12, mg.BOND_DIM)
    assert per_graph.tolist() == [3, 4, 2] and graph_of_atom.tolist() == [0] * 3 + [1] * 4 + [2] * 2
    # Chains: each reverse bond swaps the ends, all within the molecule's own atoms.
    assert torch.equal(edges[:, reverse], edges.flip(0))
    assert edges[:, :4].tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]
    assert reverse.tolist() == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]
