"""distribution_focal_loss, dfl_unchecked and dfl_decode (detassign.losses.dfl).

Oracles: mmdet 3.3.0 ``mmdet.models.losses.gfocal_loss.distribution_focal_loss`` (pred [N, R], label [N],
wrapped by mmdet's ``weighted_loss``: weight, reduction, avg_factor) and ultralytics 8.4.190 ``DFLoss``
(pred [N * 4, R], target [N, 4] -> [N, 1], the mean over the four sides, targets clamped in place).
Our function is element-wise: [..., R], [...] -> [...], no reduction, and raises on a target outside
``[0, R - 1)`` where ultralytics clamps it.
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import value_checks
from detassign.losses import dfl_decode, dfl_unchecked, distribution_focal_loss
from tests.oracles import mmdet, ultralytics
from tests.tolerances import PATH_TOLERANCES, assert_close_across_paths


def two_point(target, num_bins):
    """The DFL target distribution: (r - y) at bin l = floor(y), (y - l) at r = l + 1. [...] -> [..., R]."""
    left = target.floor()
    q = torch.zeros(*target.shape, num_bins, dtype=target.dtype)
    q.scatter_(-1, left.long()[..., None], (left + 1 - target)[..., None])
    q.scatter_add_(-1, left.long()[..., None] + 1, (target - left)[..., None])
    return q


def random_case(seed, n, num_bins, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_bins, generator=g, dtype=torch.float64) * scale
    # targets in [0, R - 1); the first few sit exactly on bins (the right weight is 0 there)
    target = torch.rand(n, generator=g, dtype=torch.float64) * (num_bins - 1) * 0.999
    target[:3] = torch.tensor([0.0, 1.0, num_bins - 2.0])
    return logits.to(dtype), target.to(dtype)


def mmdet_gfocal():
    """mmdet's gfocal_loss module (DFL, QFL); skips, or fails under DETASSIGN_REQUIRE_ORACLES=1, without mmdet."""
    mmdet().heads()  # registers mmdet.models.losses behind the mmcv-lite workarounds
    from mmdet.models.losses import gfocal_loss

    return gfocal_loss


# ----------------------------------------------------------------------------- hand-worked
def test_dfl_hand_value_and_decode():
    # uniform logits over 4 bins, target 2.3 -> -(0.7 ln 1/4 + 0.3 ln 1/4) = ln 4
    loss = distribution_focal_loss(torch.zeros(1, 4), torch.tensor([2.3]))
    torch.testing.assert_close(loss, torch.tensor([math.log(4)]))
    # one-hot-ish logits on bin 3 of 16 for every side decode to 3
    logits = torch.full((1, 4, 16), -50.0)
    logits[..., 3] = 50.0
    torch.testing.assert_close(dfl_decode(logits.view(1, 64), 16), torch.full((1, 4), 3.0))


def test_dfl_hand_value_skewed_distribution_and_gradient():
    # logits ln(1, 1, 2) -> p = (1/4, 1/4, 1/2).
    # target 1.25: l = 1, weights (0.75, 0.25) -> -(0.75 ln 1/4 + 0.25 ln 1/2) = 1.5 ln 2 + 0.25 ln 2 = 1.75 ln 2
    # target 0 (on a bin): weights (1, 0) -> -ln 1/4 = 2 ln 2
    # gradient w.r.t. the logits = p - q = (1/4, 1/4, 1/2) - (0, 3/4, 1/4) = (1/4, -1/2, 1/4)
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0]] * 2, dtype=torch.float64)).requires_grad_()
    loss = distribution_focal_loss(logits, torch.tensor([1.25, 0.0], dtype=torch.float64))
    torch.testing.assert_close(loss, torch.tensor([1.75, 2.0], dtype=torch.float64) * math.log(2))
    (grad,) = torch.autograd.grad(loss[0], logits)
    torch.testing.assert_close(grad[0], torch.tensor([0.25, -0.5, 0.25], dtype=torch.float64))
    assert torch.all(grad[1] == 0)
    # decode: 0 * 1/4 + 1 * 1/4 + 2 * 1/2 = 1.25 on each of the 4 sides
    torch.testing.assert_close(dfl_decode(logits.detach()[0].repeat(4), 3),
                               torch.full((4,), 1.25, dtype=torch.float64))


def test_dfl_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.rand(6, dtype=torch.float64, generator=g) * 6.5
    assert torch.autograd.gradcheck(lambda x: distribution_focal_loss(x, target), (logits,))


def test_dfl_decode_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4 * 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dfl_decode(x, 5), (logits,))


def test_empty_inputs_give_empty_outputs_and_backward():
    logits = torch.zeros(0, 16, requires_grad=True)
    loss = distribution_focal_loss(logits, torch.zeros(0))
    assert loss.shape == (0,)
    loss.sum().backward()
    assert logits.grad.shape == (0, 16)
    assert dfl_decode(torch.zeros(2, 0, 64), 16).shape == (2, 0, 4)


def test_unchecked_equals_checked_on_valid_targets_and_any_leading_shape():
    logits, target = random_case(3, 24, 16)
    checked = distribution_focal_loss(logits.view(2, 3, 4, 16), target.view(2, 3, 4))
    assert checked.shape == (2, 3, 4)
    assert torch.equal(checked, dfl_unchecked(logits.view(2, 3, 4, 16), target.view(2, 3, 4)))
    assert torch.equal(checked.flatten(), distribution_focal_loss(logits, target))


# ----------------------------------------------------------------------------- oracles
@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(6))
def test_dfl_matches_mmdet(seed, dtype):
    gfl = mmdet_gfocal()
    num_bins = (8, 16, 17)[seed % 3]
    logits, target = random_case(seed, 50, num_bins, dtype)
    ours = distribution_focal_loss(logits, target)
    ref = gfl.distribution_focal_loss(logits, target, reduction="none")
    assert_close_across_paths(ours, ref, "reduction='none'")
    # mmdet's weighted_loss wrapper: weight multiplies element-wise; 'mean' with avg_factor divides the
    # weighted sum by avg_factor + float32 eps (mmdet's guard against avg_factor = 0)
    weight = torch.rand(50, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    ref = gfl.distribution_focal_loss(logits, target, weight=weight, avg_factor=7.0)
    assert_close_across_paths((ours * weight).sum() / (7.0 + torch.finfo(torch.float32).eps), ref, "avg_factor")
    assert_close_across_paths(ours.mean(), gfl.distribution_focal_loss(logits, target), "mean")


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
def test_dfl_matches_ultralytics_dfloss(seed):
    # ultralytics: pred [N * 4, R], target [N, 4] -> [N, 1] = mean of the four sides' DFL
    ul = ultralytics()
    reg_max = 16
    logits, target = random_case(seed, 4 * 30, reg_max)
    target = target.clamp(max=reg_max - 1 - 0.01)  # ultralytics' own range (it clamps in place)
    ref = ul.loss.DFLoss(reg_max)(logits, target.view(30, 4).clone())
    ours = distribution_focal_loss(logits.view(30, 4, reg_max), target.view(30, 4)).mean(-1, keepdim=True)
    assert_close_across_paths(ours, ref)


@pytest.mark.oracle
def test_ultralytics_clamps_where_we_raise():
    # A target >= R - 1 has no right bin. ultralytics clamps it to R - 1.01 silently; we raise so that a
    # caller's box-encoding bug shows. On the clamped target both agree.
    ul = ultralytics()
    logits, _ = random_case(0, 4, 16)
    target = torch.tensor([[0.5, 15.0, 20.0, 3.0]])
    ref = ul.loss.DFLoss(16)(logits, target.clone())
    with pytest.raises(ValueError, match=r"target must lie in \[0, 15\) for 16 bins"):
        distribution_focal_loss(logits.view(1, 4, 16), target)
    ours = distribution_focal_loss(logits.view(1, 4, 16), target.clamp(max=16 - 1 - 0.01)).mean(-1, keepdim=True)
    assert_close_across_paths(ours, ref)


# ----------------------------------------------------------------------------- properties
bins_and_targets = st.integers(2, 17).flatmap(
    lambda r: st.tuples(st.just(r), st.integers(0, r - 2), st.floats(0.0, 0.99)))


@given(bins_and_targets, st.integers(0, 2**31 - 1))
def test_gradient_is_softmax_minus_two_point_target(case, seed):
    # DFL is the cross-entropy H(q, softmax(x)) with the two-point q, so d/dx = softmax(x) - q
    num_bins, left, frac = case
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(1, num_bins, generator=g, dtype=torch.float64) * 4).requires_grad_()
    target = torch.tensor([left + frac], dtype=torch.float64)
    (grad,) = torch.autograd.grad(distribution_focal_loss(logits, target).sum(), logits)
    assert_close_across_paths(grad, logits.detach().softmax(-1) - two_point(target, num_bins))


@given(bins_and_targets, st.integers(0, 2**31 - 1))
def test_minimum_is_the_two_point_distribution(case, seed):
    # H(q, p) >= H(q) with equality iff p = q (Gibbs): logits ln q reach the entropy of q, have zero
    # gradient, and decode back to the target (l (r - y) + r (y - l) = y); random logits never go lower.
    num_bins, left, frac = case
    target = torch.tensor([left + frac], dtype=torch.float64)
    q = two_point(target, num_bins)
    entropy = -torch.xlogy(q, q).sum(-1)
    at_q = q.log().clamp(min=-1e4).requires_grad_()  # exp(-1e4) = 0: an empty bin, finite logit
    loss = distribution_focal_loss(at_q, target)
    assert_close_across_paths(loss.detach(), entropy)
    (grad,) = torch.autograd.grad(loss.sum(), at_q)
    assert_close_across_paths(grad, torch.zeros_like(grad))
    assert_close_across_paths(dfl_decode(at_q.detach().repeat(1, 4), num_bins), target.expand(1, 4))
    g = torch.Generator().manual_seed(seed)
    other = torch.randn(8, num_bins, generator=g, dtype=torch.float64) * 3
    rtol, atol = PATH_TOLERANCES[torch.float64]
    assert torch.all(distribution_focal_loss(other, target.expand(8)) >= entropy * (1 - rtol) - atol)


@given(st.integers(2, 17), st.integers(0, 2**31 - 1))
def test_decode_lies_in_the_bin_range(num_bins, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 4 * num_bins, generator=g) * 20
    decoded = dfl_decode(logits, num_bins)
    assert decoded.shape == (5, 4)
    assert torch.all(decoded >= 0) and torch.all(decoded <= num_bins - 1)


# ----------------------------------------------------------------------------- bad inputs
def test_target_out_of_range_raises():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 3\) for 4 bins, got range \[0.0, 3.0\]"):
        distribution_focal_loss(logits, torch.tensor([0.0, 1.5, 3.0]))  # R - 1 itself has no right bin
    with pytest.raises(ValueError, match=r"target must lie in \[0, 3\) for 4 bins, got range \[-0.5"):
        distribution_focal_loss(logits, torch.tensor([-0.5, 1.0, 2.0]))


def test_value_checks_off_skips_the_range_check():
    logits, target = torch.zeros(2, 4), torch.tensor([-0.5, 1.0])
    with value_checks(False):
        assert torch.equal(distribution_focal_loss(logits, target), dfl_unchecked(logits, target))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"pred_logits must be \[\.\.\., R\] and target \[\.\.\.\] with the "
                                         r"same leading shape, got \(3, 4\) and \(2,\)"):
        distribution_focal_loss(torch.zeros(3, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"pred_logits must be \[\.\.\., R\].*got \(\) and \(\)"):
        distribution_focal_loss(torch.tensor(0.0), torch.tensor(0.0))


def test_dfl_decode_wrong_last_dim_raises():
    with pytest.raises(ValueError, match=r"pred_dist must have shape \[\.\.\., 64\] \(4 \* reg_max\), "
                                         r"got \(2, 10\)"):
        dfl_decode(torch.zeros(2, 10), 16)
