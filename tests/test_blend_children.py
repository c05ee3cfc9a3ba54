"""New jobs from a /blend job (issue 22) when /blend is off or its model changed: the intake decides before
anything is written. A real SQLite store and blend rows written directly; no models, no rendering."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.engine.blend import pack_sheet, placeholder
from bot.intake import ActionRequest, Admitted, Intake, Refusal, Requester
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, Tile
from tests.helpers import assert_one_line_error, cli_env, job_count, job_spec, run_cli
from tests.test_uploads import encoded, striped

GUILD, CHANNEL, ALICE = 1, 2, 10
ALICE_HERE = Requester(ALICE, GUILD, CHANNEL)
UNCLIP = "some/unclip-model"
# What a repeat of a blend job needs; the tile actions run img2img on the SD model and do not.
NEEDS_BLEND = [("reproduce", None), ("rerun", None), ("rerender", None), ("reexpand", None), ("remix", None)]
SD_ONLY = [
    ("variation", 1),
    ("vary-subtle", 2),
    ("vary-strong", 1),
    ("upscale-subtle", 1),
    ("zoom-2", 1),
    ("pan-left", 2),
]


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "width": 64, "height": 64, "steps": 2, "count": 2}
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


def _blend_files(folder: Path) -> tuple[Path, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    picture = encoded(striped(64, 64), "PNG")
    sheet = folder / "sheet.png"
    sheet.write_bytes(pack_sheet([picture, picture], (1.0, 0.5), "", 0))
    tiles = [folder / f"tile-{i}.png" for i in (1, 2)]
    for path in tiles:
        path.write_bytes(picture)
    return sheet, tiles


async def blend_job(
    store: HistoryStore,
    folder: Path,
    *,
    user_id: int | None = ALICE,
    guild_id: int = GUILD,
    channel_id: int = CHANNEL,
) -> JobRecord:
    """A finished 2-picture blend without a prompt, as the engine records one (its sheet on disk)."""
    sheet, tile_paths = await asyncio.to_thread(_blend_files, folder)
    spec = job_spec(
        seed_text=placeholder(2),
        count=2,
        job_seed=5,
        expand=False,
        action="blend",
        init_image=str(sheet),
        user_id=user_id,
        guild_id=guild_id if user_id is not None else None,
        channel_id=channel_id if user_id is not None else None,
    )
    job = await store.create_job(spec)
    assert await store.mark_running(job.id)
    tiles = [Tile(i, placeholder(2), 5 + i, str(path), False) for i, path in enumerate(tile_paths, start=1)]
    render = {"mode": "blend", "action": "blend", "unclip_model": UNCLIP}
    assert await store.mark_done(job.id, tiles=tiles, grid_path=None, expander={}, render=render)
    done = await store.get_job(job.id)
    assert done is not None
    return done


async def test_a_repeat_of_a_blend_is_refused_before_queueing_when_blend_is_off(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        job = await blend_job(store, tmp_path / "images")
        off = Intake(_settings(tmp_path), store)
        for action, tile in NEEDS_BLEND:
            answer = await off.action(ALICE_HERE, ActionRequest(job.id, action, tile))
            assert isinstance(answer, Refusal), action
            assert answer.message.startswith("Can't start that: /blend is off on this bot"), answer.message
            assert "IMAGINE_BLEND_MODEL" in answer.message and answer.message.count(". ") == 0
        # Vary, Upscale, Zoom and Remix of one image start from a tile and render on the SD model: they run.
        for action, tile in SD_ONLY:
            answer = await off.action(ALICE_HERE, ActionRequest(job.id, action, tile))
            assert isinstance(answer, Admitted), (action, answer)
            assert answer.spec.render_action is None and answer.source is not None, action
            assert set(answer.spec.given_prompts or ()) == {placeholder(2)}, action  # the tile's text
        remix_one = await off.action(ALICE_HERE, ActionRequest(job.id, "remix", 1, prompt="a fox"))
        assert isinstance(remix_one, Admitted) and remix_one.spec.given_prompts == ("a fox",) * 2
        assert await store.count_jobs(any_user=True) == 1  # nothing written


async def test_an_exact_repeat_of_a_blend_needs_the_same_unclip_model(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        job = await blend_job(store, tmp_path / "images")
        same = Intake(_settings(tmp_path, blend_model=UNCLIP), store)
        for action, tile in NEEDS_BLEND:
            answer = await same.action(ALICE_HERE, ActionRequest(job.id, action, tile))
            assert isinstance(answer, Admitted) and answer.spec.render_action == "blend", action
        other = Intake(_settings(tmp_path, blend_model="other/unclip"), store)
        refused = await other.action(ALICE_HERE, ActionRequest(job.id, "reproduce"))
        assert refused == Refusal(
            f"Can't repeat job `{job.id}` exactly: /blend's model changed since it was made "
            f"({UNCLIP} → other/unclip)."
        )
        # New image seeds on the other model are not a repeat: 🔄 runs.
        assert isinstance(await other.action(ALICE_HERE, ActionRequest(job.id, "rerender")), Admitted)


def test_cli_rerun_of_a_blend_when_blend_is_off_is_one_error_line_and_writes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    async def make() -> str:
        async with HistoryStore(data_dir / "history.sqlite3") as store:
            return (await blend_job(store, data_dir / "images" / "old", user_id=None)).id

    job_id = asyncio.run(make())
    # No IMAGINE_BLEND_MODEL; models that do not exist: the refusal comes before any model would load.
    env = cli_env(
        data_dir, IMAGINE_SD_MODEL=str(tmp_path / "no-sd"), IMAGINE_TEXT_MODEL=str(tmp_path / "no-t")
    )
    result = run_cli(["rerun", job_id], env, tmp_path)
    assert_one_line_error(result, "/blend is off on this bot", "IMAGINE_BLEND_MODEL")
    assert result.returncode == 1
    assert job_count(data_dir) == 1
