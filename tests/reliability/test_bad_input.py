"""Bad input through the fake Discord, as a malicious client could send it (Discord's own checks bypassed).

One table of slash-command inputs and one of forged component custom_ids. Every case must get a reply
(ephemeral for refusals, a job for accepted inputs), no reply may show a traceback, and the job table may
grow only for accepted inputs.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from bot.engine.validation import normalize_user_text
from bot.store import JobSpec
from tests.cogs.conftest import RunningBot, start_bot
from tests.fakediscord import FakeDiscord, FakeInteraction, FakeMessage
from tests.helpers import job_spec
from tests.reliability.harness import result_counts, traceback_leaks

OPT_INTEGER, OPT_NUMBER, OPT_STRING = 4, 10, 3
OTHER_GUILD = 4242
NOT_FOUND = "No job `{}` in your history."


@dataclass
class Case:
    """One input and what must happen: `refused` (ephemeral), `accepted` (row, job done), `fails`
    (row, job fails with a plain message) or `ignored` (no handler: no reply, nothing written)."""

    name: str
    command: str
    options: dict[str, Any] | list[dict[str, Any]]
    outcome: str
    expect: str = ""
    verbatim: dict[str, str] = field(default_factory=dict)
    user: str = "alice"


def _opt(name: str, value: Any, kind: int) -> dict[str, Any]:
    return {"name": name, "type": kind, "value": value}


def slash_cases(fake: FakeDiscord) -> list[Case]:
    bob, role = fake.bob_id, fake.guild_id
    seed = {"name": "seed", "type": OPT_STRING, "value": "a cat"}
    cases = [
        Case("empty seed", "imagine", {"seed": ""}, "refused", "`seed` must not be empty"),
        Case(
            "whitespace-only seed", "imagine", {"seed": " \t \u3000 "}, "refused", "`seed` must not be empty"
        ),
        Case("seed over the limit", "imagine", {"seed": "x" * 501}, "refused", "the limit is 500"),
        Case("seed of 6000 chars", "imagine", {"seed": "long " * 1200}, "refused", "the limit is 500"),
        Case("NUL in seed", "imagine", {"seed": "cat\x00dog"}, "refused", "control character (U+0000)"),
        Case("ANSI escape in seed", "imagine", {"seed": "red \x1b[31mcat"}, "refused", "(U+001B)"),
        Case("DEL in seed", "imagine", {"seed": "cat\x7f"}, "refused", "(U+007F)"),
        Case("C1 control in seed", "imagine", {"seed": "cat\u0085dog"}, "refused", "(U+0085)"),
        Case(
            "BEL in negative",
            "imagine",
            {"seed": "cat", "negative": "\x07"},
            "refused",
            "`negative` contains",
        ),
        Case(
            "negative over the limit",
            "imagine",
            {"seed": "cat", "negative": "n" * 501},
            "refused",
            "limit is 500",
        ),
        Case(
            "seed sent as a number",
            "imagine",
            [_opt("seed", 12345, OPT_INTEGER)],
            "refused",
            "`seed` must be text",
        ),
    ]
    numbers: list[tuple[str, Any, int, str]] = [
        ("steps", 0, OPT_INTEGER, "`steps` must be 1..50, got 0"),
        ("steps", -5, OPT_INTEGER, "`steps` must be 1..50, got -5"),
        ("steps", 10**12, OPT_INTEGER, "`steps` must be 1..50"),
        ("steps", 400, OPT_INTEGER, "`steps` must be 1..50, got 400"),
        ("steps", 2.5, OPT_NUMBER, "`steps` must be a whole number"),
        ("steps", float("nan"), OPT_NUMBER, "`steps` must be a whole number"),
        ("steps", "ten", OPT_STRING, "`steps` must be a whole number"),
        ("guidance", -1.0, OPT_NUMBER, "`guidance` must be 0..20"),
        ("guidance", 21.0, OPT_NUMBER, "`guidance` must be 0..20"),
        ("guidance", 1e308, OPT_NUMBER, "`guidance` must be 0..20"),
        ("guidance", float("nan"), OPT_NUMBER, "`guidance` must be a finite number"),
        ("guidance", float("inf"), OPT_NUMBER, "`guidance` must be a finite number"),
        ("guidance", float("-inf"), OPT_NUMBER, "`guidance` must be a finite number"),
        ("guidance", "strict", OPT_STRING, "`guidance` must be a finite number"),
        ("count", 0, OPT_INTEGER, "`count` must be 1..4, got 0"),
        ("count", -1, OPT_INTEGER, "`count` must be 1..4, got -1"),
        ("count", 10, OPT_INTEGER, "`count` must be 1..4, got 10"),
        ("count", 2**63, OPT_INTEGER, "`count` must be 1..4"),
        ("seed_number", -1, OPT_INTEGER, "`seed` must be 0..4294967295, got -1"),
        ("seed_number", 2**32, OPT_INTEGER, "`seed` must be 0..4294967295"),
        ("seed_number", 2**64, OPT_INTEGER, "`seed` must be 0..4294967295"),
        ("seed_number", float("nan"), OPT_NUMBER, "`seed` must be a whole number"),
    ]
    for name, value, kind, expect in numbers:
        cases.append(Case(f"{name}={value!r}", "imagine", [seed, _opt(name, value, kind)], "refused", expect))
    cases += [
        Case("aspect not a choice", "imagine", {"seed": "cat", "aspect": "diagonal"}, "refused", "`aspect`"),
        Case(
            "expand not a boolean",
            "imagine",
            [seed, _opt("expand", "yes please", OPT_STRING)],
            "refused",
            "`expand`",
        ),
    ]
    accepted = {
        "emoji and zero-width joiners": (
            "👩\u200d👩\u200d👧\u200d👦 family picnic 🏳️\u200d🌈 zero\u200bwidth",
            "",
        ),
        "right-to-left text": (
            "שלום עולם مرحبا بالعالم \u202eevil override\u202c",
            "\u05e9\u05dc\u05d5\u05dd",
        ),
        "mentions": (f"@everyone @here <@{bob}> <@&{role}> party", f"@here <@{bob}> <@&{role}> @everyone"),
        "SQL injection": ("'); DROP TABLE jobs;--", '" OR 1=1; DELETE FROM tiles; --'),
        "padded seed": ("   padded seed\n", ""),
    }
    for name, (text, negative) in accepted.items():
        options = {"seed": text, **({"negative": negative} if negative else {})}
        # Stored as one plain line: bidi controls dropped, whitespace collapsed (the rest verbatim).
        stored = {"seed_text": normalize_user_text(text), "negative": normalize_user_text(negative)}
        cases.append(Case(name, "imagine", options, "accepted", verbatim=stored))
    cases.append(
        Case(
            "seed within the char limit but over 75 CLIP tokens",
            "imagine",
            {"seed": " ".join(["zq"] * 160)[:500]},
            "refused",  # checked with the tokenizer before a row is written
            "tokens long; Stable Diffusion reads at most",
        )
    )
    cases += [
        Case(
            "history of an unknown job",
            "history",
            {"job": "ffffffffff"},
            "refused",
            NOT_FOUND.format("ffffffffff"),
        ),
        Case(
            "history of SQL",
            "history",
            {"job": "'); DROP TABLE jobs;--"},
            "refused",
            "No job `'); DROP TABLE",
        ),
        Case("history page 0", "history", [_opt("page", 0, OPT_INTEGER)], "refused", "Page 1/"),
        Case("history page -7", "history", [_opt("page", -7, OPT_INTEGER)], "refused", "Page 1/"),
        Case("history page 10**12", "history", [_opt("page", 10**12, OPT_INTEGER)], "refused", "Page 1/"),
        Case("history page as text", "history", [_opt("page", "two", OPT_STRING)], "refused", "`page`"),
    ]
    return cases


def _reply_text(message: FakeMessage) -> str:
    return message.content + " " + " ".join(str(e.get("footer", {}).get("text", "")) for e in message.embeds)


async def _reply(interaction: FakeInteraction) -> FakeMessage:
    return await interaction.wait_final(timeout=20, predicate=lambda m: bool(m.content or m.embeds))


class Runner:
    """Sends cases and collects every problem instead of stopping at the first."""

    def __init__(self, fake: FakeDiscord, bot: RunningBot) -> None:
        self.fake = fake
        self.bot = bot
        self.problems: list[str] = []
        self.tried = 0
        self.accepted: dict[str, tuple[Case, FakeInteraction, str]] = {}

    def user(self, name: str) -> int:
        return {"alice": self.fake.alice_id, "bob": self.fake.bob_id, "mod": self.fake.mod_id}[name]

    async def rows(self) -> int:
        return await self.bot.store.count_jobs(any_user=True)

    async def slash(self, case: Case) -> None:
        self.tried += 1
        before = await self.rows()
        interaction = await self.fake.send_slash(
            case.command, case.options, user_id=self.user(case.user), validate=False
        )
        if case.outcome == "refused":
            if not await self._replied_ephemerally(case.name, interaction, case.expect):
                return
            await asyncio.sleep(0.05)
            if await self.rows() != before:
                self.problems.append(f"{case.name}: refused but the job table changed")
            return
        try:
            await interaction.wait_deferred(timeout=10)
        except TimeoutError:
            reply = interaction.original
            self.problems.append(f"{case.name}: not accepted; reply {reply.content if reply else None!r}")
            return
        if not await self._rows_above(before, timeout=10):
            self.problems.append(f"{case.name}: deferred but no row written")
            return
        newest = (await self.bot.store.list_jobs(any_user=True, limit=1))[0]
        for name, value in case.verbatim.items():
            if getattr(newest, name) != value:
                self.problems.append(
                    f"{case.name}: {name} stored as {getattr(newest, name)!r}, sent {value!r}"
                )
        self.accepted[newest.id] = (case, interaction, newest.id)

    async def _replied_ephemerally(self, name: str, interaction: FakeInteraction, expect: str) -> bool:
        """Notes a problem unless the reply is ephemeral and says `expect`; False when no reply came."""
        try:
            reply = await _reply(interaction)
        except TimeoutError:
            self.problems.append(f"{name}: no reply")
            return False
        if not reply.ephemeral:
            self.problems.append(f"{name}: reply not ephemeral: {reply.content!r}")
        if expect not in _reply_text(reply):
            self.problems.append(f"{name}: expected {expect!r}, got {_reply_text(reply)[:300]!r}")
        return True

    async def _rows_above(self, before: int, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if await self.rows() > before:
                return True
            await asyncio.sleep(0.05)
        return False

    async def click(
        self, message: FakeMessage, name: str, component: dict[str, Any], user: str, expect: str
    ) -> None:
        """Put a forged component on `message` (a tampered client) and use it."""
        self.tried += 1
        before = await self.rows()
        message.components = [{"type": 1, "components": [component]}]
        custom_id = component["custom_id"]
        if component["type"] == 3:
            value = component["options"][0]["value"]
            interaction = await self.fake.select(message, custom_id, [value], user_id=self.user(user))
        else:
            interaction = await self.fake.click_button(message, custom_id, user_id=self.user(user))
        if expect == "":
            await asyncio.sleep(1.5)
            if interaction.callback_types:
                self.problems.append(
                    f"{name}: expected no handler, got callback {interaction.callback_types}"
                )
        elif not await self._replied_ephemerally(name, interaction, expect):
            return
        await asyncio.sleep(0.05)
        if await self.rows() != before:
            self.problems.append(f"{name}: the job table changed")


def _button(custom_id: str) -> dict[str, Any]:
    return {"type": 2, "style": 2, "label": "forged", "custom_id": custom_id}


def _select(custom_id: str, value: str) -> dict[str, Any]:
    return {"type": 3, "custom_id": custom_id, "options": [{"label": "forged", "value": value}]}


async def _final_row(bot: RunningBot, spec: JobSpec) -> str:
    job = await bot.store.create_job(spec)
    await bot.store.mark_failed(job.id, "cancelled by its owner", status="cancelled")
    await bot.store.claim_delivery(job.id)
    await bot.store.mark_delivered(job.id, message_id=None)
    return job.id


async def test_bad_inputs_are_refused_or_stored_verbatim(fake: FakeDiscord, bot_settings) -> None:
    bot = await start_bot(
        fake, bot_settings(count=1, steps=1, max_pending_per_user=50, max_queue=100, preview_every=0)
    )
    try:
        runner = Runner(fake, bot)
        for case in slash_cases(fake):
            await runner.slash(case)

        # Every accepted job finishes (or fails plainly) and is delivered once.
        for job_id in runner.accepted:
            deadline = asyncio.get_running_loop().time() + 90
            while (job := await bot.store.get_job(job_id)).delivery != "sent":
                assert asyncio.get_running_loop().time() < deadline, f"{job_id} never delivered: {job}"
                await asyncio.sleep(0.1)
        counts = result_counts(fake)
        result_message: FakeMessage | None = None
        for job_id, (case, interaction, _) in runner.accepted.items():
            job = await bot.store.get_job(job_id)
            want = "done" if case.outcome == "accepted" else "failed"
            if job.status != want:
                runner.problems.append(f"{case.name}: job {job.status} ({job.reason}), expected {want}")
            if case.outcome == "fails" and case.expect not in (
                interaction.original.content if interaction.original else ""
            ):
                runner.problems.append(f"{case.name}: failure text {interaction.original.content!r}")
            if counts[job_id] != 1:
                runner.problems.append(f"{case.name}: result posted {counts[job_id]} times")
            if case.name == "SQL injection":
                result_message = interaction.original

        # Forged components, on a tampered copy of a real result message.
        assert result_message is not None
        alice_job = next(j for j, (c, _, _) in runner.accepted.items() if c.name == "SQL injection")
        bob_job = await _final_row(bot, _spec(fake.bob_id, fake.guild_id, "bob's secret"))
        foreign_job = await _final_row(bot, _spec(fake.alice_id, OTHER_GUILD, "alice elsewhere"))
        alice, bob = fake.alice_id, fake.bob_id
        forged = [
            ("unknown action", _button("ib:zz:0123456789"), "alice", ""),
            ("malformed job id", _button("ib:rr:XYZ'--"), "alice", ""),
            ("tile 0", _button(f"ib:v:{alice_job}:0"), "alice", ""),
            ("not our prefix", _button("admin:delete_all"), "mod", ""),
            ("tile out of range", _button(f"ib:v:{alice_job}:9"), "alice", "has no image 9"),
            ("unknown job id", _button("ib:rr:ffffffffff"), "alice", "doesn't exist"),
            ("another user's job: re-render", _button(f"ib:rr:{alice_job}"), "bob", "Only the person"),
            ("another user's job: upscale", _button(f"ib:u:{alice_job}:1"), "bob", "Only the person"),
            ("another user's job: delete", _button(f"ib:del:{alice_job}"), "bob", "(or a moderator)"),
            ("another guild's job", _button(f"ib:rr:{foreign_job}"), "alice", "doesn't exist"),
            ("another guild's job as a moderator", _button(f"ib:post:{foreign_job}"), "mod", "doesn't exist"),
            ("history page of another member", _button(f"ib:hp:{alice}:{bob}:0"), "alice", "Manage Server"),
            (
                "history page of another viewer",
                _button(f"ib:hp:{bob}:{bob}:0"),
                "alice",
                "isn't your history",
            ),
            (
                "history select of another viewer",
                _select(f"ib:hs:{bob}", bob_job),
                "alice",
                "isn't your history",
            ),
            (
                "history select of another user's job",
                _select(f"ib:hs:{alice}", bob_job),
                "alice",
                NOT_FOUND.format(bob_job),
            ),
            (
                "history select of a job elsewhere",
                _select(f"ib:hs:{alice}", foreign_job),
                "alice",
                NOT_FOUND.format(foreign_job),
            ),
        ]
        for name, component, user, expect in forged:
            await runner.click(result_message, name, component, user, expect)

        for name, job_id in (
            ("history of another user's job", bob_job),
            ("history of a job elsewhere", foreign_job),
        ):
            await runner.slash(Case(name, "history", {"job": job_id}, "refused", NOT_FOUND.format(job_id)))
        await runner.slash(
            Case("cancel another user's job", "cancel", {"job": bob_job}, "refused", "No waiting job")
        )

        leaks = traceback_leaks(fake.messages.values())
        pings = [m.id for m in fake.messages.values() if fake.pinged_user_ids(m) or fake.pings_everyone(m)]
        db = sqlite3.connect(bot.settings.db_path)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        db.close()
        print(
            f"{runner.tried} bad-input cases tried ({len(runner.accepted)} accepted and stored verbatim, "
            f"{len(forged)} forged components); problems: {len(runner.problems)}; traceback leaks: "
            f"{len(leaks)}; messages that ping someone: {len(pings)}"
        )
        for problem in runner.problems:
            print("  problem:", problem)
        assert runner.problems == []
        assert leaks == []
        assert pings == []
        assert {"jobs", "tiles", "meta"} <= tables
    finally:
        await bot.stop()


def _spec(user_id: int, guild_id: int, seed_text: str) -> JobSpec:
    return job_spec(
        seed_text=seed_text,
        count=1,
        steps=1,
        job_seed=1,
        user_id=user_id,
        guild_id=guild_id,
        channel_id=None,
    )
