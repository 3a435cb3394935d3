"""A real multi-node Ray cluster on this one machine, for `doodl-ray bench faults` and the node-fault tests: a
head with no resources and worker nodes with one CPU and one logical GPU each, every node a `ray start
--block` in a process group of its own, on a loopback address of its own (127.0.0.N, N >= 2: Ray rewrites
127.0.0.1 to the machine's address), with its own temp dir and free ports, so it neither finds nor is found by
any other Ray on the machine. A node is lost the way a machine is: SIGKILL to every process of it (`ray
start`, raylet, agents, and the workers, which the raylet starts in sessions of their own), or frozen with
SIGSTOP and resumed with SIGCONT; never `ray stop`, which would stop every Ray on the machine.

Ray needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER unset to join nodes; token authentication is on (every node and
driver get RAY_AUTH_MODE=token and the same token, and a private HOME so ~/.ray is never touched). The head
marks a lost node dead after `HEALTH_CHECK` (about 2 s instead of Ray's 15-60 s), and every process gives up
on a lost head after `GCS_RECONNECT_S`, so a fault costs seconds, not minutes."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RAY = str(Path(sys.executable).parent / "ray")
HEALTH_CHECK = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 1000,
                "health_check_failure_threshold": 3}
"""The head's node health checks: a SIGKILLed node is marked dead in about 1.5 s, a frozen one in about 3 s."""
GCS_RECONNECT_S = 20
"""How long raylets and drivers wait for a lost head before Ray ends them (Ray's default: 60 s)."""
_NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
               "runtime-env-agent-port", "metrics-export-port")
_WORKER_PORTS = 8  # worker processes per node: its actors and a few idle workers
_ADDRESSES = (f"127.0.0.{n}" for n in itertools.count(2))  # one per node of the process, never reused


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (nodes bind on every interface, so no two may share one)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@dataclass
class Node:
    """One `ray start --block` and the processes it starts, on its own loopback address."""

    name: str
    ip: str
    args: list[str]  # its `ray start` options besides the ports, temp dir and address
    process: Optional[subprocess.Popen] = None
    temp_dir: Optional[Path] = None

    def signal(self, sig: int) -> None:
        """Send `sig` to every process of the node."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Lose the node as a machine is lost: every process at once, no goodbye to the head."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def pids(self) -> list[int]:
        """`ray start` and every process under it (the raylet starts workers in sessions of their own, so the
        node's process group alone would miss its actors)."""
        if self.process is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
        found, todo = [], [self.process.pid]
        while todo:
            found.append(todo.pop())
            todo += children.get(found[-1], [])
        return found

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def failed(self) -> bool:
        """`ray start` gave up (it does when a loaded machine starts a node in over 30 s); not killed by us."""
        return self.process is not None and self.process.poll() not in (None, -signal.SIGKILL)


@dataclass
class LocalCluster:
    """A head and its worker nodes; `address` is what a driver joins with (`doodl-ray run --address`)."""

    root: Path
    token: str
    pythonpath: list[str] = field(default_factory=list)  # put first on the nodes' and drivers' PYTHONPATH
    head: Optional[Node] = None
    address: str = ""
    workers: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a node or driver of this cluster: the token, a private HOME, `pythonpath` first,
        one torch thread, and no RAY_ variable of this process's own (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER must be
        unset on nodes)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, HOME=str(self.root / "home"),
                   PYTHONPATH=os.pathsep.join(filter(None, [*self.pythonpath, os.environ.get("PYTHONPATH")])),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   RAY_gcs_rpc_server_reconnect_timeout_s=str(GCS_RECONNECT_S),
                   RAY_agent_register_timeout_ms="120000",  # a loaded machine starts an agent in over 10 s
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        return {**env, **extra}

    def _launch(self, node: Node) -> None:
        if node.temp_dir is None:  # short, under /tmp: Ray's socket paths must fit in 107 bytes
            node.temp_dir = Path(tempfile.mkdtemp(prefix=f"dr-{node.name}-", dir="/tmp"))
        ports = _free_ports(len(_NODE_PORTS) + _WORKER_PORTS)
        command = [RAY, "start", "--block", f"--node-ip-address={node.ip}", "--disable-usage-stats",
                   "--include-log-monitor=false", f"--temp-dir={node.temp_dir}",
                   *(f"--{flag}={port}" for flag, port in zip(_NODE_PORTS, ports)),
                   f"--worker-port-list={','.join(map(str, ports[len(_NODE_PORTS):]))}", *node.args]
        with open(self.root / f"{node.name}.log", "ab") as out:
            node.process = subprocess.Popen(command, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # a process group of its own

    def start_head(self) -> Node:
        port = _free_ports(1)[0]
        self.head = Node("head", next(_ADDRESSES), ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                                                "--include-dashboard=false", f"--dashboard-port={free_port()}",
                                                f"--ray-client-server-port={free_port()}",
                                                f"--system-config={json.dumps(HEALTH_CHECK)}"])
        self.address = f"{self.head.ip}:{port}"
        self._launch(self.head)
        self.wait_up(self.head)
        return self.head

    def start(self, workers: int) -> None:
        """The head, then `workers` worker nodes started together (each `ray start` takes seconds), all up."""
        self.start_head()
        for node in [self.add_worker(wait=False) for _ in range(workers)]:
            self.wait_up(node)

    def wait_workers_up(self) -> None:
        """Until every worker node still running (not killed, not frozen by a test) is reported alive."""
        for node in self.workers:
            if node.alive:
                self.wait_up(node)

    def add_worker(self, wait: bool = True) -> Node:
        """A worker node with one CPU and one logical GPU (room for one actor of a default job)."""
        args = [f"--address={self.address}", "--num-cpus=1", "--num-gpus=1"]
        node = Node(f"worker{len(self.workers) + 1}", next(_ADDRESSES), args)
        self.workers.append(node)
        self._launch(node)
        if wait:
            self.wait_up(node)
        return node

    def alive_ips(self) -> set[str]:
        """The addresses of the nodes the head reports alive; none while it cannot be reached."""
        from ray._raylet import GcsClient

        try:
            nodes = GcsClient(address=self.address).get_all_node_info(timeout=5).values()
        except Exception:  # the head is starting, or gone
            return set()
        return {n.node_manager_address for n in nodes if n.state == 0}  # GcsNodeInfo.ALIVE

    def wait_up(self, node: Node, timeout_s: float = 240) -> None:
        """Until the head reports the node alive; a `ray start` that gave up is started again."""
        deadline = time.monotonic() + timeout_s
        while node.ip not in self.alive_ips():
            if node.failed:
                self._launch(node)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} not up after {timeout_s} s: see {self.root / node.name}.log")
            time.sleep(0.5)

    def wait_dead(self, node: Node, timeout_s: float = 60) -> float:
        """Until the head no longer reports the node alive; returns the seconds waited."""
        started = time.monotonic()
        while node.ip in self.alive_ips():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{node.name} still alive after {timeout_s} s")
            time.sleep(0.2)
        return time.monotonic() - started

    def close(self) -> None:
        for node in [*self.workers, self.head]:
            if node is not None:
                node.thaw()
                node.kill()
                shutil.rmtree(node.temp_dir or "", ignore_errors=True)
