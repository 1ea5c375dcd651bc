"""pass@k against a float64 reference; avg@n and maj@k on hand-made verdict tables."""

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from gftrepro.metrics import benchmark_metrics, ks_up_to, macro_average, majority_correct, pass_at_k


def reference(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) with exact integers and fractions (no overflow, no rounding)."""
    return float(1 - Fraction(comb(n - c, k), comb(n, k)))


@pytest.mark.parametrize(("n", "c", "k"), [
    (1, 0, 1), (1, 1, 1), (16, 0, 1), (16, 16, 16), (16, 3, 1), (16, 3, 4), (16, 3, 14), (16, 3, 13),
    (256, 0, 256), (256, 1, 128), (256, 1, 256), (256, 255, 2), (256, 17, 100), (128, 64, 64), (5, 3, 3),
])
def test_pass_at_k_edge_cases(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(reference(n, c, k), abs=1e-12)


def test_pass_at_k_random_against_reference_and_arrays():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 257, size=300)
    c = np.array([rng.integers(0, x + 1) for x in n])
    k = np.array([rng.integers(1, x + 1) for x in n])
    got = pass_at_k(n, c, k)
    want = np.array([reference(int(a), int(b), int(d)) for a, b, d in zip(n, c, k, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(pass_at_k(256, np.arange(257), 16), [reference(256, i, 16) for i in range(257)],
                               atol=1e-10)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_and_maj_on_a_hand_made_table():
    correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    answers = [["5", "3", "3", "4"], ["7", "7", "7", "7"], [None, "1", None, "2"]]
    m = benchmark_metrics(correct, answers, [1, 2, 4])
    assert m["avg@4"] == pytest.approx((1 / 4 + 1 + 0) / 3)
    assert m["pass@1"] == pytest.approx(m["avg@4"])
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["maj@4"] == pytest.approx(1 / 3)  # problem 0: "3" wins 2 to 1, and it is wrong
    assert m["maj@1"] == pytest.approx(2 / 3)  # first samples: right, right, no answer


def test_majority_ties_go_to_the_first_seen_and_no_answer_is_wrong():
    assert majority_correct(["a", "b"], [True, False])
    assert not majority_correct(["b", "a"], [False, True])
    assert not majority_correct([None, None], [False, False])


def test_ks_and_macro_average():
    assert ks_up_to(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert ks_up_to(12, [10]) == [1, 2, 4, 8, 10, 12]
    assert macro_average({"a": {"pass@1": 0.2, "n": 4}, "b": {"pass@1": 0.6, "n": 4}}) == {"pass@1": pytest.approx(0.4)}
