"""The statistics of a row's accuracy: a two-level bootstrap interval over seeds and test questions."""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def two_level_bootstrap(correct: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval, in points, of the mean of `correct` (seeds × test questions, 0/1).

    Each resample draws the seeds with replacement and, independently, the test questions with
    replacement (the same questions for every drawn seed: they are one test set), so the interval holds
    both the training noise between seeds and the sampling noise of the test set. Where the exact
    (Clopper–Pearson) binomial interval of the test questions is wider, it widens the interval: a bootstrap
    of a test with no error is [100, 100] whatever its size, which says nothing of how little a few questions tell.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    s, q = correct.shape
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(q, np.full(q, 1 / q), size=resamples)  # question draws: (R, Q) multiplicities
    per_seed = counts @ correct.T / q                                # (R, S)
    pick = rng.integers(0, s, (resamples, s))
    means = np.take_along_axis(per_seed, pick, 1).mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    exact = binomtest(int(round(correct.mean(0).sum())), q).proportion_ci(0.95, method="exact")
    return 100 * float(min(lo, exact.low)), 100 * float(max(hi, exact.high))


def bootstrap_ci(correct: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `correct` (0/1 per test question), in points."""
    return two_level_bootstrap(np.asarray(correct)[None], seed, resamples)
