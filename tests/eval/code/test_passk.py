"""pass@k: the unbiased estimator equals brute-force enumeration over all k-subsets."""

import itertools
import math
from fractions import Fraction

import pytest

from lmlab.errors import LmlabError
from lmlab.eval.code.passk import mean_pass_at_k, pass_at_k, pass_at_ks


def brute_force(n: int, c: int, k: int) -> Fraction:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_matches_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force(n, c, k)), abs=1e-12), (n, c, k)


def test_known_values_and_edges():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 hold a correct one


def test_stable_for_large_n():
    n, c, k = 2000, 37, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10)


def test_mean_and_multiple_ks():
    assert mean_pass_at_k([(4, 0), (4, 4)], 1) == pytest.approx(0.5)
    assert mean_pass_at_k({"a": (5, 2), "b": (5, 0)}, 3) == pytest.approx(0.45)
    out = pass_at_ks({"a": [True, False, False], "b": [False, False, True, True]}, ks=(1, 3, 10))
    assert set(out) == {"pass@1", "pass@3"}  # k=10 exceeds the 3 samples of "a": left out, not guessed
    assert out["pass@1"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert out["pass@3"] == pytest.approx((1.0 + 1.0) / 2)


@pytest.mark.parametrize("args", [(3, 4, 1), (3, 1, 0), (3, 1, 4), (-1, 0, 1), (3.0, 1, 1)])
def test_invalid_arguments(args):
    with pytest.raises(LmlabError):
        pass_at_k(*args)
