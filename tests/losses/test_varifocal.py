"""varifocal_loss and quality_focal_loss (detassign.losses.varifocal): element-wise BCE with soft targets.

Conventions against the oracles (mmdet 3.3.0 ``mmdet.models.losses``, ultralytics 8.4.190):

* ours: ``(logits [...], target [...])`` -> ``[...]``, element-wise, no reduction; ``target`` is the dense
  IoU-aware class target (the quality at the GT class of a positive, 0 elsewhere).
* mmdet ``varifocal_loss(pred [N, C], target [N, C], weight, alpha, gamma, iou_weighted, reduction,
  avg_factor)``: ours is ``iou_weighted=True, reduction='none'``. Its negatives are weighted by
  ``alpha * |p - t|^gamma`` for ``t <= 0``, which is our ``alpha * p^gamma`` for t = 0; alpha scales the
  negatives only (not Focal Loss' positive/negative balance). ``iou_weighted=False`` weights positives by
  1 instead of q: ours has no such switch (the same only for binary targets).
* ultralytics ``VarifocalLoss(gamma, alpha)(pred_score, gt_score, label)`` takes the positive mask as a
  separate ``label`` and returns ``(loss * weight).mean(1).sum()``; with ``label = gt_score > 0`` that is
  ``ours.mean(1).sum()``.
* mmdet ``quality_focal_loss(pred [N, C], (label [N], score [N]), weight, reduction, avg_factor, beta)``:
  a class index per row (``C`` or anything outside ``[0, C)`` = background) and the quality of that row;
  it sums over classes. Ours takes the dense target ``one_hot(label) * score`` and is element-wise, so
  ``ours.sum(-1)`` is mmdet's ``reduction='none'``. ``quality_focal_loss_tensor_target`` takes the dense
  target like ours (and also sums over classes).
"""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from detassign.losses import quality_focal_loss, varifocal_loss
from tests.losses.checks import assert_half_in_float32_and_empty
from tests.oracles import mmdet, ultralytics
from tests.tolerances import PATH_TOLERANCES, assert_close_across_paths

MMDET_AVG_EPS = torch.finfo(torch.float32).eps  # mmdet divides by avg_factor + this (weight_reduce_loss)


def mmdet_losses():
    """mmdet's varifocal_loss, gfocal_loss and focal_loss modules; skips, or fails under
    DETASSIGN_REQUIRE_ORACLES=1, without mmdet."""
    mmdet().heads()  # registers mmdet.models.losses behind the mmcv-lite workarounds
    # by module path: the package re-exports functions named like these modules
    names = ("varifocal_loss", "gfocal_loss", "focal_loss")
    return [importlib.import_module(f"mmdet.models.losses.{name}") for name in names]


def random_case(seed, n=40, num_classes=5, scale=3.0):
    """logits [n, C]; labels [n] with C = background for a quarter of the rows; quality scores [n] in (0, 1]
    (one row has score 0 at its class); the dense target [n, C] = one_hot(label) * score."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g) * scale
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[::4] = num_classes
    scores = torch.rand(n, generator=g).clamp(min=1e-3)
    scores[1] = 0.0  # a positive of zero quality: supervised like a negative by both
    target = F.one_hot(labels, num_classes + 1)[:, :num_classes].float() * scores[:, None]
    return logits, labels, scores, target


# ----------------------------------------------------------------------------- hand-worked
def test_varifocal_and_quality_focal_hand_values():
    logits = torch.zeros(2)
    target = torch.tensor([0.8, 0.0])
    ln2 = math.log(2)
    # positive: BCE(p=.5, q=.8) = ln 2, weight q = 0.8; negative: ln 2 * 0.75 * 0.5^2
    torch.testing.assert_close(varifocal_loss(logits, target), torch.tensor([0.8 * ln2, 0.1875 * ln2]))
    # QFL: |0.5 - y|^2 * ln 2 -> 0.09 ln 2 and 0.25 ln 2
    torch.testing.assert_close(quality_focal_loss(logits, target), torch.tensor([0.09 * ln2, 0.25 * ln2]))
    half = varifocal_loss(logits.half(), target.half())
    assert half.dtype == torch.float32


def test_hand_values_at_probability_three_quarters():
    # logit ln 3 -> p = 3/4. BCE(p, 1) = ln 4/3, BCE(p, 0) = ln 4, BCE(p, 3/4) = entropy(3/4) = ln 4 - 3/4 ln 3.
    # VFL: q = 1 -> 1 * ln 4/3; q = 0 -> 0.75 * (3/4)^2 ln 4 = 27/64 ln 4; q = 3/4 -> 3/4 (ln 4 - 3/4 ln 3)
    # QFL: y = 1 -> (1/4)^2 ln 4/3 = 1/16 ln 4/3; y = 0 -> (3/4)^2 ln 4 = 9/16 ln 4; y = 3/4 -> 0
    logits = torch.full((3,), math.log(3), dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 0.75], dtype=torch.float64)
    ln3, ln4 = math.log(3), math.log(4)
    vfl = torch.tensor([ln4 - ln3, 27 / 64 * ln4, 0.75 * (ln4 - 0.75 * ln3)], dtype=torch.float64)
    qfl = torch.tensor([(ln4 - ln3) / 16, 9 / 16 * ln4, 0.0], dtype=torch.float64)
    torch.testing.assert_close(varifocal_loss(logits, target), vfl)
    torch.testing.assert_close(quality_focal_loss(logits, target), qfl)
    # VFL with alpha = 0.5, gamma = 1 on the negative: 0.5 * 3/4 * ln 4 = 3/8 ln 4
    torch.testing.assert_close(varifocal_loss(logits[1:2], target[1:2], alpha=0.5, gamma=1.0),
                               torch.tensor([0.375 * ln4], dtype=torch.float64))
    # QFL with beta = 1 at y = 0: 3/4 ln 4
    torch.testing.assert_close(quality_focal_loss(logits[1:2], target[1:2], beta=1.0), torch.tensor([0.75 * ln4], dtype=torch.float64))


@pytest.mark.parametrize("fn", [varifocal_loss, quality_focal_loss])
def test_half_inputs_are_computed_in_float32_and_empty_works(fn):
    logits, _, _, target = random_case(2)
    assert_half_in_float32_and_empty(fn, logits, target, (0, 3), (0, 3))


@pytest.mark.parametrize("fn", [varifocal_loss, quality_focal_loss])
def test_float64_inputs_stay_float64_and_gradcheck(fn):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.rand(4, 3, dtype=torch.float64, generator=g) * (torch.rand(4, 3, generator=g) > 0.5)
    assert fn(logits, target).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: fn(x, target), (logits,))


# ----------------------------------------------------------------------------- oracles
@pytest.mark.oracle
@pytest.mark.parametrize("alpha,gamma", [(0.75, 2.0), (0.25, 1.5)])
@pytest.mark.parametrize("seed", range(4))
def test_varifocal_matches_mmdet(seed, alpha, gamma):
    vfl = mmdet_losses()[0]
    logits, _, _, target = random_case(seed)
    logits.requires_grad_()
    ours = varifocal_loss(logits, target, alpha=alpha, gamma=gamma)
    ref = vfl.varifocal_loss(logits, target, alpha=alpha, gamma=gamma, iou_weighted=True, reduction="none")
    assert_close_across_paths(ours, ref)
    # sigmoid is not detached in either: same gradient
    assert_close_across_paths(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])
    # reductions: weight [N, C] element-wise, mean with avg_factor = weighted sum / (avg_factor + eps)
    weight = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed))
    ref = vfl.varifocal_loss(logits, target, weight=weight, alpha=alpha, gamma=gamma, avg_factor=5.0)
    assert_close_across_paths((ours * weight).sum() / (5.0 + MMDET_AVG_EPS), ref)
    # iou_weighted=False weights a positive by 1, ours by its quality q
    plain = vfl.varifocal_loss(logits, target, alpha=alpha, gamma=gamma, iou_weighted=False, reduction="none")
    pos = target > 0
    assert_close_across_paths(ours[pos], (plain * target)[pos])
    assert_close_across_paths(ours[~pos], plain[~pos])
    binary = (target > 0).float()  # where the two conventions coincide
    assert_close_across_paths(varifocal_loss(logits, binary, alpha, gamma),
                              vfl.varifocal_loss(logits, binary, alpha=alpha, gamma=gamma, iou_weighted=False,
                                                 reduction="none"))


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_varifocal_matches_ultralytics(seed):
    ul = ultralytics()
    logits, _, _, target = random_case(seed, n=48)
    logits, target = logits.view(2, 24, 5), target.view(2, 24, 5)  # [B, A, C]
    ref = ul.loss.VarifocalLoss(gamma=2.0, alpha=0.75)(logits, target, (target > 0).float())
    assert_close_across_paths(varifocal_loss(logits, target).mean(1).sum(), ref)


@pytest.mark.oracle
@pytest.mark.parametrize("beta", [2.0, 1.5])
@pytest.mark.parametrize("seed", range(4))
def test_quality_focal_matches_mmdet(seed, beta):
    gfl = mmdet_losses()[1]
    logits, labels, scores, target = random_case(seed)
    logits.requires_grad_()
    ours = quality_focal_loss(logits, target, beta=beta)
    ref = gfl.quality_focal_loss(logits, (labels, scores), beta=beta, reduction="none")  # [N]: summed over C
    assert_close_across_paths(ours.sum(-1), ref)
    assert_close_across_paths(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])
    # background may also be any label outside [0, C): -1 here
    assert_close_across_paths(ours.sum(-1), gfl.quality_focal_loss(logits, (labels.where(labels < 5, -1), scores),
                                                                    beta=beta, reduction="none"))
    # weight is per row [N], as mmdet's heads pass it; mean with avg_factor
    weight = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed))
    ref = gfl.quality_focal_loss(logits, (labels, scores), weight=weight, beta=beta, avg_factor=3.0)
    assert_close_across_paths((ours.sum(-1) * weight).sum() / (3.0 + MMDET_AVG_EPS), ref)
    # the dense-target variant takes our target as is
    assert_close_across_paths(ours.sum(-1), gfl.quality_focal_loss_tensor_target(logits, target, beta=beta,
                                                                                   reduction="none"))


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(3))
def test_quality_focal_reduces_to_focal_loss_on_binary_targets(seed):
    # GFL eq. 5 at y in {0, 1} is Focal Loss with gamma = beta and no alpha balance. mmdet's
    # py_sigmoid_focal_loss weights positives alpha and negatives 1 - alpha: alpha = 0.5 halves both.
    focal = mmdet_losses()[2]
    logits, _, _, target = random_case(seed)
    binary = (target > 0).float()
    for beta in (2.0, 1.0):
        ref = focal.py_sigmoid_focal_loss(logits, binary, gamma=beta, alpha=0.5, reduction="none")
        assert_close_across_paths(quality_focal_loss(logits, binary, beta=beta), 2 * ref)


# ----------------------------------------------------------------------------- properties
logit = st.floats(-30, 30)
quality = st.floats(0, 1)
interior_quality = st.floats(0.01, 0.99)
GRAD_ATOL = PATH_TOLERANCES[torch.float32][0]  # 8 float32 ulp at 1.0: these gradients are O(1) quantities


@given(logit, quality, st.floats(0.05, 1.0), st.floats(0.5, 3.0))
def test_both_losses_are_non_negative_and_qfl_is_below_bce(x, y, alpha, gamma):
    logits, target = torch.tensor([x]), torch.tensor([y])
    assert varifocal_loss(logits, target, alpha=alpha, gamma=gamma).item() >= 0
    qfl = quality_focal_loss(logits, target, beta=gamma).item()
    # the modulation |sigma - y|^beta <= 1 (computed with the same BCE kernel: no tolerance needed)
    assert 0 <= qfl <= F.binary_cross_entropy_with_logits(logits, target).item()


@given(interior_quality)
def test_qfl_is_zero_with_zero_gradient_where_the_probability_equals_the_target(y):
    # |sigma - y|^beta vanishes with its derivative (beta > 1) at sigma = y: loss 0 and gradient 0
    x = torch.tensor([math.log(y / (1 - y))], requires_grad=True)
    loss = quality_focal_loss(x, torch.tensor([y]))
    assert loss.item() <= GRAD_ATOL**2
    assert abs(torch.autograd.grad(loss.sum(), x)[0].item()) <= GRAD_ATOL


@given(interior_quality)
def test_vfl_positive_is_minimal_at_the_target_probability(y):
    # a positive's weight q does not depend on the logit, so d/dx q BCE(x, q) = q (sigma - q) = 0 at sigma = q;
    # the value there is q times the entropy of q, and other logits give more
    x = torch.tensor([math.log(y / (1 - y))], requires_grad=True)
    target = torch.tensor([y])
    loss = varifocal_loss(x, target)
    assert abs(torch.autograd.grad(loss.sum(), x)[0].item()) <= GRAD_ATOL
    x32, y32 = x.item(), target.item()  # the float32 inputs, the expected value from them in float64
    expected = y32 * (math.log1p(math.exp(x32)) - x32 * y32)  # q * BCE = q (softplus(x) - x q) = q H(q)
    # BCE cancels softplus(x) against x q in float32: allow 8 ulp of the larger term, |x| + ln 2
    assert abs(loss.item() - expected) <= GRAD_ATOL * (abs(x32) + 1)
    others = varifocal_loss(x.detach() + torch.tensor([-1.0, 1.0]), target.expand(2))
    assert torch.all(others > loss.detach())


@given(st.lists(logit, min_size=2, max_size=8))
def test_vfl_negative_grows_with_the_logit(xs):
    # negative: alpha sigma^gamma * softplus(x), both factors increasing in x
    logits = torch.tensor(sorted(xs))
    loss = varifocal_loss(logits, torch.zeros_like(logits))
    assert torch.all(loss[1:] >= loss[:-1])
