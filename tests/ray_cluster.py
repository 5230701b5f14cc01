"""A real Ray cluster on this machine, on loopback only: a head node and more nodes, each `ray start` in a
session of its own, so that one node can be killed (as when its machine dies) without touching the others.

On Linux, Ray replaces 127.0.0.1 with the machine's outward address (and then listens on every interface).
Here `ray start` runs with that replacement turned off (a private function of Ray 2.60, patched in the
`ray start` process only), so that every node listens on 127.0.0.1 alone; a driver (a dpp server or CLI) then
needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (DRIVER_ENV) to keep the address as given.

Used by tests/test_ray_jobs.py and bench/ray_jobs.py. Ray comes from requirements-ray.lock (installed by
./start_dpp.sh --setup-only --dev or --ray).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY_START = ("import sys, ray._private.services as services; services.resolve_ip_for_localhost = lambda host: host; "
             "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())")
DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Node:
    def __init__(self, name: str, session: int, seconds: float) -> None:
        self.name, self.session, self.start_seconds = name, session, seconds

    def pids(self) -> list[int]:
        """Every live process of the node: its daemons and its workers (which have process groups of their own,
        but keep the session of the `ray start` that made them)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == self.session and " Z " not in Path(f"/proc/{entry}/stat").read_text():
                        found.append(int(entry))
                except (ProcessLookupError, FileNotFoundError, PermissionError):
                    pass
        return found

    def kill(self, timeout: float = 15.0) -> None:
        """Every process of this node at once, as when its machine dies."""
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)


class LocalCluster:
    """`with LocalCluster(nodes=2) as cluster:` a head with one CPU and nodes-1 more nodes with one CPU each;
    cluster.address for --ray-address; every process is gone after the block."""

    def __init__(self, nodes: int = 2, cpus: int = 1) -> None:
        self.count, self.cpus = nodes, cpus
        # Short: Ray's socket paths live under it, and a Unix socket path has at most 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="dpr-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[Node] = []

    def __enter__(self) -> "LocalCluster":
        try:
            self.nodes.append(self._start("head", ["--head", "--node-ip-address", "127.0.0.1", "--port",
                                                   str(self.port), "--include-dashboard=false"]))
            for number in range(2, self.count + 1):
                self.nodes.append(self._start(f"node{number}", ["--address", self.address,
                                                                "--include-log-monitor=false",
                                                                "--resources", json.dumps({f"node{number}": 1})]))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, name: str, role: list[str]) -> Node:
        command = [sys.executable, "-c", RAY_START, "start", *role, "--num-cpus", str(self.cpus), "--num-gpus", "0",
                   "--temp-dir", str(self.root / name), "--disable-usage-stats",
                   "--object-store-memory", str(256 * 2**20)]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                   # a node that stops answering is declared dead after about 3 s (the default is 15 s or more)
                   RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
                   RAY_health_check_timeout_ms="1000")
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        output, _ = process.communicate(timeout=180)
        node = Node(name, process.pid, time.monotonic() - started)
        if process.returncode != 0:
            node.kill()
            raise RuntimeError(f"ray start ({name}) failed with {process.returncode}:\n{output[-3000:]}")
        return node

    def __exit__(self, *exc) -> None:
        for node in reversed(self.nodes):
            node.kill()
        subprocess.run(["rm", "-rf", str(self.root)], check=False)
