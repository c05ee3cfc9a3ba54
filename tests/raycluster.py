"""A local Ray cluster on 127.0.0.1 with two CPU replicas of the tiny models, deployed by `python -m bot workers`.

Only inside the loopback-only network fence: Ray's processes try to reach addresses off this machine
(cloud metadata, a DNS server, a usage endpoint) even with usage stats off. scripts/test.sh runs the
`ray`-marked tests under `unshare -n`; anywhere else the fixture skips them.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost",
}


@dataclass(frozen=True)
class RayCluster:
    address: str
    deploy_output: str
    env: dict[str, str]


def fenced() -> bool:
    """True when this process's network namespace has only the loopback interface."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def worker_env(address: str, models: tuple[Path, Path]) -> dict[str, str]:
    sd, text = models
    return {
        **os.environ,
        "RAY_ADDRESS": address,
        "IMAGINE_SD_MODEL": str(sd),
        "IMAGINE_TEXT_MODEL": str(text),
        "IMAGINE_DEVICE": "cpu",
        "IMAGINE_DTYPE": "float32",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@pytest.fixture(scope="session")
def ray_cluster(tiny_models: tuple[Path, Path]) -> Iterator[RayCluster]:
    """Start Ray in this process (3 CPUs), deploy two replicas with the CLI, shut everything down after."""
    if not fenced():
        pytest.skip("Ray tests run only inside the loopback-only network fence (scripts/test.sh)")
    pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    os.environ.update(FENCE_ENV)
    # Replicas must import this checkout's `bot` package.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    import ray
    from ray import serve

    # "local": always a new cluster, never one a `ray start` left on this machine (/tmp/ray/ray_current_cluster).
    ray.init(
        address="local",
        num_cpus=3,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        address = ray.get_runtime_context().gcs_address
        env = worker_env(address, tiny_models)
        deployed = subprocess.run(
            [sys.executable, "-m", "bot", "workers", "--replicas", "2"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        yield RayCluster(address, deployed.stdout, env)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
