"""Routing metrics (eq. 15)."""
import math
import warnings

import pytest
import torch

from musketeers.metrics import routing_entropy, selection_frequencies, spearman_rho, utilisation

torch.set_num_threads(1)


def test_uniform_attention_has_entropy_log_n():
    for n in (2, 3, 5):
        a = torch.full((4, 8, n), 1.0 / n)
        assert routing_entropy(a) == pytest.approx(math.log(n), abs=1e-6)


def test_one_hot_attention_has_entropy_zero():
    a = torch.zeros(4, 8, 3)
    a[..., 1] = 1.0
    assert routing_entropy(a) == 0.0  # 0 log 0 = 0, no NaN


def test_entropy_is_mean_over_queries_and_batch():
    uniform, one_hot = torch.full((2, 3), 1 / 3), torch.tensor([[1.0, 0, 0]] * 2)
    a = torch.stack([uniform, one_hot])  # prompt 1: H = log 3, prompt 2: H = 0
    assert routing_entropy(a) == pytest.approx(math.log(3) / 2)
    assert routing_entropy(uniform) == pytest.approx(math.log(3))  # [m, n] for one prompt
    with pytest.raises(ValueError):
        routing_entropy(torch.ones(3))


def test_utilisation_sums_to_one_and_averages():
    a = torch.softmax(torch.randn(6, 8, 4), dim=-1)
    u = utilisation(a)
    assert u.shape == (4,) and u.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(u, a.mean(dim=(0, 1)))
    a2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    torch.testing.assert_close(utilisation(a2), torch.tensor([0.75, 0.25]))


def test_spearman_hand_computed():
    # x ranks 1..5; y = [10, 30, 20, 50, 40] ranks [1, 3, 2, 5, 4]; d^2 = [0, 1, 1, 1, 1] -> sum 4
    # rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman_rho([1, 2, 3, 4, 5], [10, 30, 20, 50, 40]) == pytest.approx(0.8)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rho([1, 2, float("nan"), 3, 4, 5], [10, 30, 0, 20, 50, 40]) == pytest.approx(0.8)


def test_spearman_degenerate_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman_rho([1, 1, 1, 1], [1, 2, 3, 4]))
        assert math.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))
        assert math.isnan(spearman_rho([1, 2], [2, 1]))
        assert math.isnan(spearman_rho([], []))
    with pytest.raises(ValueError):
        spearman_rho([1, 2, 3], [1, 2])


def test_selection_frequencies():
    one_hot = torch.eye(3)[[0, 0, 2, 0]]
    torch.testing.assert_close(selection_frequencies(one_hot), torch.tensor([0.75, 0.0, 0.25]))
