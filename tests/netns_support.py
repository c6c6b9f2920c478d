"""Two "machines" on one host: a pair of network namespaces joined by a veth pair.

Used by tests/test_distributed_netns.py (issue 19) to run ``torchrun --nnodes 2`` with one node in
each namespace, so the rendezvous and gloo's traffic cross a real (virtual) link instead of
loopback. Both namespaces share the host's filesystem, so a run directory written by rank 0 is
readable by the test.

Everything here creates only names derived from this process's id and a counter, and deletes
only what it created.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

IP_TIMEOUT_S = 20.0  # one `ip` command; they take milliseconds
_COUNTER = itertools.count()


class NetnsUnavailable(Exception):
    """Network namespaces cannot be created here (no iproute2, no privileges, no kernel support)."""


@dataclass(frozen=True)
class Node:
    """One side of the pair: its namespace, its end of the veth pair and that end's address."""

    netns: str
    ifname: str
    address: str


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces ``a`` and ``b`` with ``a.address`` and ``b.address`` on one /24."""

    a: Node
    b: Node


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )


def _check(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        command = " ".join(map(str, result.args))
        detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise NetnsUnavailable(f"`{command}` failed: {detail}")


def _kill_namespace_processes(name: str) -> None:
    """SIGKILL what still runs inside namespace ``name`` (one this module created, so every
    process in it was started by the test)."""
    listed = _ip("netns", "pids", name)
    for word in listed.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


@contextlib.contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    """Create two namespaces joined by a veth pair, loopback up in both; delete them on exit.

    Raises:
        NetnsUnavailable: if ``ip`` is missing or a step fails (typically ``ip netns add``
            without CAP_SYS_ADMIN); whatever was created before the failure is deleted first.
    """
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (Debian package iproute2) is not installed")
    tag = f"pt-{os.getpid()}-{next(_COUNTER)}"
    subnet = f"10.231.{os.getpid() % 250 + 1}"
    # The veth ends are created directly inside the namespaces, so their names never meet the
    # host's interfaces (or another test's): both can be short fixed names.
    pair = NetnsPair(
        a=Node(f"{tag}-a", "ptveth-a", f"{subnet}.1"),
        b=Node(f"{tag}-b", "ptveth-b", f"{subnet}.2"),
    )
    created: list[str] = []
    try:
        for node in (pair.a, pair.b):
            _check(_ip("netns", "add", node.netns))
            created.append(node.netns)
        _check(
            _ip(
                "link", "add", pair.a.ifname, "netns", pair.a.netns, "type", "veth",
                "peer", "name", pair.b.ifname, "netns", pair.b.netns,
            )
        )  # fmt: skip
        for node in (pair.a, pair.b):
            _check(_ip("-n", node.netns, "link", "set", "lo", "up"))
            _check(_ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", node.ifname))
            _check(_ip("-n", node.netns, "link", "set", node.ifname, "up"))
        yield pair
    finally:
        for name in reversed(created):
            _kill_namespace_processes(name)
            # Deleting a namespace also destroys the veth end inside it, hence the pair.
            _ip("netns", "del", name)


def sent_bytes(node: Node) -> int:
    """Bytes sent so far out of ``node``'s veth end (the kernel's counter)."""
    shown = _ip("-n", node.netns, "-j", "-s", "link", "show", node.ifname)
    _check(shown)
    return int(json.loads(shown.stdout)[0]["stats64"]["tx"]["bytes"])


@dataclass
class Finished:
    """What one command run inside a namespace did."""

    label: str
    returncode: int | None  # None: killed at the deadline (or because its peer failed)
    stdout: str
    stderr: str

    def describe(self) -> str:
        status = (
            "killed at the deadline or after its peer failed"
            if self.returncode is None
            else f"exit {self.returncode}"
        )
        return (
            f"--- {self.label}: {status}\n"
            f"--- stdout:\n{self.stdout[-4000:]}\n--- stderr:\n{self.stderr[-8000:]}"
        )


def _killpg(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_in_namespaces(
    commands: Sequence[tuple[Node, Sequence[str]]],
    *,
    env: Mapping[str, str],
    logs: Path,
    timeout: float,
    peer_grace: float = 20.0,
) -> list[Finished]:
    """Run each ``(node, argv)`` concurrently under ``ip netns exec``, each in its own session.

    ``GLOO_SOCKET_IFNAME`` is set to the node's veth end on top of ``env``. At ``timeout``
    seconds every command still running is killed (with its process group); once one command
    fails, the others get ``peer_grace`` seconds before they are killed too, since a rank whose
    peer died may otherwise wait out torch.distributed's own (much longer) timeouts.
    """
    logs.mkdir(parents=True, exist_ok=True)
    started: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
    killed: set[int] = set()
    try:
        for index, (node, argv) in enumerate(commands):
            label = f"{node.netns} #{index}"
            out, err = logs / f"{index}.stdout", logs / f"{index}.stderr"
            with out.open("wb") as stdout, err.open("wb") as stderr:
                process = subprocess.Popen(
                    ["ip", "netns", "exec", node.netns, *argv],
                    env={**env, "GLOO_SOCKET_IFNAME": node.ifname},
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
            started.append((label, process, out, err))
        deadline = time.monotonic() + timeout
        while True:
            codes = [process.poll() for _, process, _, _ in started]  # polls every one
            if all(code is not None for code in codes):
                break
            now = time.monotonic()
            if any(code not in (None, 0) for code in codes):
                deadline = min(deadline, now + peer_grace)
            if now >= deadline:
                for _, process, _, _ in started:
                    if process.poll() is None:
                        killed.add(process.pid)
                        _killpg(process)
                for _, process, _, _ in started:
                    process.wait(timeout=IP_TIMEOUT_S)
                break
            time.sleep(0.2)
    finally:
        for _, process, _, _ in started:
            if process.poll() is None:
                _killpg(process)
                process.wait(timeout=IP_TIMEOUT_S)
            else:
                # A launcher that exited may leave workers behind in its process group.
                _killpg(process)
    return [
        Finished(
            label,
            None if process.pid in killed else process.returncode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )
        for label, process, out, err in started
    ]
