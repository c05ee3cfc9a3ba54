"""Mitigations as a job option: the inline flag, the CLI option, the server default, the stored record,
and an exact rerun of a diverse-prompts job through the CLI (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cli import build_parser
from bot.engine.mitigation import MITIGATIONS
from bot.engine.types import InvalidRequest
from bot.flags import merge_flags, parse_inline_flags
from bot.intake import ImagineRequest, Intake, Refusal, Requester
from bot.preferences import PreferenceStore, SettingRefused, check_guild_value
from bot.settings import Settings
from bot.store import HistoryStore
from tests.helpers import cli_json as _json
from tests.helpers import run_cli as _cli
from tests.helpers import tiny_cli_env as _env

GUILD, CHANNEL, ALICE = 1, 2, 10
DOCTOR = "a photo of the face of a doctor"


def test_the_inline_flag_is_parsed_checked_and_merged() -> None:
    flags = parse_inline_flags(f"{DOCTOR} --mitigation fair-guidance --seed 3")
    assert (flags.text, flags.mitigation, flags.seed) == (DOCTOR, "fair-guidance", 3)
    assert merge_flags(flags, {"mitigation": None}, {})["mitigation"] == "fair-guidance"
    with pytest.raises(
        InvalidRequest, match="--mitigation` must be one of off, diverse-prompts, fair-guidance"
    ):
        parse_inline_flags("a cat --mitigation louder")
    with pytest.raises(InvalidRequest, match="disagree"):
        merge_flags(flags, {"mitigation": "off"}, {"mitigation": "--mitigation"})


def test_imagine_help_shows_the_option_and_each_mode() -> None:
    imagine = build_parser()._subparsers._group_actions[0].choices["imagine"]  # type: ignore[union-attr]
    text = " ".join(imagine.format_help().split())
    assert "--mitigation {off,diverse-prompts,fair-guidance}" in text
    # argparse may wrap inside a hyphenated word: look for words of each line of help.
    assert "descriptors" in text and "Fair Diffusion" in text


async def test_the_server_default_applies_unless_the_job_names_one(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, width=64, height=64, steps=2, count=2)  # type: ignore[call-arg]
    with pytest.raises(SettingRefused, match="mitigation"):
        check_guild_value(settings, "mitigation", "louder")
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        preferences = PreferenceStore(store)
        intake = Intake(settings, store, preferences=preferences)
        here = Requester(ALICE, GUILD, CHANNEL)
        plain = await intake.imagine(here, ImagineRequest(DOCTOR))
        assert not isinstance(plain, Refusal) and plain.spec.mitigation is None
        await preferences.change_guild(
            GUILD, ALICE, "mitigation", check_guild_value(settings, "mitigation", "fair-guidance")
        )
        assert (await preferences.guild(GUILD)).mitigation == "fair-guidance"
        guided = await intake.imagine(here, ImagineRequest(DOCTOR))
        assert not isinstance(guided, Refusal)
        assert guided.spec.mitigation == {
            "mode": "fair-guidance",
            "edit_scale": settings.fair_edit_scale,
            "warmup_steps": settings.fair_warmup_steps,
            "threshold": settings.fair_threshold,
            "momentum_scale": 0.5,
            "momentum_beta": 0.6,
            "concepts": ["female person", "male person"],
        }
        chosen = await intake.imagine(here, ImagineRequest(DOCTOR, mitigation="off"))
        assert not isinstance(chosen, Refusal) and chosen.spec.mitigation is None
        # Stored with the row and read back as the same record.
        job = await store.create_job(guided.spec)
        assert job.mitigation == guided.spec.mitigation
        assert job.to_json()["mitigation"]["mode"] == "fair-guidance"
    assert set(MITIGATIONS) == {"off", "diverse-prompts", "fair-guidance"}


@pytest.mark.heavy  # four CLI processes (~80 s on a busy 2-core box); the engine-level twin is unmarked
def test_a_diverse_prompts_job_records_its_descriptors_and_reruns_exactly(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    env = _env(tiny_models, tmp_path)
    job = _json(
        _cli(
            ["imagine", f"{DOCTOR} --mitigation diverse-prompts", "--no-expand", "--seed", "5", "--json"],
            env,
            tmp_path,
        )
    )
    assert job["status"] == "done", job["reason"]
    assert job["mitigation"] == {"mode": "diverse-prompts"}
    assert job["render"]["mitigation"]["descriptors"] == [
        p.removeprefix("a photo of the face of ")
        .removeprefix("a ")
        .removeprefix("an ")
        .removesuffix(" doctor")
        for p in job["prompts"]
    ]
    assert len(set(job["prompts"])) == 4
    rerun = _json(_cli(["rerun", job["job_id"], "--json"], env, tmp_path))
    assert rerun["mitigation"] == job["mitigation"]
    assert rerun["prompts"] == job["prompts"]
    for new, old in zip(rerun["images"], job["images"], strict=True):
        assert Path(new).read_bytes() == Path(old).read_bytes()
    shown = _cli(["show", job["job_id"]], env, tmp_path)
    assert "mitigation: diverse-prompts" in shown.stdout
    assert (
        json.loads(_cli(["show", rerun["job_id"], "--json"], env, tmp_path).stdout)["parent_id"]
        == job["job_id"]
    )


def test_a_remote_worker_gets_the_mitigation_as_plain_data() -> None:
    from bot.engine.mitigation import FairGuidance, mitigation_record
    from bot.engine.types import GenerationRequest
    from bot.engine.workers.protocol import decode_request, encode_request
    from tests.conftest import tiny_job

    request = tiny_job(
        GenerationRequest, mitigation=mitigation_record("fair-guidance", FairGuidance(warmup_steps=3))
    )
    body = json.loads(json.dumps(encode_request(request, job="j1")))
    assert decode_request(body) == ("j1", request)
