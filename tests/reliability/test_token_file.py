"""The real `python -m bot run` with its token only in a file (DISCORD_TOKEN_FILE), as Docker runs it."""

from __future__ import annotations

from pathlib import Path

from tests.reliability.harness import BotProcess, bot_env

FILE_TOKEN = "FILE-TOKEN-0d5b7e21c94a86f3b1"


async def test_bot_logs_in_with_the_token_from_a_file(make_fake, tmp_path: Path, tiny_models) -> None:
    fake = await make_fake(token=FILE_TOKEN)
    secret = tmp_path / "discord_token"
    secret.write_text(FILE_TOKEN + "\n", encoding="utf-8")
    data = tmp_path / "data"
    env = bot_env(fake=fake, data_dir=data, models=tiny_models, token=None, log_level="DEBUG")
    env["DISCORD_TOKEN_FILE"] = str(secret)
    assert FILE_TOKEN not in "".join(env.values())  # only the path is in the environment

    bot = await BotProcess(env, tmp_path, name="token-file").start()
    await bot.wait_ready(data / "heartbeat.json")
    interaction = await fake.send_slash("imagine", {"seed": "a token in a file"}, user_id=fake.alice_id)
    final = await interaction.wait_final(timeout=120, predicate=lambda m: bool(m.attachments and m.embeds))
    code = await bot.terminate(timeout=120)

    output = bot.output
    stored = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    print(
        f"token-file: exit {code}; {len(output.splitlines())} log lines at DEBUG; grid {final.attachments[0].filename}"
    )
    assert fake.identify_payloads[0]["token"] in (FILE_TOKEN, f"Bot {FILE_TOKEN}")
    assert final.attachments[0].data.startswith(b"\x89PNG")
    assert code == 0
    assert FILE_TOKEN not in output and FILE_TOKEN.encode() not in stored
    assert "Traceback" not in output
