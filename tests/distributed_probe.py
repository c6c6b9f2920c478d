"""Checks the collectives on 2 ranks (run by tests/test_distributed.py under torchrun): each
rank writes what it saw to OUT/probe-<rank>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from polytask.distributed import DistributedConfig, launched


def main(out: Path) -> None:
    with launched("cpu", DistributedConfig()) as group:
        rank = group.rank
        start, stop = group.share(7)
        rows = torch.arange(7.0)[start:stop].reshape(-1, 1).repeat(1, 2)
        gathered = group.gather_rows(rows)
        failure = group.first_error("solver failed: singular Gramian" if rank == 1 else None)
        quiet = group.first_error(None)
        value = torch.tensor([float(rank + 1)])
        group.sum_([value, torch.ones(3, dtype=torch.float64)], bucket_bytes=8)
        chosen = group.broadcast_object({"rank": rank})
        found = {
            "share": [start, stop],
            "gathered": gathered.tolist(),
            "failure": failure,
            "quiet": quiet,
            "sum": float(value),
            "broadcast": chosen,
        }
        (out / f"probe-{rank}.json").write_text(json.dumps(found))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
