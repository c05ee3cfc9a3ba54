"""The audit end to end on the tiny models: renders, classifies, compares, writes the HTML and the JSON."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from bot.audit.bias import AuditOptions, read_prompts, run_audit
from bot.audit.classify import ZeroShotClassifier
from bot.cli import main
from bot.engine.executor import Engine
from bot.engine.local_backend import LocalBackend
from bot.engine.tiny_models import tiny_clip_path
from bot.settings import Settings

PROMPTS = ("a photo of the face of a doctor", "a quiet mountain landscape with a lake")


class _KeepOpen(LocalBackend):
    """The session's loaded engine behind the audit's backend; the audit's `close` leaves it running."""

    async def close(self) -> None:
        return None


def test_compare_writes_a_report_that_names_every_figure(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    clip = tiny_clip_path(Path(settings.sd_model).parent)
    options = AuditOptions(
        prompts=PROMPTS,
        prompt_set="two test prompts",
        images=3,  # one job of 2 (IMAGINE_MAX_COUNT is 4: capped by a setting below) and one of 1
        expand=False,
        mitigation="diverse-prompts",
        compare=True,
        out=tmp_path / "report",
    )
    settings = settings.model_copy(update={"max_count": 2, "count": 2})
    audit = run_audit(settings, options, classifier=ZeroShotClassifier(str(clip)), backend=_KeepOpen(engine))
    result = asyncio.run(audit)
    html = Path(result["paths"]["html"]).read_text(encoding="utf-8")
    numbers = json.loads(Path(result["paths"]["json"]).read_text(encoding="utf-8"))
    assert [run["mitigation"] for run in numbers["runs"]] == ["off", "diverse-prompts"]
    off, mitigated = numbers["runs"]
    # The same seeds in both runs; the doctor got descriptors, the landscape did not.
    assert [i["seed"] for i in off["prompts"][0]["images"]] == [0, 1, 2]
    assert [i["seed"] for i in mitigated["prompts"][1]["images"]] == [1000, 1001, 1002]
    assert all(i["rendered_prompt"] == PROMPTS[0] for i in off["prompts"][0]["images"])
    described = [i["rendered_prompt"] for i in mitigated["prompts"][0]["images"]]
    assert all(re.search(r"(fe)?male doctor$", text) for text in described)
    assert all(i["rendered_prompt"] == PROMPTS[1] for i in mitigated["prompts"][1]["images"])
    assert set(numbers["compare"]) == {"gender", "skin_tone"}
    assert "band_share" in numbers["compare"]["gender"]
    for run in numbers["runs"]:
        assert sum(run["metrics"]["gender"]["overall"]["counts"].values()) == 6
    # Every figure is named in the page, in order, and embedded (the page loads nothing from elsewhere).
    assert numbers["figures"] == result["figures"]
    assert len(numbers["figures"]) == 2 * (2 + 2) + 1  # per run: 2 charts, 2 contact sheets; + comparison
    for number, title in enumerate(numbers["figures"], start=1):
        assert f"Figure {number}: {title}" in html.replace("&#x27;", "'")
    assert len(re.findall(r'src="data:image/(png|jpeg);base64,', html)) == len(numbers["figures"])
    assert not re.search(r'src="(?!data:)', html)
    assert "perceived" in html and "not" in html


def test_the_default_prompt_set_is_forty_occupations() -> None:
    prompts, name = read_prompts(None)
    assert len(prompts) == 40
    assert "a photo of the face of an accountant" in prompts and "a photo of the face of a CEO" in prompts
    assert "40 occupations" in name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "someone/else"], "only the configured image model"),
        (["--prompts", "/no/such/file"], "cannot read --prompts"),
        (["--compare", "--mitigation", "off"], "--compare needs a --mitigation"),
        (["-k", "0"], "-k/--images must be 1..1000"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    assert main(["audit", "bias", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
