"""The statistics of the demo's learning curve and of its before/after comparison (pure functions).

Every sampled response is one Bernoulli trial (success or not by the task's metric). The intervals treat the
responses of a run as independent trials, which they are only approximately (the responses of one rollout come from
the same policy, and held-out responses to the same prompt share that prompt).

- :func:`wilson_interval`: the Wilson score interval of a proportion (95 % by default).
- :func:`newcombe_difference`: Newcombe's hybrid score interval of a difference of two independent proportions,
  built from the two Wilson intervals (Newcombe 1998, method 10).
- :func:`moving_average_band`: a trailing moving average of the per-update success rate, pooled over the last
  ``window`` updates, with the Wilson interval of the pooled responses as its noise band.
- :func:`rise_verdict`: the rule the demo states: compare the pooled success of the first ``k`` and the last ``k``
  updates; "rise beyond noise" when the whole 95 % Newcombe interval of (last − first) is above 0, "fall beyond
  noise" when it is below 0, otherwise "no clear rise".
- :func:`sparkline`: a one-line text plot of rates in [0, 1] on a fixed scale (a flat curve looks flat).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "Z95",
    "Proportion",
    "Difference",
    "CurvePoint",
    "Verdict",
    "wilson_interval",
    "proportion",
    "newcombe_difference",
    "moving_average_band",
    "default_compare_updates",
    "rise_verdict",
    "sparkline",
]

#: two-sided 95 % normal quantile
Z95 = 1.959963984540054

RISE, FALL, FLAT, TOO_SHORT = "rise beyond noise", "fall beyond noise", "no clear rise", "too few updates to judge"


def _check_counts(successes: int, n: int) -> None:
    if isinstance(successes, bool) or isinstance(n, bool) or not isinstance(successes, int) or not isinstance(n, int):
        raise TypeError(f"successes and n must be integers, got {successes!r} and {n!r}")
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n``; ``(0.0, 1.0)`` when ``n == 0`` (nothing is known)."""
    _check_counts(successes, n)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class Proportion:
    """``successes`` out of ``n`` trials, the rate and its 95 % Wilson interval (``rate`` is ``None`` when n = 0)."""

    successes: int
    n: int
    rate: float | None
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.rate is None:
            return "n/a (0 responses)"
        return f"{self.rate:.2f} [{self.low:.2f}, {self.high:.2f}] ({self.successes}/{self.n})"


def proportion(successes: int, n: int, z: float = Z95) -> Proportion:
    """:class:`Proportion` of ``successes`` out of ``n`` with its Wilson interval."""
    low, high = wilson_interval(successes, n, z)
    return Proportion(successes, n, successes / n if n else None, low, high)


@dataclass(frozen=True)
class Difference:
    """``second.rate − first.rate`` with its 95 % Newcombe interval (``value`` is ``None`` if either n is 0)."""

    first: Proportion
    second: Proportion
    value: float | None
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"first": self.first.as_dict(), "second": self.second.as_dict(), **_fields(self)}

    def __str__(self) -> str:
        if self.value is None:
            return "n/a"
        return f"{self.value:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def _fields(difference: Difference) -> dict:
    return {"value": difference.value, "low": difference.low, "high": difference.high}


def newcombe_difference(first: Proportion, second: Proportion, z: float = Z95) -> Difference:
    """Newcombe's hybrid score interval of ``second.rate − first.rate`` (two independent samples)."""
    if first.n == 0 or second.n == 0:
        return Difference(first, second, None, -1.0, 1.0)
    if (first.low, first.high) != wilson_interval(first.successes, first.n, z):
        first = proportion(first.successes, first.n, z)
    if (second.low, second.high) != wilson_interval(second.successes, second.n, z):
        second = proportion(second.successes, second.n, z)
    p1, p2 = first.rate, second.rate
    d = p2 - p1
    low = d - math.sqrt((p2 - second.low) ** 2 + (first.high - p1) ** 2)
    high = d + math.sqrt((second.high - p2) ** 2 + (p1 - first.low) ** 2)
    return Difference(first, second, d, max(-1.0, low), min(1.0, high))


@dataclass(frozen=True)
class CurvePoint:
    """One update of the learning curve: its own success rate and the trailing moving average with its band."""

    update: int
    successes: int
    n: int
    rate: float | None
    average: float | None
    low: float
    high: float


def _check_series(successes: Sequence[int], totals: Sequence[int]) -> None:
    if len(successes) != len(totals):
        raise ValueError(f"{len(successes)} success counts but {len(totals)} totals; pass one of each per update")
    for s, n in zip(successes, totals):
        _check_counts(s, n)


def moving_average_band(successes: Sequence[int], totals: Sequence[int], window: int) -> list[CurvePoint]:
    """Per update ``i`` (1-based): the pooled success rate of updates ``max(1, i − window + 1) … i`` and the Wilson
    95 % interval of those pooled responses (the noise band of the moving average)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    _check_series(successes, totals)
    points = []
    for i in range(len(successes)):
        start = max(0, i - window + 1)
        pooled = proportion(sum(successes[start : i + 1]), sum(totals[start : i + 1]))
        rate = successes[i] / totals[i] if totals[i] else None
        points.append(CurvePoint(i + 1, successes[i], totals[i], rate, pooled.rate, pooled.low, pooled.high))
    return points


def default_compare_updates(num_updates: int) -> int:
    """``k`` of :func:`rise_verdict` when none is given: a third of the updates, at least 1 and at most 10."""
    return max(1, min(10, num_updates // 3))


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`rise_verdict`: ``label`` is one of "rise beyond noise", "fall beyond noise",
    "no clear rise" or "too few updates to judge"."""

    label: str
    k: int
    difference: Difference | None
    rule: str

    @property
    def rises(self) -> bool:
        return self.label == RISE

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "k": self.k,
            "rule": self.rule,
            "difference": self.difference.as_dict() if self.difference is not None else None,
        }

    def __str__(self) -> str:
        if self.difference is None:
            return f"{self.label} (fewer than {2 * self.k} updates with responses)"
        d = self.difference
        return (
            f"{self.label}: success of the last {self.k} updates {d.second} − first {self.k} updates {d.first} = {d}"
        )


def rise_verdict(successes: Sequence[int], totals: Sequence[int], k: int | None = None) -> Verdict:
    """Compare the pooled success of the first ``k`` and the last ``k`` updates (``k`` defaults to
    :func:`default_compare_updates`); needs ``2 k`` updates, so the two groups never overlap."""
    _check_series(successes, totals)
    k = default_compare_updates(len(successes)) if k is None else k
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rule = (
        f"pooled success of the last {k} updates minus the first {k} updates with its 95 % Newcombe (Wilson-score) "
        "interval; 'rise beyond noise' if the interval lies above 0, 'fall beyond noise' if below 0, else "
        "'no clear rise'"
    )
    if len(successes) < 2 * k:
        return Verdict(TOO_SHORT, k, None, rule)
    first = proportion(sum(successes[:k]), sum(totals[:k]))
    last = proportion(sum(successes[-k:]), sum(totals[-k:]))
    if first.n == 0 or last.n == 0:
        return Verdict(TOO_SHORT, k, None, rule)
    difference = newcombe_difference(first, last)
    label = RISE if difference.low > 0 else FALL if difference.high < 0 else FLAT
    return Verdict(label, k, difference, rule)


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(rates: Sequence[float | None]) -> str:
    """One character per rate on the fixed scale [0, 1] (``▁`` = 0, ``█`` = 1, ``·`` = no value)."""
    out = []
    for rate in rates:
        if rate is None or not math.isfinite(rate):
            out.append("·")
        else:
            clipped = min(1.0, max(0.0, rate))
            out.append(_BARS[min(len(_BARS) - 1, int(clipped * len(_BARS)))])
    return "".join(out)
