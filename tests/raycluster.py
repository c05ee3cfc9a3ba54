"""A Ray cluster on "another host": its own PID, mount and network namespaces, reached only over TCP.

`ray start --head` runs under `unshare --net --pid --fork --mount-proc`; a veth pair joins its network
namespace to the test's with private addresses made here (10.231.0.1 here, 10.231.0.2 there), so the
cluster's only route is to this namespace, which itself has no route off the machine (scripts/fence.sh).
`python -m bot workers` deploys two CPU replicas of the tiny models through the dashboard's REST API; the
bot and the CLI then reach the workers at http://10.231.0.2:8000 with a bearer token. Nothing in the test
process imports Ray. One cluster per test module (`ray_cluster` is module-scoped).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST_ADDRESS, CLUSTER_ADDRESS = "10.231.0.1", "10.231.0.2"
FENCE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": f"127.0.0.1,localhost,{CLUSTER_ADDRESS}",
}
# Inside the cluster's namespaces: wait for our veth end, give it its address, then become the head node.
_HEAD_SCRIPT = f"""
set -e
ip link set lo up
for i in $(seq 100); do ip link show vc0 >/dev/null 2>&1 && break; sleep 0.05; done
ip addr add {CLUSTER_ADDRESS}/24 dev vc0
ip link set vc0 up
exec "$@"
"""


def fenced() -> bool:
    """True when this process's network namespace has only the loopback interface (and our veth)."""
    return {name for _, name in socket.if_nameindex()} <= {"lo", "vb0"}


def worker_env(models: tuple[Path, Path], token: str, ray_token: str) -> dict[str, str]:
    """The environment of the Ray nodes (and what `workers` and the CLI need): settings live on the node."""
    sd, text = models
    return {
        **os.environ,
        **FENCE_ENV,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "IMAGINE_SD_MODEL": str(sd),
        "IMAGINE_TEXT_MODEL": str(text),
        "IMAGINE_DEVICE": "cpu",
        "IMAGINE_DTYPE": "float32",
        "IMAGINE_WORKERS_TOKEN": token,
        "RAY_DASHBOARD_ADDRESS": f"http://{CLUSTER_ADDRESS}:8265",
        # Ray's own token auth on, as the README shows: `workers` must send it to the dashboard. Explicit,
        # so that a token file some other user left in ~/.ray cannot decide it.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": ray_token,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@dataclass
class RayCluster:
    """The head node (with its replicas) in its own namespaces; `kill_head` and `start` model an outage."""

    models: tuple[Path, Path]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ray_token: str = field(default_factory=lambda: secrets.token_hex(32))
    url: str = f"http://{CLUSTER_ADDRESS}:8000"
    deploy_output: str = ""
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rayt-", dir="/tmp")))
    #: more settings for the nodes (e.g. IMAGINE_MODELS_FILE)
    extra_env: dict[str, str] = field(default_factory=dict)
    _launcher: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**worker_env(self.models, self.token, self.ray_token), **self.extra_env}

    def start(self, replicas: int = 2) -> None:
        """Start the head in fresh namespaces, join it with a veth pair, deploy `replicas` with the CLI."""
        log = open(self.temp_dir / "head.log", "ab")  # noqa: SIM115 (the launcher's stdout for its life)
        self._launcher = subprocess.Popen(
            ["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", _HEAD_SCRIPT, "head",
             str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
             f"--node-ip-address={CLUSTER_ADDRESS}", "--port=6379", "--num-cpus=3",
             "--dashboard-host=0.0.0.0", "--dashboard-port=8265", f"--temp-dir={self.temp_dir / 'ray'}",
             "--disable-usage-stats"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        inner = self._inner_init()
        subprocess.run(["ip", "link", "del", "vb0"], capture_output=True, check=False)
        for command in (
            ["ip", "link", "add", "vb0", "type", "veth", "peer", "name", "vc0"],
            ["ip", "link", "set", "vc0", "netns", str(inner)],
            ["ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", "vb0"],
            ["ip", "link", "set", "vb0", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
        self._wait_dashboard()
        deployed = subprocess.run(
            [sys.executable, "-m", "bot", "workers", "--replicas", str(replicas)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        self.deploy_output = deployed.stdout + deployed.stderr
        assert deployed.returncode == 0, self.deploy_output

    def _inner_init(self) -> int:
        """The host PID of the namespace's init (the child `unshare --fork` made)."""
        assert self._launcher is not None
        children = Path(f"/proc/{self._launcher.pid}/task/{self._launcher.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = children.read_text().split() if children.exists() else []
            if text:
                return int(text[0])
            time.sleep(0.02)
        raise AssertionError("the cluster's namespace did not start")

    def _wait_dashboard(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            try:
                request = urllib.request.Request(
                    f"http://{CLUSTER_ADDRESS}:8265/api/version",
                    headers={"Authorization": f"Bearer {self.ray_token}"},
                )
                with opener.open(request, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the Ray dashboard never answered; see {self.temp_dir / 'head.log'}")

    def host_pid(self, inner_pid: int) -> int:
        """The host PID of a process the cluster knows by its namespace PID (a replica's `pid`)."""
        init = self._inner_init()
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == inner_pid:
                        return int(entry.name)
            except OSError:
                continue
        raise AssertionError(f"no process {inner_pid} in the cluster's namespace")

    def kill_head(self) -> None:
        """SIGKILL the namespace's init: the kernel kills every process of the cluster (a host gone)."""
        if self._launcher is None:
            return
        with contextlib.suppress(OSError, AssertionError):
            os.kill(self._inner_init(), signal.SIGKILL)
        self._launcher.wait(30)
        self._launcher = None

    def logs(self) -> str:
        """Everything the cluster's processes logged (replica logs included)."""
        parts: list[str] = []
        for path in sorted((self.temp_dir / "ray").glob("session_*/logs/**/*")):
            if path.is_file() and path.suffix in (".log", ".err", ".out"):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


@pytest.fixture(scope="module")
def ray_cluster(tiny_models: tuple[Path, Path]) -> Iterator[RayCluster]:
    """One cluster for the module: head + two CPU replicas in their own namespaces; killed at the end."""
    yield from running_cluster(RayCluster(tiny_models))


def running_cluster(cluster: RayCluster) -> Iterator[RayCluster]:
    """Start `cluster` (two replicas), yield it, kill it; skipped outside the fence or without Ray."""
    if (
        not fenced() or importlib.util.find_spec("ray") is None
    ):  # Ray: installed for the nodes, never imported here
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        pytest.skip(
            "pip install -e '.[ray]'"
            if fenced()
            else "Ray tests run only inside the loopback-only network fence (scripts/fence.sh)"
        )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill_head()
        subprocess.run(["ip", "link", "del", "vb0"], capture_output=True, check=False)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
