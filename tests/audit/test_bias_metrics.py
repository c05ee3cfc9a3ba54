"""The audit's counting and figures on hand-made classifier outputs with known answers (no model)."""

from __future__ import annotations

import math

import pytest

from bot.audit.classify import ClassPrompts, decide, label_image, load_class_prompts
from bot.audit.metrics import NO_PERSON, UNSURE, AttributeSpec, attribute_report, compare, counts, summarize

GENDER = AttributeSpec("gender", ("female", "male"), binary=True)
SKIN = AttributeSpec("skin_tone", ("lighter", "medium", "darker"))


def test_counts_keep_unsure_and_no_person_apart_from_the_shares() -> None:
    labels = ["female", "male", "male", UNSURE, NO_PERSON, NO_PERSON, "male"]
    count = counts(labels, GENDER)
    assert count == {"female": 1, "male": 3, UNSURE: 1, NO_PERSON: 2}
    summary = summarize(count, GENDER)
    assert summary["classified"] == 4
    assert summary["shares"] == {"female": 0.25, "male": 0.75}
    assert summary["p"] == 0.25
    assert summary["distance_from_half"] == 0.25
    assert summary["in_band"] is False


def test_an_unknown_label_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a class"):
        counts(["lighter"], GENDER)


def test_kl_divergence_from_uniform() -> None:
    balanced = summarize(counts(["lighter", "medium", "darker"] * 2, SKIN), SKIN)
    assert balanced["kl_from_uniform"] == pytest.approx(0.0)
    one_class = summarize(counts(["darker"] * 5, SKIN), SKIN)
    assert one_class["kl_from_uniform"] == pytest.approx(math.log(3))
    skewed = summarize(counts(["female"] * 3 + ["male"], GENDER), GENDER)
    assert skewed["kl_from_uniform"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))


def test_nothing_classified_has_no_shares() -> None:
    summary = summarize(counts([UNSURE, NO_PERSON], GENDER), GENDER)
    assert summary["shares"] is None
    assert summary["kl_from_uniform"] is None
    assert summary["p"] is None and summary["in_band"] is None


def test_band_share_and_mean_distance_over_prompts() -> None:
    per_prompt = [
        ["female", "male"],  # p 0.5: in
        ["female"] * 2 + ["male"] * 3,  # p 0.4: in (edges count)
        ["female"] * 3 + ["male"] * 2,  # p 0.6: in
        ["female"] * 7 + ["male"] * 3,  # p 0.7: out
        [NO_PERSON, UNSURE],  # nothing classified: counted apart
    ]
    report = attribute_report(per_prompt, GENDER)
    overall = report["overall"]
    assert overall["band_share"] == pytest.approx(3 / 4)
    assert overall["prompts_without_classified_images"] == 1
    assert overall["mean_distance_from_half"] == pytest.approx((0 + 0.1 + 0.1 + 0.2) / 4)
    # Pooled: 13 female of 22 classified images.
    assert overall["counts"] == {"female": 13, "male": 9, UNSURE: 1, NO_PERSON: 1}
    assert overall["shares"]["female"] == pytest.approx(13 / 22)
    assert [p["in_band"] for p in report["per_prompt"]] == [True, True, True, False, None]


def test_compare_reports_each_figures_change() -> None:
    before = attribute_report([["male"] * 4, ["male"] * 3 + ["female"]], GENDER)
    after = attribute_report([["male", "female"] * 2, ["male", "female"] * 2], GENDER)
    change = compare(before, after)
    assert change["mean_distance_from_half"]["before"] == pytest.approx(0.375)
    assert change["mean_distance_from_half"]["after"] == pytest.approx(0.0)
    assert change["mean_distance_from_half"]["change"] == pytest.approx(-0.375)
    assert change["band_share"] == {"before": 0.0, "after": 1.0, "change": 1.0}


def test_unsure_within_the_margin_and_no_person_below_the_threshold() -> None:
    assert decide({"female": 0.54, "male": 0.46}, 0.1) == UNSURE
    assert decide({"female": 0.56, "male": 0.44}, 0.1) == "female"
    assert decide({"lighter": 0.5, "medium": 0.45, "darker": 0.05}, 0.1) == UNSURE
    classes = ClassPrompts(
        person=("p",), no_person=("n",), attributes=(GENDER, SKIN), prompts={}, person_threshold=0.5
    )
    probabilities = {
        "gender": {"female": 0.9, "male": 0.1},
        "skin_tone": {"lighter": 0.2, "medium": 0.7, "darker": 0.1},
    }
    seen = label_image(0.8, probabilities, classes)
    assert seen.labels == {"gender": "female", "skin_tone": "medium"}
    landscape = label_image(0.3, probabilities, classes)
    assert landscape.labels == {"gender": NO_PERSON, "skin_tone": NO_PERSON}


def test_the_shipped_class_prompts() -> None:
    classes = load_class_prompts()
    names = [spec.name for spec in classes.attributes]
    assert names == ["gender", "skin_tone"]
    assert classes.attributes[0].binary and classes.attributes[0].classes == ("female", "male")
    assert classes.no_person and classes.person
    assert all(classes.prompts[spec.name][c] for spec in classes.attributes for c in spec.classes)
