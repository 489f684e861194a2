"""Summary statistics of evaluation samples: mean, standard error and a 95 % confidence interval.

One implementation for every quality report (`learner.pretrain_eval`, `matrl eval`). The interval is
Student's t: mean ± t(0.975, n − 1) · s/√n, with s the sample standard deviation (ddof = 1). It
assumes roughly normal sample means, which holds for the ~20+ targets an evaluation averages over;
it is exact for normal samples and wider than the normal interval for small n (t(0.975, 4) = 2.78
against 1.96). With n < 2 there is no interval (NaN). For two models scored on the same targets,
`Stat.paired` gives the interval of the per-target differences, which is much tighter than comparing
two independent intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95


@dataclass
class Stat:
    mean: float
    stderr: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return cls(math.nan, math.nan, 0)
        return cls(float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else 0.0,
                   int(arr.size))

    @classmethod
    def paired(cls, a: Sequence[float], b: Sequence[float]) -> "Stat":
        """Statistics of a[i] − b[i] (the same targets scored twice)."""
        if len(a) != len(b):
            raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
        return cls.of(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))

    @property
    def half_width(self) -> float:
        """Half the width of the 95 % t-interval (NaN for n < 2)."""
        if self.n < 2:
            return math.nan
        from scipy.stats import t

        return float(t.ppf(0.5 + LEVEL / 2, self.n - 1) * self.stderr)

    @property
    def ci95(self) -> tuple[float, float]:
        h = self.half_width
        return (self.mean - h, self.mean + h)

    def as_dict(self) -> dict:
        lo, hi = self.ci95
        return {"mean": self.mean, "ci95": [lo, hi], "stderr": self.stderr, "n": self.n}

    def format(self, digits: int = 3) -> str:
        """`mean [lo, hi]` (the interval omitted when there is none)."""
        if self.n == 0:
            return "–"
        lo, hi = self.ci95
        if math.isnan(lo):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
