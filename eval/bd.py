"""Bjøntegaard deltas (piecewise cubic, as in the ``bjontegaard`` package) between RD curves.

BD-rate: the average bitrate difference in percent at equal quality (negative: fewer bits than the
reference). BD-PSNR: the average quality difference in dB at equal rate. Both are computed only
over the range where the two curves overlap; with no overlap they are NaN rather than an
extrapolation.
"""

from __future__ import annotations

import math
import warnings

import bjontegaard
import numpy as np


def _clean(rate: list[float], quality: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points sorted by rate, keeping only those where quality strictly rises (an RD hull)."""
    order = np.argsort(rate)
    r, q = np.asarray(rate, float)[order], np.asarray(quality, float)[order]
    keep_r, keep_q = [], []
    for ri, qi in zip(r, q):
        if not keep_q or (qi > keep_q[-1] and ri > keep_r[-1]):
            keep_r.append(ri)
            keep_q.append(qi)
    return np.array(keep_r), np.array(keep_q)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return max(0.0, min(a.max(), b.max()) - max(a.min(), b.min()))


def bd_rate(ref_rate, ref_quality, test_rate, test_quality) -> float:
    """Average rate difference (%) of the test curve against the reference at equal quality."""
    r1, q1 = _clean(ref_rate, ref_quality)
    r2, q2 = _clean(test_rate, test_quality)
    if len(r1) < 2 or len(r2) < 2 or _overlap(q1, q2) <= 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_rate(r1, q1, r2, q2, method="pchip",
                                         require_matching_points=False, min_overlap=0))


def bd_psnr(ref_rate, ref_quality, test_rate, test_quality) -> float:
    """Average quality difference (dB for PSNR) of the test curve at equal rate."""
    r1, q1 = _clean(ref_rate, ref_quality)
    r2, q2 = _clean(test_rate, test_quality)
    if len(r1) < 2 or len(r2) < 2 or _overlap(np.log(r1), np.log(r2)) <= 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_psnr(r1, q1, r2, q2, method="pchip",
                                         require_matching_points=False, min_overlap=0))
