"""Two "machines" (issue 19): ``torchrun --nnodes 2`` across two network namespaces.

A fixture creates two network namespaces joined by a veth pair (tests/netns_support.py); node
rank 0 runs in namespace A and hosts the rendezvous on A's veth address, node rank 1 runs in B.
Gloo is pinned to the veth ends (``GLOO_SOCKET_IFNAME``), so every byte between the ranks crosses
the link. Creating namespaces needs root (CAP_SYS_ADMIN) and iproute2: without them the tests
skip with the reason, except under ``CI=true``, where they fail.

The first test proves the harness with plain torch.distributed; the second trains with
``torchrun ... -m polytask train`` and compares the weights with one process on the same config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import toml_text
from netns_support import (
    Finished,
    NetnsPair,
    NetnsUnavailable,
    netns_pair,
    run_in_namespaces,
    sent_bytes,
)
from polytask.data.synthetic import make_mmoe_synthetic

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
POLYTASK = BIN / "polytask"
MASTER_PORT = 29531  # each pair of namespaces is a network of its own, so no port clash
HARNESS_TIMEOUT_S = 120.0
TRAIN_TIMEOUT_S = 240.0  # 4 Python processes importing torch + polytask on 2 shared cores


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    """Two namespaces joined by a veth pair, deleted afterwards (also when the test fails)."""
    try:
        with netns_pair() as pair:
            yield pair
    except NetnsUnavailable as exc:
        reason = f"network namespaces unavailable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (required under CI=true; run as root with iproute2)")
        pytest.skip(reason)


def _env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC"))
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    return env


def _torchrun_on_both(
    pair: NetnsPair, program: Sequence[str], logs: Path, timeout: float
) -> list[Finished]:
    """``torchrun --nnodes 2 --nproc-per-node 1 PROGRAM`` with node rank 0 in A, 1 in B; assert
    both exit 0, with both sides' output in the message otherwise."""

    def torchrun(rank: int) -> list[str]:
        return [
            str(TORCHRUN),
            "--nnodes", "2",
            "--nproc-per-node", "1",
            "--node-rank", str(rank),
            "--master-addr", pair.a.address,
            "--master-port", str(MASTER_PORT),
            *program,
        ]  # fmt: skip

    finished = run_in_namespaces(
        [(pair.a, torchrun(0)), (pair.b, torchrun(1))], env=_env(), logs=logs, timeout=timeout
    )
    assert all(f.returncode == 0 for f in finished), "\n".join(f.describe() for f in finished)
    return finished


ALL_REDUCE = """\
import json, os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
dist.all_reduce(value)
record = {
    "rank": rank,
    "world": world,
    "value": value.tolist(),
    "netns": os.readlink("/proc/self/ns/net"),
    "ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
    json.dump(record, fh)
dist.destroy_process_group()
"""


def test_gloo_all_reduce_across_two_namespaces(netns: NetnsPair, tmp_path: Path) -> None:
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE, encoding="utf-8")
    results = tmp_path / "results"
    results.mkdir()
    _torchrun_on_both(netns, [str(script), str(results)], tmp_path / "logs", HARNESS_TIMEOUT_S)
    records = [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, record in enumerate(records):
        assert record["rank"] == rank and record["world"] == 2
        assert record["value"] == [3.0, 30.0]
    # Node rank 0 ran in A and rank 1 in B: two network namespaces, each rank on its veth end.
    assert records[0]["netns"] != records[1]["netns"]
    assert records[0]["netns"] != os.readlink("/proc/self/ns/net")
    assert [r["ifname"] for r in records] == [netns.a.ifname, netns.b.ifname]
    # The rendezvous and the all-reduce crossed the link (B reaches A only through it).
    assert sent_bytes(netns.b) > 0 and sent_bytes(netns.a) > 0


def _three_task_config(root: Path) -> Path:
    """A tiny 3-task run on the MMoE synthetic set (two regressions, one binary task)."""
    make_mmoe_synthetic(256, 0.5, n_features=8, seed=0).to_csv(root / "data.csv", index=False)
    raw = {
        "seed": 0,
        "baselines": False,
        "data": {"path": "data.csv", "split": {"method": "random", "val": 0.15, "test": 0.15}},
        "tasks": [
            {"name": "value", "kind": "regression", "target": "y_regression"},
            {"name": "label", "kind": "binary", "target": "y_binary"},
            {"name": "raw", "kind": "regression", "target": "y2_raw"},
        ],
        "model": {
            # Wide enough that the gradients, not the rendezvous, dominate the link's traffic.
            "encoder": {"widths": [64, 32], "dropout": 0.0, "norm": "layer"},
            "head": {"widths": [16]},
        },
        "train": {"epochs": 2, "batch_size": 32, "progress": False},
    }
    path = root / "run.toml"
    path.write_text(toml_text(raw), encoding="utf-8")
    return path


def test_polytask_train_across_two_namespaces_matches_one_process(
    netns: NetnsPair, tmp_path: Path
) -> None:
    config = _three_task_config(tmp_path)
    single, multi = tmp_path / "single", tmp_path / "two-nodes"
    started = time.monotonic()
    one = subprocess.run(
        [str(POLYTASK), "train", str(config), "-o", str(single), "--overwrite", "-q"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
        check=False,
    )
    assert one.returncode == 0, f"single-process run failed:\n{one.stdout}\n{one.stderr}"
    single_s = time.monotonic() - started

    started = time.monotonic()
    program = ["-m", "polytask", "train", str(config), "-o", str(multi), "--overwrite", "-q"]
    _torchrun_on_both(netns, program, tmp_path / "logs", TRAIN_TIMEOUT_S)
    multi_s = time.monotonic() - started
    print(f"single process {single_s:.1f} s, torchrun --nnodes 2 {multi_s:.1f} s")

    expected = load_file(single / "model" / "model.safetensors")
    got = load_file(multi / "model" / "model.safetensors")
    assert sorted(got) == sorted(expected)
    far = {
        name: float((got[name] - want).abs().max())
        for name, want in expected.items()
        if not torch.allclose(got[name], want, rtol=1e-4, atol=1e-6)
    }
    assert not far, f"tensors differing beyond rtol=1e-4, atol=1e-6 (max abs diff): {far}"
    # Rank 0 alone wrote the run directory: the same files as the single-process run.
    assert sorted(p.name for p in (multi / "model").iterdir()) == sorted(
        p.name for p in (single / "model").iterdir()
    )
    # Equal weights would also come out of two ranks that each trained alone on all the data;
    # ranks that summed their gradients sent, over 2 epochs of >= 4 steps each, at least half of
    # every parameter's float32 gradient per step across the link (the rendezvous and one
    # all-reduce of 2 numbers send ~5 kB).
    parameters = sum(t.numel() for t in expected.values())
    floor = 8 * parameters * 4 // 2
    sent = {node.netns: sent_bytes(node) for node in (netns.a, netns.b)}
    assert min(sent.values()) >= floor, (
        f"bytes sent over the veth pair {sent} < {floor}: the ranks did not reduce gradients"
    )
