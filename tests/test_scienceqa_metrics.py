"""The official breakdown, prediction validation, bootstrap intervals, McNemar and confusion counts."""

import json

import numpy as np
import pytest
from scipy import stats

from mm_adapter.errors import ScienceQAError
from mm_adapter.scienceqa.data import Problem
from mm_adapter.scienceqa.metrics import bootstrap_ci, column_masks, compare, confusion_by, mcnemar, score
from mm_adapter.scienceqa.predictions import Predictions, check_predictions, load_predictions


def problem(pid, answer=0, hint="", image=None, subject="natural science", grade="grade2", split="test"):
    return Problem(pid=pid, question="q?", choices=("a", "b", "c"), answer=answer, hint=hint, image=image,
                   subject=subject, grade=grade, split=split)


PROBLEMS = {p.pid: p for p in [
    problem("1", hint="text"),                      # TXT, NAT, G1-6
    problem("2", image="image.png", subject=None),  # IMG, subject unknown
    problem("3", subject="social science", grade=None),  # NO, grade unknown
    problem("4", subject="language science", grade="grade10", hint="t", image="image.png"),  # TXT+IMG
    problem("5", split="val"),
]}


def test_columns_follow_official_definitions_and_report_unknowns():
    """Each column's n counts its problems; null fields are left out of their columns and counted."""
    s = score(Predictions("m", {"1": 0, "2": 1, "3": 0, "4": 0}), PROBLEMS)
    n = {name: col.n for name, col in s.columns.items()}
    assert n == {"NAT": 1, "SOC": 1, "LAN": 1, "TXT": 2, "IMG": 2, "NO": 1, "G1-6": 2, "G7-12": 1, "Avg": 4}
    assert s["NAT"].unknown == 1 and s["NAT"].partial and s["G1-6"].unknown == 1
    assert not s["TXT"].partial and s["TXT"].unknown == 0
    assert s["Avg"].acc == 75.0 and s["IMG"].acc == 50.0 and s["SOC"].acc == 100.0


def test_no_answer_counts_wrong_and_uncovered_pids_are_reported_not_scored():
    """-1 is a wrong answer; pids of the predicted split that are absent are listed, not scored."""
    s = score(Predictions("m", {"1": -1, "2": 0}), PROBLEMS)
    assert s["Avg"].n == 2 and s["Avg"].correct == 1 and s.no_answer == 1
    assert s.missing == ("3", "4")  # pid 5 is in val, a split this file does not predict


def test_empty_column_has_no_accuracy():
    s = score(Predictions("m", {"5": 0}), PROBLEMS)
    assert s["G7-12"].n == 0 and s["G7-12"].acc is None


@pytest.mark.parametrize(
    "results, message",
    [
        ({"42": 0}, "pid 42.*unknown pid"),
        ({"1": 3}, "pid 1.*out of range"),
        ({"1": -2}, "pid 1.*out of range"),
    ],
)
def test_invalid_predictions_name_pid(results, message):
    with pytest.raises(ScienceQAError, match=message):
        check_predictions(Predictions("m", results, path=None), PROBLEMS)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"results": {"1": "B"}}, "preds.json: pid 1: field 'results'"),
        ({"results": {"1": 1.0}}, "pid 1"),
        ({"results": {"1": True}}, "pid 1"),
        ({"results": [0, 1]}, "preds.json: must be a JSON object"),
        ([1, 2], "preds.json: must be a JSON object"),
    ],
)
def test_malformed_prediction_files(tmp_path, content, message):
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ScienceQAError, match=message):
        load_predictions(path)


def test_prediction_name_is_method_else_stem(tmp_path):
    (tmp_path / "run_3.json").write_text(json.dumps({"results": {"1": 0}}))
    (tmp_path / "b.json").write_text(json.dumps({"method": "Mine", "results": {"1": 0}}))
    assert load_predictions(tmp_path / "run_3.json").name == "run_3"
    assert load_predictions(tmp_path / "b.json").name == "Mine"


def test_bootstrap_interval_contains_point_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    correct = rng.random(500) < 0.7
    member = np.stack([np.ones(500, bool), rng.random(500) < 0.3, np.zeros(500, bool)], axis=1)
    ci = bootstrap_ci(correct, member, n_boot=2000, seed=3)
    for j in range(2):
        acc = 100 * correct[member[:, j]].mean()
        assert ci[j, 0] <= acc <= ci[j, 1] and ci[j, 1] - ci[j, 0] < 20
    assert np.isnan(ci[2]).all()  # empty column
    np.testing.assert_array_equal(ci, bootstrap_ci(correct, member, n_boot=2000, seed=3))
    assert ci[0, 1] - ci[0, 0] < ci[1, 1] - ci[1, 0]  # more problems, narrower interval


def test_score_carries_intervals():
    s = score(Predictions("m", {"1": 0, "2": 1, "3": 0, "4": 0}), PROBLEMS, n_boot=500)
    lo, hi = s["Avg"].ci
    assert lo <= s["Avg"].acc <= hi


def test_mcnemar_exact_for_few_discordant_pairs():
    """10 vs 0 discordant pairs: exact two-sided binomial p = 2 * 0.5**10."""
    a = np.array([True] * 10 + [True] * 5 + [False] * 5)
    b = np.array([False] * 10 + [True] * 5 + [False] * 5)
    result = mcnemar(a, b)
    assert (result.only_a, result.only_b, result.method) == (10, 0, "exact binomial")
    assert result.p_value == pytest.approx(2 * 0.5**10)


def test_mcnemar_chi_square_with_continuity_correction_for_many():
    a = np.array([True] * 40 + [False] * 20 + [True] * 30)
    b = np.array([False] * 40 + [True] * 20 + [True] * 30)
    result = mcnemar(a, b)
    assert result.method.startswith("chi-square") and result.statistic == pytest.approx(19**2 / 60)
    assert result.p_value == pytest.approx(stats.chi2.sf(19**2 / 60, 1))


def test_mcnemar_identical_predictions_and_common_pids_only():
    a = Predictions("a", {"1": 0, "2": 0, "3": 0})
    b = Predictions("b", {"1": 0, "2": 0, "4": 0})
    result = compare(a, b, PROBLEMS)
    assert (result.n, result.only_a, result.only_b, result.p_value) == (2, 0, 0, 1.0)


def test_confusion_counts_by_field():
    """Per-group gold x predicted counts; the last column is "no answer" (-1)."""
    counts = confusion_by(Predictions("m", {"1": 0, "2": 2, "3": -1, "4": 0}), PROBLEMS, by="subject")
    assert set(counts) == {"natural science", "social science", "language science", "unknown"}
    assert counts["natural science"][0, 0] == 1 and counts["unknown"][0, 2] == 1
    assert counts["social science"][0, 3] == 1
    assert sum(c.sum() for c in counts.values()) == 4
    assert sum(np.trace(c[:, :3]) for c in counts.values()) == 2


def test_column_masks_shape_for_no_problems():
    member, known = column_masks([])
    assert member.shape == known.shape == (0, 9)
