"""The bot token never leaves the process: not in logs (even at DEBUG), files, the database or errors.

A sentinel token runs through start-up, a job, SIGTERM, a rejected login, `sync`, a missing token and a
bad setting, in subprocesses (the real `python -m bot` with its log configuration) and in-process (every
library logger at DEBUG through caplog). Each output, the SQLite file (+ WAL) and the heartbeat file are
searched for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

from bot.app import run_bot
from tests.cogs.conftest import start_bot
from tests.reliability.harness import BotProcess, bot_env

SENTINEL = "SENTINEL-TOKEN-4f8a2c9e71b3d6a05c2e"
GUILDS_INTENT = 1


def _files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hits(texts: dict[str, str | bytes]) -> dict[str, int]:
    found = {}
    for name, text in texts.items():
        count = text.count(SENTINEL.encode()) if isinstance(text, bytes) else text.count(SENTINEL)
        if count:
            found[name] = count
    return found


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


async def test_run_job_and_sigterm_in_a_subprocess(make_fake, tmp_path: Path, tiny_models) -> None:
    fake = await make_fake(token=SENTINEL)
    data = tmp_path / "data"
    env = bot_env(fake=fake, data_dir=data, models=tiny_models, token=SENTINEL, log_level="DEBUG")
    bot = await BotProcess(env, tmp_path, name="run").start()
    await bot.wait_ready(data / "heartbeat.json")
    interaction = await fake.send_slash("imagine", {"seed": "keep it secret"}, user_id=fake.alice_id)
    await interaction.wait_final(timeout=120, predicate=lambda m: bool(m.attachments and m.embeds))
    code = await bot.terminate(timeout=120)

    output = bot.output
    files = _files_under(data)
    conn = sqlite3.connect(data / "history.sqlite3")
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    heartbeat = json.loads(files["heartbeat.json"])
    hits = _hits({"output": output, **files})
    print(
        f"secrets/run: exit {code}; {len(output.splitlines())} log lines at DEBUG, {len(files)} files in the data "
        f"folder ({sorted(files)}); sentinel hits {hits}; intents {fake.intents}; integrity {integrity}; "
        f"last heartbeat connected={heartbeat['connected']}"
    )
    # The token was really used (so its absence everywhere else means something).
    assert fake.identify_payloads[0]["token"] in (SENTINEL, f"Bot {SENTINEL}")
    assert any(r.authorization == f"Bot {SENTINEL}" for r in fake.requests)
    assert code == 0
    assert "stopped" in output and "Traceback" not in output
    assert "history.sqlite3-wal" not in files  # closed: the last connection checkpointed and removed the WAL
    assert integrity == "ok"
    assert heartbeat["connected"] is False
    assert hits == {}
    assert fake.intents == GUILDS_INTENT


async def test_error_paths_in_subprocesses(make_fake, tmp_path: Path, tiny_models) -> None:
    right = await make_fake(token=SENTINEL)
    wrong = await make_fake(token="some-other-token")

    def env_for(name: str, server, token: str | None, **settings: object) -> tuple[str, BotProcess, str]:
        env = bot_env(
            fake=server,
            data_dir=tmp_path / name / "data",
            models=tiny_models,
            token=token,
            log_level="DEBUG",
            **settings,
        )
        command = "sync" if name == "sync" else "run"
        return name, BotProcess(env, tmp_path / name, command=command, name=name), command

    cases = [
        env_for("rejected-token", wrong, SENTINEL),
        env_for("sync", right, SENTINEL),
        env_for("missing-token", right, None),
        env_for("bad-setting", right, SENTINEL, steps="many"),
        env_for("token-in-wrong-variable", right, SENTINEL, device=SENTINEL),
    ]
    for _, process, _ in cases:
        await process.start()
    codes = await asyncio.gather(*(process.wait_exit(180) for _, process, _ in cases))

    results = {}
    for (name, process, command), code in zip(cases, codes, strict=True):
        output = process.output
        data = tmp_path / name / "data"
        files = _files_under(data) if data.exists() else {}
        results[name] = (command, code, _error_lines(output), _hits({"output": output, **files}), output)
    for name, (command, code, errors, hits, _) in results.items():
        print(
            f"secrets/{name}: `python -m bot {command}` exit {code}; error lines {errors}; sentinel hits {hits}"
        )

    assert results["rejected-token"][1] == 2
    assert results["rejected-token"][2] == [
        "error: Discord rejected DISCORD_TOKEN (401 Unauthorized): reset the token and try again"
    ]
    assert results["sync"][1] == 0 and "slash commands synced" in results["sync"][4]
    assert right.sync_count == 1
    assert results["missing-token"][1] == 2
    assert (
        len(results["missing-token"][2]) == 1 and "DISCORD_TOKEN is not set" in results["missing-token"][2][0]
    )
    assert results["bad-setting"][1] == 2 and results["bad-setting"][2][0].startswith(
        "error: invalid setting IMAGINE_STEPS"
    )
    assert results["token-in-wrong-variable"][1] == 2
    assert results["token-in-wrong-variable"][2][0].startswith("error: invalid setting IMAGINE_DEVICE")
    for name, (_, _, errors, hits, output) in results.items():
        assert hits == {}, name
        assert "Traceback" not in output, f"{name}:\n{output[-2000:]}"
        if name != "sync":
            assert len(errors) == 1, name


async def test_in_process_debug_logs_and_errors(make_fake, settings_for, caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG)
    for noisy in ("discord", "discord.http", "discord.gateway", "discord.client", "bot", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.DEBUG)
    try:
        fake = await make_fake(token=SENTINEL)
        settings = settings_for(fake, discord_token=SENTINEL, log_level="DEBUG", count=1, steps=2)
        bot = await start_bot(fake, settings)
        try:
            interaction = await fake.send_slash(
                "imagine", {"seed": "debug everything"}, user_id=fake.alice_id
            )
            await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        finally:
            code = await bot.stop()

        wrong = await make_fake(token="some-other-token")
        rejected = await run_bot(settings_for(wrong, discord_token=SENTINEL), handle_signals=False)
    finally:
        for noisy in ("discord", "discord.http", "discord.gateway", "discord.client", "bot", "aiosqlite"):
            logging.getLogger(noisy).setLevel(logging.NOTSET)
    captured = capsys.readouterr()
    records = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    files = _files_under(settings.data_dir)
    hits = _hits({"log records": records, "stdout": captured.out, "stderr": captured.err, **files})
    print(
        f"secrets/in-process: {len(caplog.records)} log records at DEBUG "
        f"({sum(r.name.startswith('discord.http') for r in caplog.records)} from discord.http); run exit {code}, "
        f"rejected token exit {rejected}; sentinel hits {hits}"
    )
    assert any(r.name == "discord.http" for r in caplog.records)  # DEBUG really reached the HTTP layer
    assert code == 0 and rejected == 2
    assert hits == {}
    assert fake.intents == GUILDS_INTENT
