"""What the votes say: per study (two runs and a question), each run's win rate among decisive votes with
a Wilson 95% interval and an exact two-sided sign test (ties and skips reported apart), overall, per target
class and per prompt category, and how often reviewers who rated the same pairs agreed (raw agreement
and Cohen's kappa over the pairs both rated).

A reviewer's latest vote on a pair is the one that counts, so a vote recorded twice (two servers racing
on one reviewer) cannot count twice."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any, Iterable

from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from doodl_ray.review.votes import winner

_OUTCOMES = ["a", "b", "tie"]


def build_report(votes: Iterable[dict[str, Any]], source: str = "") -> dict[str, Any]:
    """The whole report as one JSON-ready object: {"votes_uri", "studies": [...]}."""
    latest: dict[tuple, dict[str, Any]] = {}
    for vote in sorted(votes, key=lambda v: v["voted_at"]):
        latest[(study_key(vote), vote["reviewer"], vote["pair_id"])] = vote
    studies: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for (study, _, _), vote in latest.items():
        studies[study].append(vote)
    return {"votes_uri": source, "studies": [_study(k, v) for k, v in sorted(studies.items())]}


def study_key(vote: dict[str, Any]) -> tuple[str, str, str]:
    """The study a vote belongs to: its two runs and its question."""
    return vote["run_a"], vote["run_b"], vote["question"]


def _study(key: tuple[str, str, str], votes: list[dict[str, Any]]) -> dict[str, Any]:
    run_a, run_b, question = key
    result = {
        "run_a": run_a, "run_b": run_b, "question": question,
        "run_a_uri": votes[0]["run_a_uri"], "run_b_uri": votes[0]["run_b_uri"],
        "reviewers": sorted({v["reviewer"] for v in votes}), "pairs": len({v["pair_id"] for v in votes}),
        "overall": tally(votes),
    }
    for field in ("target", "category"):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for vote in votes:
            if vote.get(field) is not None:
                groups[vote[field]].append(vote)
        result[f"by_{field}"] = {name: tally(group) for name, group in sorted(groups.items())}
    result["agreement"] = agreement(votes)
    return result


def tally(votes: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, win rates with Wilson 95% intervals, and the sign test p-value of a set of votes."""
    outcomes = [winner(v) for v in votes]
    wins = {side: outcomes.count(side) for side in ("a", "b")}
    decisive = wins["a"] + wins["b"]
    result: dict[str, Any] = {"votes": len(votes), "decisive": decisive, "ties": outcomes.count("tie"),
                              "skips": outcomes.count(None), "sign_test_p": None}
    test = binomtest(wins["a"], decisive, 0.5) if decisive else None
    if test is not None:
        result["sign_test_p"] = float(test.pvalue)
    for side in ("a", "b"):
        entry: dict[str, Any] = {"wins": wins[side], "win_rate": None, "ci95": None}
        if test is not None:
            low, high = test.proportion_ci(confidence_level=0.95, method="wilson")
            entry["win_rate"] = wins[side] / decisive
            entry["ci95"] = [float(low), float(high)] if side == "a" else [float(1 - high), float(1 - low)]
        result[side] = entry
    return result


def agreement(votes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair of reviewers: the pairs both rated (skips left out), raw agreement and Cohen's kappa
    (None where it is undefined: both gave one and the same answer throughout)."""
    by_reviewer: dict[str, dict[str, str]] = defaultdict(dict)
    for vote in votes:
        outcome = winner(vote)
        if outcome is not None:
            by_reviewer[vote["reviewer"]][vote["pair_id"]] = outcome
    result = []
    for first, second in itertools.combinations(sorted(by_reviewer), 2):
        common = sorted(by_reviewer[first].keys() & by_reviewer[second].keys())
        if not common:
            continue
        x = [by_reviewer[first][p] for p in common]
        y = [by_reviewer[second][p] for p in common]
        kappa = None if len(set(x) | set(y)) == 1 else float(cohen_kappa_score(x, y, labels=_OUTCOMES))
        result.append({"reviewers": [first, second], "pairs": len(common),
                       "raw": sum(i == j for i, j in zip(x, y)) / len(common), "cohen_kappa": kappa})
    return result


def render_text(report: dict[str, Any]) -> str:
    """The report as a few readable lines per study."""
    lines = [f"votes: {report['votes_uri']}"] if report["votes_uri"] else []
    if not report["studies"]:
        lines.append("no votes yet")
    for study in report["studies"]:
        lines.append(f"{study['run_a']} (a) vs {study['run_b']} (b): {study['question']}")
        lines.append(f"  reviewers {len(study['reviewers'])} ({', '.join(study['reviewers'])}), pairs {study['pairs']}")
        lines.append(f"  {'group':<24} {'votes':>5} {'a wins':>7} {'a rate [95% CI]':>21} {'b wins':>7} "
                     f"{'ties':>5} {'skips':>5} {'sign p':>7}")
        rows = [("overall", study["overall"])]
        rows += [(f"target {k}", v) for k, v in study["by_target"].items()]
        rows += [(f"category {k}", v) for k, v in study["by_category"].items()]
        for name, t in rows:
            rate = "-" if t["a"]["win_rate"] is None else (
                f"{t['a']['win_rate']:.2f} [{t['a']['ci95'][0]:.2f}, {t['a']['ci95'][1]:.2f}]")
            p = "-" if t["sign_test_p"] is None else f"{t['sign_test_p']:.3g}"
            lines.append(f"  {name[:24]:<24} {t['votes']:>5} {t['a']['wins']:>7} {rate:>21} {t['b']['wins']:>7} "
                         f"{t['ties']:>5} {t['skips']:>5} {p:>7}")
        for pair in study["agreement"]:
            kappa = "undefined" if pair["cohen_kappa"] is None else f"{pair['cohen_kappa']:.2f}"
            lines.append(f"  agreement {pair['reviewers'][0]} / {pair['reviewers'][1]}: {pair['pairs']} pairs, "
                         f"raw {pair['raw']:.2f}, Cohen's kappa {kappa}")
    return "\n".join(lines)
