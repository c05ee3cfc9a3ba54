"""Teaching the expander from presses, for real on the tiny GPT-2 (CPU): pairs come from the history (not a
forgotten member's, one server unless told), DPO raises held-out preference accuracy and the sampling rate
of what members picked, and every job names the expander version that wrote its prompts."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bot.cli import _model_lines, main
from bot.store import HistoryStore, JobRecord, JobSpec, Tile
from bot.train.expander import (
    ExpanderHyperparameters,
    ExpanderTrainingError,
    pairs_from_presses,
    train_expander,
)

GUILD, OTHER_GUILD = 111, 222
SEEDS = ("a castle", "a forest", "a city", "a lake", "a robot", "a dragon", "a garden", "a lighthouse")
PICKED = "watercolor, soft colors"  # what the pressed tile always carries
OTHERS = (
    "oil painting, by greg rutkowski",
    "digital art, trending on artstation",
    "concept art, unreal engine",
    "matte painting, 8k",
    "photorealistic, 35mm, sharp focus",
    "3d render, octane render",
)
PRESSES = ("upscale-subtle", "vary-strong", "zoom-2", "pan-left", "remix", "variation")

pytest.importorskip("trl", reason="the `train` extra (scripts/test.sh installs it)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(seed: str, **extra: object) -> JobSpec:
    return JobSpec(seed_text=seed, count=4, steps=2, guidance=7.5, width=64, height=64, job_seed=5, **extra)  # type: ignore[arg-type]


async def write_history(
    db: Path, grids: int, *, guild: int = GUILD, user: int = 7, rng_seed: int = 0
) -> None:
    """`grids` expanded grids; on each, the member pressed a button on the one tile whose prompt has PICKED."""
    rng = random.Random(rng_seed)
    async with HistoryStore(db) as store:
        for n in range(grids):
            seed = SEEDS[n % len(SEEDS)]
            picked = rng.randrange(4)
            styles = rng.sample(OTHERS, 3)
            prompts = [f"{seed}, {PICKED if i == picked else styles.pop()}" for i in range(4)]
            grid = await store.create_job(_spec(seed, guild_id=guild, user_id=user, channel_id=1))
            await store.mark_running(grid.id)
            await store.mark_done(
                grid.id,
                tiles=[Tile(i + 1, p, 100 + i, None) for i, p in enumerate(prompts)],
                grid_path=None,
                expander={"model": "tiny", "version": "base"},
                render={},
            )
            press = await store.create_job(
                _spec(
                    prompts[picked],
                    guild_id=guild,
                    user_id=user,
                    channel_id=1,
                    parent_id=grid.id,
                    source_tile=picked + 1,
                    action=PRESSES[n % len(PRESSES)],
                    expand=False,
                )
            )
            await store.mark_running(press.id)
            await store.mark_failed(press.id, "not needed")  # a press counts whatever became of its render


def test_pairs_come_from_presses_per_server_and_not_from_forgotten_members(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite3"
    asyncio.run(write_history(db, 4))
    asyncio.run(write_history(db, 2, guild=OTHER_GUILD, user=8, rng_seed=1))
    asyncio.run(write_history(db, 2, user=9, rng_seed=2))

    async def collect(**scope: object) -> list[object]:
        async with HistoryStore(db) as store:
            return await store.tile_presses(**scope)  # type: ignore[arg-type]

    presses = asyncio.run(collect(guild_id=GUILD, all_guilds=False))
    assert len(presses) == 6
    pairs = pairs_from_presses(presses)  # type: ignore[arg-type]
    assert len(pairs) == 6 * 3  # the pressed tile over each of the three others
    assert all(p.chosen == f" {PICKED}" and PICKED not in p.rejected for p in pairs)
    assert {p.prompt for p in pairs} <= {f"{seed}," for seed in SEEDS}
    assert len(asyncio.run(collect(guild_id=None, all_guilds=True))) == 8

    async def forget(user: int) -> None:
        async with HistoryStore(db) as store:
            await store.delete_user_jobs(user, GUILD)  # what /forget does to the rows

    asyncio.run(forget(9))
    assert len(asyncio.run(collect(guild_id=GUILD, all_guilds=False))) == 4


def test_the_cli_refuses_too_few_pairs_and_asks_which_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    asyncio.run(write_history(tmp_path / "history.sqlite3", 5))
    assert main(["train", "expander", "--guild", str(GUILD)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"error: server {GUILD} has 15 preference pair(s) from button presses on expanded grids; "
        "training needs at least 50"
    )
    asyncio.run(write_history(tmp_path / "history.sqlite3", 1, guild=OTHER_GUILD))
    assert main(["train", "expander"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: the history holds presses from 2 servers ({GUILD}, {OTHER_GUILD}): pass --guild ID for one "
        "server's, or --all-servers to pool them"
    )


def _pattern_rate(folder: Path, samples: int = 48) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    inputs = tokenizer(["a castle,"], return_tensors="pt")
    out = model.generate(
        **inputs,
        do_sample=True,
        max_new_tokens=12,
        num_return_sequences=samples,
        top_k=50,
        pad_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum("watercolor" in t for t in texts) / samples


def test_dpo_raises_heldout_accuracy_and_the_picked_pattern(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    from bot.engine.loading import load_text_model

    db = tmp_path / "history.sqlite3"
    asyncio.run(write_history(db, 40))

    async def collect() -> list[object]:
        async with HistoryStore(db) as store:
            return await store.tile_presses(guild_id=GUILD, all_guilds=False)

    pairs = pairs_from_presses(asyncio.run(collect()))  # type: ignore[arg-type]
    output = tmp_path / "expanders" / "picked"
    hyper = ExpanderHyperparameters(epochs=2, lr=5e-3, beta=0.1, batch=16, holdout=0.25, seed=0)
    result = train_expander(
        pairs, base=str(tiny_models[1]), output=output, hyper=hyper, scope=f"server {GUILD}"
    )
    assert result.heldout_pairs == 10 * 3 and result.train_pairs == 30 * 3
    assert result.before.dpo_loss == pytest.approx(
        math.log(2), abs=1e-5
    )  # the policy starts as the reference
    assert result.after.accuracy > result.before.accuracy
    assert result.after.accuracy >= 0.9
    assert result.after.dpo_loss < result.before.dpo_loss
    assert _pattern_rate(output) > _pattern_rate(tiny_models[1]) + 0.2

    record = json.loads((output / "imagine_expander.json").read_text())
    assert record["version"] == result.record["version"] and record["version"].startswith("picked-")
    assert (
        record["heldout_after"]["accuracy"] == result.after.accuracy and record["scope"] == f"server {GUILD}"
    )
    _, _, info = load_text_model(str(output), device=torch.device("cpu"))
    assert info["version"] == record["version"]
    _, _, base_info = load_text_model(str(tiny_models[1]), device=torch.device("cpu"))
    assert base_info["version"] == "base"
    with pytest.raises(ExpanderTrainingError, match="already exists"):
        train_expander(pairs, base=str(tiny_models[1]), output=output, hyper=hyper, scope="x")


def test_show_names_the_expander_version(tmp_path: Path) -> None:
    async def job() -> JobRecord:
        async with HistoryStore(tmp_path / "h.sqlite3") as store:
            made = await store.create_job(_spec("a castle"))
            await store.mark_running(made.id)
            await store.mark_done(
                made.id,
                tiles=[Tile(1, "a castle, x", 1, None)],
                grid_path=None,
                expander={"model": "/x/expanders/picked", "revision": "sha256:ab", "version": "picked-1"},
                render={},
            )
            found = await store.get_job(made.id)
            assert found is not None
            return found

    lines = _model_lines(asyncio.run(job()))
    assert "text model: /x/expanders/picked (revision sha256:ab), expander version picked-1" in lines


def test_a_server_that_turned_learning_off_gives_no_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """/settings → server → Learn from choices: off keeps that server's presses out of training."""
    from bot.preferences import PreferenceStore

    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    db = tmp_path / "history.sqlite3"
    asyncio.run(write_history(db, 5))

    async def learning(on: bool) -> None:
        async with HistoryStore(db) as store:
            await PreferenceStore(store).change_guild(GUILD, 1, "learn_from_choices", on)

    asyncio.run(learning(False))
    assert main(["train", "expander", "--guild", str(GUILD)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "note: left out the presses of 1 server(s) that turned learning from choices off" in err
    assert err[-1].startswith(f"error: server {GUILD} has 0 preference pair(s)")
    asyncio.run(learning(True))
    assert main(["train", "expander", "--guild", str(GUILD)]) == 1
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(f"error: server {GUILD} has 15 preference pair(s)")
    )
