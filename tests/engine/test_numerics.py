"""The render record keeps what decides the exact numbers; `rerun_blockers` names what differs."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bot.engine.executor import Engine
from bot.engine.numerics import describe_numerics, engine_threads, rerun_blockers
from bot.engine.types import GenerationRequest

CPU_RECORD: dict[str, Any] = {
    "device": "cpu",
    "dtype": "float32",
    "sd_revision": "sha256:1",
    "versions": {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.25.0"},
    "numerics": {
        "torch_threads": 2,
        "cpu_capability": "AVX512",
        "deterministic_algorithms": False,
        "float32_matmul_precision": "highest",
        "mkldnn": True,
    },
}


def _with(record: dict[str, Any], **numerics: Any) -> dict[str, Any]:
    return record | {"numerics": record["numerics"] | numerics}


def test_the_same_record_has_no_blockers() -> None:
    assert rerun_blockers(CPU_RECORD, CPU_RECORD) == []


def test_each_difference_is_named() -> None:
    replica = _with(CPU_RECORD, torch_threads=1)
    assert rerun_blockers(replica, CPU_RECORD) == ["torch threads 1 → 2"]
    other_box = _with(CPU_RECORD, cpu_capability="AVX2", deterministic_algorithms=True)
    assert rerun_blockers(other_box, CPU_RECORD) == [
        "CPU instruction set AVX2 → AVX512",
        "deterministic algorithms on → off",
    ]
    upgraded = CPU_RECORD | {"versions": CPU_RECORD["versions"] | {"torch": "2.14.0"}, "dtype": "bfloat16"}
    assert rerun_blockers(upgraded, CPU_RECORD) == ["dtype bfloat16 → float32", "torch 2.14.0 → 2.13.0"]


def test_thread_count_does_not_matter_on_a_gpu() -> None:
    gpu = CPU_RECORD | {"device": "cuda"}
    gpu["numerics"] = gpu["numerics"] | {"gpu": "NVIDIA H100", "cuda_matmul_tf32": False}
    assert rerun_blockers(_with(gpu, torch_threads=16), gpu) == []
    assert rerun_blockers(_with(gpu, cuda_matmul_tf32=True), gpu) == ["TF32 matmuls on → off"]


def test_a_record_without_numerics_promises_nothing() -> None:
    old = {key: value for key, value in CPU_RECORD.items() if key != "numerics"}
    assert rerun_blockers(old, CPU_RECORD) == [
        "the job's record predates torch threads and the other numerics settings"
    ]
    # Only what is known is compared: a prediction without numerics names none.
    assert rerun_blockers(CPU_RECORD, {"device": "cpu"}) == []


def test_describe_numerics_reads_as_one_line() -> None:
    assert describe_numerics(CPU_RECORD["numerics"]) == (
        "torch threads 2, CPU instruction set AVX512, deterministic algorithms off, "
        "float32 matmul precision highest, oneDNN (mkldnn) on"
    )


@pytest.mark.asyncio(loop_scope="session")
async def test_a_one_thread_engine_records_one_thread(engine: Engine) -> None:
    """What a Ray replica runs (torch_threads=1) is what its jobs' records say."""
    request = GenerationRequest(
        seed_text="a castle", count=1, steps=1, guidance=7.5, width=64, height=64, job_seed=1, expand=False
    )
    pinned = Engine(dataclasses.replace(engine.config, torch_threads=1))
    try:
        await pinned.load()
        one = await pinned.generate(request)
    finally:
        await pinned.close()
    local = await engine.generate(request)
    local_threads = engine_threads(engine.config.torch_threads)
    assert one.render["numerics"]["torch_threads"] == 1
    assert local.render["numerics"]["torch_threads"] == local_threads
    expected = [] if local_threads == 1 else [f"torch threads 1 → {local_threads}"]
    assert rerun_blockers(one.render, local.render) == expected
