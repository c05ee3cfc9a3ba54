"""One definition of a job's parameters (issue 17): the row, the record and the request derive from JobParams."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.engine.model_specs import LoraRef
from bot.engine.types import JOB_PARAM_NAMES, GenerationRequest, JobParams
from bot.jobs import request_from_job, rerun_spec
from bot.store import HistoryStore, JobRecord, JobSpec, Tile

# A value other than the default for every field of a new row: a field the store forgot to write or read
# comes back as its default and fails the comparison below.
EVERY_FIELD = JobSpec(
    seed_text="a lighthouse",
    count=2,
    steps=3,
    guidance=6.5,
    width=96,
    height=64,
    job_seed=1234,
    negative="fog",
    expand=False,
    safe_mode=False,
    mitigation={"mode": "fair", "weights": [0.5, 0.5]},
    loras=(LoraRef("ink", 0.8), LoraRef("old", 1.0)),
    tiling=True,
    action="variation",
    parent_id=None,
    source_tile=1,
    strength=0.45,
    given_prompts=("one", "two"),
    given_seeds=(7, 8),
    init_image="/data/a.png",
    user_id=42,
    guild_id=7,
    channel_id=9,
    mask_image="/data/m.png",
    chaos=30,
    render_action="upscale-subtle",
    id="abcdef0123",
    private=True,
    from_defaults=("steps", "guidance"),
    model="tiny-b",
    group_id="abcdef0123",
)


def test_every_shape_of_a_job_is_derived_from_job_params() -> None:
    names = set(JOB_PARAM_NAMES)
    for shape in (GenerationRequest, JobSpec, JobRecord):
        assert issubclass(shape, JobParams)
        assert names <= {f.name for f in dataclasses.fields(shape)}
    # EVERY_FIELD sets each field away from its default (parent_id must name a row: the foreign key).
    for item in dataclasses.fields(JobSpec):
        if item.default is not dataclasses.MISSING and item.name != "parent_id":
            assert getattr(EVERY_FIELD, item.name) != item.default, item.name
    defaults = {f.name for f in dataclasses.fields(JobSpec) if f.default is dataclasses.MISSING}
    assert defaults <= names  # a new row needs nothing beyond the parameters


@pytest.mark.asyncio(loop_scope="session")
async def test_every_field_of_a_spec_survives_the_row(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "history.sqlite3") as store:
        record = await store.create_job(EVERY_FIELD)
        again = await store.get_job(record.id)
    assert again == record
    for item in dataclasses.fields(JobSpec):
        assert getattr(record, item.name) == getattr(EVERY_FIELD, item.name), item.name
    assert record.status == "queued" and record.tiles == ()


def test_the_request_and_the_rerun_carry_every_parameter() -> None:
    record = JobRecord(
        **{f.name: getattr(EVERY_FIELD, f.name) for f in dataclasses.fields(JobSpec)},
        status="done",
        created_at=1.0,
        tiles=(Tile(0, "one", 7, "/a.png"), Tile(1, "two", 8, "/b.png")),
    )
    request = request_from_job(record)
    for name in JOB_PARAM_NAMES:
        assert getattr(request, name) == getattr(record, name), name
    assert (request.prompts, request.image_seeds, request.model) == (("one", "two"), (7, 8), "tiny-b")
    assert request.action == "upscale-subtle" and request.strength == 0.45

    rerun = rerun_spec(record, user_id=5)
    for name in JOB_PARAM_NAMES:
        assert getattr(rerun, name) == getattr(record, name), name
    assert (rerun.id, rerun.parent_id, rerun.user_id, rerun.action) == (None, record.id, 5, "rerun")
    assert (rerun.group_id, rerun.from_defaults, rerun.private) == (None, (), True)
