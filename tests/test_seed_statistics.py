"""The demo's statistics over seeds: Student-t intervals, paired effects per step of the
method, and the claim each supports."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fcnwild.tools.experiment import seed_statistics as ss


def test_interval_is_the_student_t_interval():
    values = [28.0, 26.3, 25.1, 30.2]
    interval = ss.Interval.of(values)
    sd = np.std(values, ddof=1)
    half = stats.t.ppf(0.95, 3) * sd / 2
    assert interval.mean == pytest.approx(np.mean(values))
    assert (interval.low, interval.high) == pytest.approx((np.mean(values) - half,
                                                           np.mean(values) + half))
    assert interval.text() == f"{np.mean(values):.1f} ± {half:.1f}"
    # The interval covers the mean of the distribution it samples about 90% of the time.
    rng = np.random.default_rng(0)
    hits = [ss.Interval.of(rng.normal(3.0, 2.0, 5)) for _ in range(4000)]
    coverage = np.mean([i.low < 3.0 < i.high for i in hits])
    assert 0.88 < coverage < 0.92


def test_one_sample_has_no_interval():
    interval = ss.Interval.of([31.5])
    assert interval.mean == 31.5 and math.isnan(interval.low) and math.isnan(interval.sd)
    assert interval.text(signed=True) == "+31.5"


def test_effects_are_paired_by_seed():
    miou = {"source_only": [20.0, 30.0, 25.0], "ga": [26.0, 35.0, 31.0],
            "ga_ca": [27.0, 34.0, 32.0]}
    found = ss.effects(miou)
    assert list(found) == ["GA", "CA", "GA+CA"]
    interval, diffs = found["GA"]
    assert diffs.tolist() == [6.0, 5.0, 6.0]
    # Paired: the seeds' spread in level (20..30) does not widen the effect's interval.
    assert interval.high - interval.low < 3
    assert found["CA"][1].tolist() == [1.0, -1.0, 1.0]


@pytest.mark.parametrize("diffs, words", [
    ([6.0, 5.0, 6.5], "improves target mIoU over source-only by +5.8 ± "),
    ([6.0, 5.0, -0.5], "not distinguishable from zero"),
    ([-3.0, -4.0, -3.5], "lowers target mIoU below source-only"),
])
def test_claims_say_what_the_interval_supports(diffs, words):
    base = [25.0, 26.0, 27.0]
    miou = {"source_only": base, "ga": [b + d for b, d in zip(base, diffs)]}
    (sentence,) = ss.claims(miou)
    assert sentence.startswith("GA") and words in sentence
    helped = sum(d > 0 for d in diffs)
    assert ("on every seed" in sentence) == (helped == 3)
    if 0 < helped < 3:
        assert f"on {helped} of 3 seeds" in sentence


def test_one_seed_claims_one_sample():
    (ga, ca, total) = ss.claims({"source_only": [25.0], "ga": [30.0], "ga_ca": [31.0]})
    assert "one sample" in ga and "+5.0" in ga and "+1.0" in ca and "+6.0" in total


def test_class_effects_skip_classes_a_seed_lacks():
    iou = {"source_only": [{"road": 10.0, "pole": None}, {"road": 20.0, "pole": 1.0}],
           "ga": [{"road": 30.0, "pole": 2.0}, {"road": 50.0, "pole": 3.0}]}
    found = ss.class_effects(iou, ["road", "pole"])
    assert found["GA"]["road"].mean == 25.0 and found["GA"]["road"].n == 2
    assert found["GA"]["pole"].mean == 2.0 and found["GA"]["pole"].n == 1
    assert set(found) == {"GA"}
