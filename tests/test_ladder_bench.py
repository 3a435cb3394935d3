"""`bench ladder`'s comparison: which single method the ladder is held against, and the paired test, on the
outcomes its rerun of 2026-12-06 measured (rare: the DAS ladder against DAS at each budget)."""

from __future__ import annotations

import pytest

from doodl_ray.benchmarks.ladder import compare


def point(label: str, budget: int, per_item: list[int], evals: float) -> dict:
    return {"label": label, "budget": budget, "per_item": per_item, "real_correct": sum(per_item) / len(per_item),
            "unet_evals_mean": evals}


def test_the_ladder_is_held_against_the_cheapest_single_at_its_rate_and_the_best_single():
    ladder = {"per_item": [1, 1, 0, 1, 0, 1, 1, 0, 1], "real_correct": 6 / 9, "unet_evals_mean": 95.0, "items": 9}
    singles = [point("das", 60, [1, 1, 0, 1, 0, 0, 1, 0, 1], 59.0),
               point("das", 300, [1, 1, 1, 1, 0, 1, 1, 1, 0], 295.0),
               point("das", 1520, [1] * 9, 1475.0),
               point("particles", 1520, [1, 1, 1, 1, 1, 1, 1, 1, 1], 1500.0)]  # same rate, dearer: not the best
    report = compare(ladder, singles)
    same, best = report["same_rate"], report["best_single"]
    assert (same["label"], same["budget"]) == ("das", 300)  # the cheapest that reaches 0.67 (DAS 60 has 0.56)
    assert (best["label"], best["budget"]) == ("das", 1520)  # ties on rate go to the cheaper
    assert best["evals_ratio"] == pytest.approx(95 / 1475)
    assert (best["only_ladder"], best["only_single"]) == (0, 3) and best["p_value"] == pytest.approx(0.25)
    assert (same["only_ladder"], same["only_single"]) == (1, 2)
    assert report["ladder"]["unet_evals_per_real_correct"] == pytest.approx(95 * 9 / 6)
    assert all("per_item" not in s for s in report["singles"])


def test_a_ladder_no_single_reaches_and_one_with_no_good_image():
    ladder = {"per_item": [0, 0], "real_correct": 0.0, "unet_evals_mean": 10.0, "items": 2}
    report = compare(ladder, [point("none", 30, [0, 0], 30.0)])
    assert report["same_rate"]["label"] == "none" and report["ladder"]["unet_evals_per_real_correct"] == float("inf")
    better = {"per_item": [1, 1], "real_correct": 1.0, "unet_evals_mean": 10.0, "items": 2}
    assert compare(better, [point("none", 30, [0, 0], 30.0)])["same_rate"] is None
