"""bbox_iou_loss, bbox_giou_loss, bbox_ciou_loss (detassign.losses.iou_loss): ``1 - overlap``, element-wise.

Oracles: ultralytics 8.4.190 ``ultralytics.utils.metrics.bbox_iou(pred, target, xywh=False, GIoU= / CIoU=)``
(the convention we follow: eps 1e-7 on heights and denominators, ``pred`` first, alpha without gradient)
and mmdet 3.3.0 ``mmdet.models.losses.iou_loss.giou_loss`` / ``ciou_loss`` (reduction='none'), which put
eps elsewhere and, for CIoU, drop the aspect-ratio term where IoU <= 0.5 (the ``(ious > 0.5)`` gate of
CIoU's journal version); ours keeps it everywhere, as ultralytics and the CIoU paper's eq. 10 do.
"""
import importlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign.boxes import aligned_diou, aligned_iou
from detassign.losses import bbox_ciou_loss, bbox_giou_loss, bbox_iou_loss
from tests.losses.checks import assert_half_in_float32_and_empty
from tests.oracles import mmdet, ultralytics
from tests.tolerances import assert_close_across_paths

EPS = 1e-7  # ULTRALYTICS_EPS, the losses' default
LOSSES = {"iou": bbox_iou_loss, "giou": bbox_giou_loss, "ciou": bbox_ciou_loss}
ULTRA_FLAGS = {"iou": {}, "giou": dict(GIoU=True), "ciou": dict(CIoU=True)}

# mmdet puts eps on the union only (and, for CIoU, also on c^2 and on the heights in v); on boxes with
# sides >= 1 px this moves the loss by ~1e-7 (measured 2.4e-7 in float32): a convention gap, not rounding.
MMDET_CONVENTION_ATOL = 1e-6


def _boxes64(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, dtype=torch.float64, generator=g) * 10
    pred = torch.cat((xy, xy + 1 + torch.rand(n, 2, dtype=torch.float64, generator=g) * 5), 1)
    gt = torch.cat((xy + 0.5, xy + 2 + torch.rand(n, 2, dtype=torch.float64, generator=g) * 5), 1)
    return pred, gt


def random_pairs(seed, n=300, degenerate=False):
    """pred, target [n, 4] xyxy float32: overlapping, disjoint and (optionally) zero-area and identical pairs."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60 + 1
    target = torch.cat((xy, xy + wh), 1)
    shift = torch.randn(n, 2, generator=g) * torch.tensor([3.0, 30.0]).repeat_interleave(n // 2 + 1)[:n, None]
    scale = (1 + 0.3 * torch.randn(n, 2, generator=g)).clamp(min=0.2)
    pred = torch.cat((xy + shift, xy + shift + wh * scale), 1)
    if degenerate:
        pred[::7, 2] = pred[::7, 0]  # zero width
        pred[1::7, 3] = pred[1::7, 1]  # zero height
        pred[2::7] = target[2::7]  # identical
    return pred, target


def mmdet_iou_loss():
    """mmdet's iou_loss module (giou_loss, ciou_loss); skips, or fails under DETASSIGN_REQUIRE_ORACLES=1."""
    mmdet().heads()  # registers mmdet.models.losses behind the mmcv-lite workarounds
    # by module path: the package re-exports a function named iou_loss that shadows the module attribute
    return importlib.import_module("mmdet.models.losses.iou_loss")


# ----------------------------------------------------------------------------- hand-worked
def test_ciou_loss_values():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert bbox_ciou_loss(box, box).abs().item() < 1e-6
    # disjoint equal squares side 1, centers 3 apart on x: IoU 0, rho^2 = 9, c^2 = 4^2 + 1^2 = 17, v = 0
    a, b = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[3.0, 0.0, 4.0, 1.0]])
    torch.testing.assert_close(bbox_ciou_loss(a, b), torch.tensor([1 + 9 / 17]), rtol=1e-5, atol=1e-5)


def test_overlapping_squares_hand_values():
    # (0, 0, 2, 2) vs (1, 1, 3, 3): inter 1, union 4 + 4 - 1 = 7 -> IoU 1/7, loss 6/7.
    # hull (0, 0, 3, 3) area 9 -> GIoU = 1/7 - (9 - 7)/9 = -5/63, loss 68/63.
    # centres (1, 1), (2, 2): rho^2 = 2, hull diagonal^2 c^2 = 18; same aspect so v = 0 ->
    # CIoU = 1/7 - 2/18 = 2/63, loss 61/63. eps = 0 makes these exact.
    a = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1, 3, 3]], dtype=torch.float64)
    for name, expected in (("iou", 6 / 7), ("giou", 68 / 63), ("ciou", 61 / 63)):
        assert_close_across_paths(LOSSES[name](a, b, eps=0.0), torch.tensor([expected], dtype=torch.float64), name)
        # default eps = 1e-7 moves them by < 1e-6 on boxes this size
        assert abs(LOSSES[name](a, b).item() - expected) < 1e-6, name


def test_ciou_aspect_term_hand_value():
    # a = (0, 0, 2, 1) (w 2, h 1), b = (0, 0, 1, 2) (w 1, h 2): inter 1, union 3 -> IoU 1/3.
    # centres (1, 0.5), (0.5, 1): rho^2 = 0.5; hull (0, 0, 2, 2): c^2 = 8 -> rho^2 / c^2 = 1/16.
    # v = 4/pi^2 (atan(1/2) - atan(2))^2 = 4/pi^2 atan(3/4)^2   (atan 2 - atan 1/2 = pi/2 - atan(4/3) = atan(3/4))
    # alpha = v / (1 - 1/3 + v) -> loss = 1 - 1/3 + 1/16 + v^2 / (2/3 + v)
    a = torch.tensor([[0.0, 0, 2, 1]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0, 1, 2]], dtype=torch.float64)
    v = 4 / math.pi**2 * math.atan(3 / 4) ** 2
    expected = 1 - 1 / 3 + 1 / 16 + v * v / (2 / 3 + v)
    assert_close_across_paths(bbox_ciou_loss(a, b, eps=0.0), torch.tensor([expected], dtype=torch.float64))


def test_ciou_loss_can_exceed_two():
    # The docstring's "[0, 2 + ...)": far apart, tiny boxes of crossed aspect. a = (0, 0, 0.01, 1) (tall),
    # b = (1000, 0, 1001, 0.01) (flat): IoU 0; rho^2 / c^2 = (1000.495^2 + 0.495^2) / (1001^2 + 1^2) ~ 0.999;
    # v = 4/pi^2 (atan(100) - atan(0.01))^2 ~ 0.975, alpha v = v^2 / (1 + v) ~ 0.481 -> loss ~ 2.48 < 2.5.
    a = torch.tensor([[0.0, 0, 0.01, 1]], dtype=torch.float64)
    b = torch.tensor([[1000.0, 0, 1001, 0.01]], dtype=torch.float64)
    v = 4 / math.pi**2 * (math.atan(100) - math.atan(0.01)) ** 2
    expected = 1 + (1000.495**2 + 0.495**2) / (1001**2 + 1) + v * v / (1 + v)
    assert 2.4 < expected < 2.5
    assert_close_across_paths(bbox_ciou_loss(a, b, eps=0.0), torch.tensor([expected], dtype=torch.float64))


def test_ciou_loss_gradcheck_float64():
    # CIoU's trade-off weight alpha = v / (1 - IoU + v) is a constant for the gradient (Zheng et al.'s
    # reference code), so finite differences of the full formula disagree by design. Gradcheck instead the
    # same formula with alpha frozen at its value, written out here from aligned_diou, and check that
    # bbox_ciou_loss's autograd gradient equals that gradient.
    eps = 1e-7
    pred, gt = _boxes64(0)

    def aspect_term(p):
        w1, h1 = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1] + eps
        w2, h2 = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1] + eps
        return (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2

    with torch.no_grad():
        v0 = aspect_term(pred)
        alpha0 = v0 / (1 - aligned_iou(pred, gt, convention="ultralytics") + v0 + eps)

    def frozen(p):
        return 1 - (aligned_diou(p, gt) - aspect_term(p) * alpha0)

    p = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(frozen, (p,))
    torch.testing.assert_close(bbox_ciou_loss(p, gt), frozen(p))
    ours = torch.autograd.grad(bbox_ciou_loss(p, gt).sum(), p)[0]
    reference = torch.autograd.grad(frozen(p).sum(), p)[0]
    torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("name", ["iou", "giou"])
def test_iou_and_giou_loss_gradcheck_float64(name):
    pred, gt = _boxes64(1)  # overlapping pairs with distinct edges: away from the min / max / clamp kinks
    assert torch.autograd.gradcheck(lambda p: LOSSES[name](p, gt), (pred.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda t: LOSSES[name](pred, t), (gt.clone().requires_grad_(),))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_broadcasting_half_inputs_and_empty(name):
    fn = LOSSES[name]
    pred, target = random_pairs(4, n=12)
    batched = fn(pred.view(3, 4, 4), target[:4])  # [3, 4, 4] vs [4, 4] -> [3, 4]
    assert batched.shape == (3, 4)
    assert torch.equal(batched[1], fn(pred[4:8], target[:4]))
    # half / bfloat16 boxes are computed in float32
    assert_half_in_float32_and_empty(fn, pred, target, (0, 4), (0,))


# ----------------------------------------------------------------------------- oracles
@pytest.mark.oracle
@pytest.mark.parametrize("degenerate", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_losses_match_ultralytics_bbox_iou(seed, degenerate):
    ul = ultralytics()
    pred, target = random_pairs(seed, degenerate=degenerate)
    for name, fn in LOSSES.items():
        p = pred.clone().requires_grad_()
        ref_p = pred.clone().requires_grad_()
        ours = fn(p, target)
        ref = 1.0 - ul.metrics.bbox_iou(ref_p, target, xywh=False, **ULTRA_FLAGS[name]).squeeze(-1)
        assert_close_across_paths(ours, ref, name)
        # same gradient, CIoU's alpha held constant in both
        assert_close_across_paths(torch.autograd.grad(ours.sum(), p)[0],
                                  torch.autograd.grad(ref.sum(), ref_p)[0], f"{name} grad")


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_giou_and_ciou_against_mmdet_conventions(seed):
    mm = mmdet_iou_loss()
    pred, target = random_pairs(seed)
    torch.testing.assert_close(bbox_giou_loss(pred, target), mm.giou_loss(pred, target, reduction="none"),
                               rtol=0, atol=MMDET_CONVENTION_ATOL)
    ours, ref = bbox_ciou_loss(pred, target), mm.ciou_loss(pred, target, reduction="none")
    high = aligned_iou(pred, target, convention="ultralytics") > 0.5
    assert 0 < int(high.sum()) < len(high)  # both regimes present
    torch.testing.assert_close(ours[high], ref[high], rtol=0, atol=MMDET_CONVENTION_ATOL)
    # IoU <= 0.5: mmdet's alpha is 0, so its CIoU loss is the DIoU loss; ours adds alpha * v >= 0
    torch.testing.assert_close(ref[~high], 1 - aligned_diou(pred, target)[~high], rtol=0, atol=MMDET_CONVENTION_ATOL)
    assert torch.all(ours[~high] >= ref[~high] - MMDET_CONVENTION_ATOL)
    assert (ours[~high] - ref[~high]).max() > 1e-3  # the gap is real on these pairs


# ----------------------------------------------------------------------------- properties
coord = st.floats(-100, 100)


@st.composite
def box_pair(draw, min_side=0.0):
    boxes = []
    for _ in range(2):
        x, y = draw(coord), draw(coord)
        w, h = draw(st.floats(min_side, 60)), draw(st.floats(min_side, 60))
        boxes.append([x, y, x + w, y + h])
    return torch.tensor(boxes, dtype=torch.float64)  # [2, 4]: pred, target


@given(box_pair(), st.sampled_from([torch.float32, torch.float64]))
def test_losses_are_bounded_and_ordered(pair, dtype):
    pred, target = pair.to(dtype).unbind(0)
    iou, giou, ciou = (LOSSES[k](pred, target).item() for k in ("iou", "giou", "ciou"))
    assert 0 <= iou <= 1
    assert giou <= 2
    assert 0 <= ciou < 2.5  # 1 - IoU <= 1, rho^2 / c^2 < 1, alpha v = v^2 / (1 - IoU + v) < 1/2
    assert ciou >= iou  # CIoU subtracts two non-negative terms from IoU
    # GIoU >= 0 needs boxes of positive area: see test_giou_loss_of_zero_area_boxes_can_be_negative
    if float((pair[:, 2:] - pair[:, :2]).min()) >= 1e-3:
        assert giou >= 0


def test_giou_loss_of_zero_area_boxes_can_be_negative():
    # The ultralytics convention adds eps to each height inside the union but not to the hull height:
    # a point (0, 0, 0, 0) vs the segment (0, 0, 2, 0): union = 0 * eps + 2 * eps + eps = 3 eps, IoU 0,
    # hull area = 2 * 0 + eps = eps -> GIoU = 0 - (eps - 3 eps) / eps = 2, loss -1. ultralytics' bbox_iou
    # gives the same (test_losses_match_ultralytics_bbox_iou checks zero-area pairs); fixing it would break parity.
    a, b = torch.tensor([[0.0, 0, 0, 0]]), torch.tensor([[0.0, 0, 2, 0]])
    torch.testing.assert_close(bbox_giou_loss(a, b), torch.tensor([-1.0]))


@given(box_pair(min_side=1.0))
def test_identical_boxes_give_zero_up_to_eps(pair):
    box = pair[0]
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    # with eps: IoU = w h / (w (h + eps) * 2 - w h + eps) -> 1 - IoU <= (2 w + 1) eps / (w h)
    bound = (2 * w + 1) * EPS / (w * h)
    for name, fn in LOSSES.items():
        assert 0 <= fn(box, box).item() <= bound + 1e-15, name
    # without eps, IoU and GIoU are exactly 1 (CIoU's alpha = v / (1 - IoU + v) would be 0 / 0 there:
    # its eps is what keeps identical boxes finite)
    assert bbox_iou_loss(box, box, eps=0.0).item() == 0 and bbox_giou_loss(box, box, eps=0.0).item() == 0


@given(box_pair(), st.sampled_from([torch.float32, torch.float64]))
def test_losses_are_symmetric(pair, dtype):
    a, b = pair.to(dtype).unbind(0)
    # IoU and GIoU evaluate the same commutative ops on swapped operands: bit-identical
    assert torch.equal(bbox_iou_loss(a, b), bbox_iou_loss(b, a))
    assert torch.equal(bbox_giou_loss(a, b), bbox_giou_loss(b, a))
    # CIoU's centre offset sums the coordinates in another order once swapped: equal up to rounding
    if dtype == torch.float64:
        assert_close_across_paths(bbox_ciou_loss(a, b), bbox_ciou_loss(b, a))


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_inputs_raise(name):
    fn = LOSSES[name]
    good = torch.zeros(3, 4)
    # the messages name the positional roles of detassign.boxes: boxes1 = pred_boxes, boxes2 = target_boxes
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., 4\], got \(3, 5\)"):
        fn(torch.zeros(3, 5), good)
    with pytest.raises(ValueError, match=r"boxes2 must have shape \[\.\.\., 4\], got \(3,\)"):
        fn(good, torch.zeros(3))
    with pytest.raises(TypeError, match="boxes1 must be a torch.Tensor, got list"):
        fn([[0.0, 0, 1, 1]], good)
    with pytest.raises(ValueError, match="boxes1 and boxes2 must be on one device, got cpu and meta"):
        fn(good, torch.zeros(3, 4, device="meta"))
