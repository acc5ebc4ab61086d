"""What an experiment's stages show over several seeds: each stage's mean target mIoU with
its confidence interval, the paired per-seed effect of each step of the method, and the
sentence each claim supports.

Seeds share nothing but the schedule (each draws its own benchmark and initialisation), so
the per-seed differences between two stages of one seed are independent samples of the
step's effect; their Student-t interval is what a claim may rest on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.90

# (name, stage, baseline stage): the steps of the method whose effects are claimed.
EFFECTS = (("GA", "ga", "source_only"),
           ("CA", "ga_ca", "ga"),
           ("GA+CA", "ga_ca", "source_only"))


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` samples with the two-sided ``CONFIDENCE`` Student-t interval (NaN
    bounds for one sample: one run says nothing about the spread)."""
    mean: float
    low: float
    high: float
    n: int
    sd: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Interval":
        values = np.asarray(values, dtype=np.float64)
        mean = float(values.mean())
        if len(values) < 2:
            return cls(mean, math.nan, math.nan, len(values), math.nan)
        sd = float(values.std(ddof=1))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)) * sd / math.sqrt(len(values))
        return cls(mean, mean - half, mean + half, len(values), sd)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self, signed: bool = False) -> str:
        mean = f"{self.mean:+.1f}" if signed else f"{self.mean:.1f}"
        return mean if self.n < 2 else f"{mean} ± {self.half_width:.1f}"

    def to_dict(self) -> dict:
        """For JSON: what one sample cannot give is null, not NaN (which JSON lacks)."""
        return {"mean": self.mean, "n": self.n,
                **{k: None if math.isnan(v) else v
                   for k, v in (("low", self.low), ("high", self.high), ("sd", self.sd))}}


def stage_intervals(miou: Mapping[str, Sequence[float]]) -> dict[str, Interval]:
    """Per stage, the interval of its per-seed mIoU."""
    return {stage: Interval.of(values) for stage, values in miou.items()}


def effects(miou: Mapping[str, Sequence[float]]) -> dict[str, tuple[Interval, np.ndarray]]:
    """Per step of the method whose stages were run: the interval of its per-seed effect
    and the per-seed differences themselves."""
    out = {}
    for name, stage, baseline in EFFECTS:
        if stage in miou and baseline in miou:
            diffs = np.asarray(miou[stage], dtype=np.float64) - np.asarray(miou[baseline])
            out[name] = (Interval.of(diffs), diffs)
    return out


_BASELINE_WORDS = {"source_only": "source-only", "ga": "GA"}


def claim(name: str, baseline: str, effect: Interval, diffs: np.ndarray) -> str:
    """The sentence the per-seed effects of one step support, at ``CONFIDENCE``."""
    over = _BASELINE_WORDS[baseline]
    if effect.n < 2:
        return (f"{name} changes target mIoU by {effect.mean:+.1f} points over {over} on this "
                f"seed. That is one sample: it says nothing about another seed or processor "
                f"(run --seeds for an interval).")
    helped = int((diffs > 0).sum())
    tally = "on every seed" if helped == effect.n else f"on {helped} of {effect.n} seeds"
    interval = (f"{effect.mean:+.1f} ± {effect.half_width:.1f} points "
                f"({CONFIDENCE:.0%} interval over {effect.n} seeds)")
    if effect.low > 0:
        return f"{name} improves target mIoU over {over} by {interval}; it helps {tally}."
    if effect.high < 0:
        return f"{name} lowers target mIoU below {over} by {interval}."
    return (f"{name}'s effect over {over} is {interval}: not distinguishable from zero at "
            f"this budget (it helps {tally}).")


def claims(miou: Mapping[str, Sequence[float]]) -> list[str]:
    """One sentence per step of the method whose stages were run."""
    found = effects(miou)
    return [claim(name, baseline, *found[name]) for name, _, baseline in EFFECTS if name in found]


def class_effects(iou: Mapping[str, Sequence[Mapping[str, float | None]]],
                  classes: Sequence[str]) -> dict[str, dict[str, Interval | None]]:
    """Per step of the method and class: the interval of the per-seed IoU change (None
    where a seed's val split lacks the class)."""
    out: dict[str, dict[str, Interval | None]] = {}
    for name, stage, baseline in EFFECTS:
        if stage not in iou or baseline not in iou:
            continue
        out[name] = {}
        for c in classes:
            pairs = [(a[c], b[c]) for a, b in zip(iou[stage], iou[baseline])]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            out[name][c] = Interval.of(diffs) if diffs else None
    return out
