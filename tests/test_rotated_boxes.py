"""Oriented boxes: hand-worked cases, ultralytics 8.4.190 (ProbIoU, corners, formats) and shapely (exact
polygon IoU) as oracles, properties, gradients, edge cases and bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import boxes as B
from detassign import rotated_boxes as R
from tests import oracles


def random_rboxes(n, seed, spread=100.0, min_side=1.0, max_side=40.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * spread
    sides = torch.rand(n, 2, generator=g) * (max_side - min_side) + min_side
    angle = (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi
    return torch.cat((centre, sides, angle), 1).to(dtype)


def shapely_iou(b1, b2, mode="iou"):
    from shapely.geometry import Polygon

    c1, c2 = R.xywhr_to_corners(b1.double()).numpy(), R.xywhr_to_corners(b2.double()).numpy()
    out = np.zeros((len(c1), len(c2)))
    for i, p in enumerate(c1):
        for j, q in enumerate(c2):
            pa, pb = Polygon(p), Polygon(q)
            inter = pa.intersection(pb).area
            out[i, j] = inter / pa.area if mode == "iof" else inter / (pa.area + pb.area - inter)
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- hand-worked
def test_corners_of_an_axis_aligned_box():
    # (cx, cy, w, h, r) = (0, 0, 4, 2, 0): half-width (2, 0), half-height (0, 1)
    corners = R.xywhr_to_corners(torch.tensor([0.0, 0.0, 4.0, 2.0, 0.0]))
    assert torch.equal(corners, torch.tensor([[2.0, 1.0], [2.0, -1.0], [-2.0, -1.0], [-2.0, 1.0]]))
    assert torch.equal(R.xywhr_to_poly(torch.tensor([0.0, 0.0, 4.0, 2.0, 0.0])), corners.flatten())


def test_square_and_its_45_degree_turn():
    # two concentric squares of side 2, one turned 45 deg: the overlap is a regular octagon of area
    # 4 (2 sqrt2 - 2) = 3.3137; union 8 - 3.3137, IoU = (sqrt2 - 1) / (2 - sqrt2) = 1 / sqrt2
    a = torch.tensor([[5.0, 5.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[5.0, 5.0, 2.0, 2.0, math.pi / 4]], dtype=torch.float64)
    assert R.aligned_rotated_iou(a, b).item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert R.aligned_rotated_iou(a, b, mode="iof").item() == pytest.approx(2 * math.sqrt(2) - 2, abs=1e-12)


def test_axis_aligned_rotated_iou_is_the_box_iou():
    # angle 0 and angle pi describe the same axis-aligned rectangle as xyxy [cx - w/2, ..., cy + h/2]
    r1, r2 = random_rboxes(12, 1, dtype=torch.float64), random_rboxes(9, 2, dtype=torch.float64)
    r1[:, 4], r2[:, 4] = 0.0, math.pi
    xyxy = lambda r: torch.cat((r[:, :2] - r[:, 2:4] / 2, r[:, :2] + r[:, 2:4] / 2), 1)  # noqa: E731
    torch.testing.assert_close(R.pairwise_rotated_iou(r1, r2), B.pairwise_iou(xyxy(r1), xyxy(r2)), atol=1e-12, rtol=0)


def test_identical_boxes_probiou_is_one_minus_sqrt_two_eps():
    # identical Gaussians: t1 = t2 = 0 and t3 ~ 0, so the Bhattacharyya distance is clamped at eps = 1e-7 and
    # ProbIoU = 1 - sqrt(1 - exp(-1e-7) + 1e-7) = 1 - sqrt(2e-7) = 0.99955279
    box = torch.tensor([[10.0, 20.0, 8.0, 3.0, 0.3]], dtype=torch.float64)
    assert R.aligned_probiou(box, box).item() == pytest.approx(1 - math.sqrt(2e-7), abs=1e-9)


@pytest.mark.parametrize("pattern, expected", [
    # (0, 0, 2, 4, 0): a tall box. Long-edge patterns swap to w = 4 and turn by pi/2.
    ("le90", (4.0, 2.0, -math.pi / 2)),     # pi/2 wraps to the start of [-pi/2, pi/2)
    ("le135", (4.0, 2.0, math.pi / 2)),     # pi/2 lies in [-pi/4, 3pi/4)
    ("oc", (4.0, 2.0, -math.pi / 2)),       # (0 + pi/2) mod pi = pi/2 is not < pi/2: swap, then -pi/2
    ("ultralytics", (2.0, 4.0, 0.0)),       # 0 mod pi < pi/2: no swap, angle 0
])
def test_regularize_patterns_by_hand(pattern, expected):
    out = R.regularize_rboxes(torch.tensor([0.0, 0.0, 2.0, 4.0, 0.0], dtype=torch.float64), pattern)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, *expected], dtype=torch.float64))


def test_points_in_rotated_box_by_hand():
    # a 4 x 2 box turned 90 deg: it spans x in [-1, 1], y in [-2, 2]
    box = torch.tensor([[0.0, 0.0, 4.0, 2.0, math.pi / 2]])
    pts = torch.tensor([[0.0, 1.9], [1.5, 0.0], [0.0, 2.5], [0.99, -1.99]])
    assert R.points_in_rboxes(pts, box).tolist() == [[True, False, False, True]]
    # mmrotate's test keeps 0.01 away from the sides: (0.99, -1.99) sits exactly 0.01 inside both
    assert R.points_in_rboxes(pts, box, convention="mmrotate", eps=0.02).tolist() == [[True, False, False, False]]


# ----------------------------------------------------------------------------- ultralytics oracle
def test_probiou_equals_ultralytics():
    metrics = oracles.ultralytics().metrics
    for seed in range(5):
        a, b = random_rboxes(37, seed), random_rboxes(23, seed + 100)
        torch.testing.assert_close(R.pairwise_probiou(a, b), metrics.batch_probiou(a, b), atol=1e-6, rtol=0)
        torch.testing.assert_close(R.aligned_probiou(a[:23], b), metrics.probiou(a[:23], b).squeeze(-1),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(R.aligned_probiou(a[:23], b, floor=0.01),
                                   metrics.probiou(a[:23], b, floor=0.01).squeeze(-1), atol=1e-6, rtol=0)


def test_corners_and_formats_equal_ultralytics():
    ops = oracles.ultralytics().ultralytics.utils.ops
    boxes = random_rboxes(50, 3)
    assert torch.equal(R.xywhr_to_corners(boxes), ops.xywhr2xyxyxyxy(boxes))
    assert torch.equal(R.regularize_rboxes(boxes, "ultralytics"), ops.regularize_rboxes(boxes))
    # cv2.minAreaRect (float32) fits the same canonical rectangle: w >= h, angle in [-pi/4, 3pi/4)
    sides = boxes[:, 2:4]
    boxes = boxes[(sides[:, 0] - sides[:, 1]).abs() > 1.0]          # squares have two canonical angles
    ours = R.corners_to_xywhr(R.xywhr_to_corners(boxes))
    ref = ops.xyxyxyxy2xywhr(R.xywhr_to_poly(boxes))
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-5)
    # the same rectangle (its corners in another cyclic order): IoU 1
    torch.testing.assert_close(R.aligned_rotated_iou(ours.double(), boxes.double()),
                               torch.ones(len(boxes), dtype=torch.float64), atol=1e-5, rtol=0)


def test_inside_test_equals_ultralytics_select_candidates():
    tal = oracles.ultralytics().tal
    ref = tal.RotatedTaskAlignedAssigner(stride=[8, 16, 32])
    gts = random_rboxes(20, 4, spread=64, max_side=30)[None]
    xs = torch.arange(0, 64, 2.0)
    pts = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    mask = torch.ones(1, 20, 1)
    # ultralytics widens sides below stride_val = 16 first; feed it boxes that need no widening
    gts[..., 2:4] = gts[..., 2:4].clamp(min=16)
    assert torch.equal(R.points_in_rboxes(pts, gts), ref.select_candidates_in_gts(pts, gts, mask))


# ----------------------------------------------------------------------------- shapely oracle
@pytest.mark.parametrize("mode", ["iou", "iof"])
def test_exact_iou_equals_shapely(mode):
    for seed in range(3):
        a, b = random_rboxes(30, seed, spread=60), random_rboxes(25, seed + 50, spread=60)
        ref = shapely_iou(a, b, mode)
        assert (ref > 0).sum() > 50                                   # many overlapping pairs
        torch.testing.assert_close(R.pairwise_rotated_iou(a.double(), b.double(), mode=mode), ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(R.pairwise_rotated_iou(a, b, mode=mode), ref.float(), atol=2e-6, rtol=0)
        diag = R.aligned_rotated_iou(a[:25].double(), b.double(), mode=mode)
        torch.testing.assert_close(diag, ref.diagonal(), atol=1e-10, rtol=0)


def test_exact_iou_of_thin_and_nested_boxes_equals_shapely():
    a = torch.tensor([[50.0, 50.0, 80.0, 0.5, 0.1], [50.0, 50.0, 10.0, 10.0, 0.7], [50.0, 50.0, 100.0, 100.0, 0.0],
                      [0.0, 0.0, 1e-3, 1e-3, 0.2]], dtype=torch.float64)
    b = torch.tensor([[50.0, 50.0, 0.5, 80.0, 0.1], [52.0, 49.0, 4.0, 3.0, -1.2], [50.0, 50.0, 30.0, 30.0, 0.9]],
                     dtype=torch.float64)
    torch.testing.assert_close(R.pairwise_rotated_iou(a, b), shapely_iou(a, b), atol=1e-10, rtol=0)


def test_mmcv_or_torchvision_rotated_iou_when_installed():
    try:
        from mmcv.ops import box_iou_rotated

        # the mmdet oracle helper may have put a stand-in mmcv.ops in place whose ops raise when called
        box_iou_rotated(torch.tensor([[0.0, 0, 2, 2, 0]]), torch.tensor([[0.0, 0, 2, 2, 0]]))
    except Exception as err:  # mmcv-lite has no compiled ops; full mmcv needs a CUDA / C++ build
        pytest.skip(f"mmcv.ops.box_iou_rotated is not available here ({type(err).__name__}); torchvision has no "
                    f"rotated IoU op")
    a, b = random_rboxes(20, 7), random_rboxes(15, 8)
    torch.testing.assert_close(R.pairwise_rotated_iou(a, b), box_iou_rotated(a, b), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- properties
box_strategy = st.tuples(st.floats(-50, 50), st.floats(-50, 50), st.floats(0.5, 60), st.floats(0.5, 60),
                         st.floats(-7, 7))


@given(st.lists(box_strategy, min_size=1, max_size=6), st.lists(box_strategy, min_size=1, max_size=6))
def test_rotated_iou_properties(l1, l2):
    a, b = torch.tensor(l1, dtype=torch.float64), torch.tensor(l2, dtype=torch.float64)
    ab, ba = R.pairwise_rotated_iou(a, b), R.pairwise_rotated_iou(b, a)
    torch.testing.assert_close(ab, ba.T, atol=1e-9, rtol=0)
    assert bool(((ab >= 0) & (ab <= 1 + 1e-12)).all())
    torch.testing.assert_close(R.aligned_rotated_iou(a, a), torch.ones(len(a), dtype=torch.float64), atol=1e-9, rtol=0)
    # the same rectangles in other parameterisations: r + pi, and (h, w, r + pi/2)
    turned = torch.cat((a[:, :2], a[:, [3, 2]], a[:, 4:] + math.pi / 2), 1)
    flipped = torch.cat((a[:, :4], a[:, 4:] + math.pi), 1)
    for other in (turned, flipped, R.regularize_rboxes(a, "le90"), R.regularize_rboxes(a, "oc")):
        torch.testing.assert_close(R.pairwise_rotated_iou(other, b), ab, atol=1e-9, rtol=0)


@given(st.lists(box_strategy, min_size=1, max_size=6), st.lists(box_strategy, min_size=1, max_size=6))
def test_probiou_properties(l1, l2):
    a, b = torch.tensor(l1, dtype=torch.float64), torch.tensor(l2, dtype=torch.float64)
    ab = R.pairwise_probiou(a, b)
    torch.testing.assert_close(ab, R.pairwise_probiou(b, a).T, atol=1e-9, rtol=1e-9)
    # far apart the distance is clamped at 100 and 1 - sqrt(1 - exp(-100) + 1e-7) = -5e-8: barely negative
    assert bool(((ab >= -1e-7) & (ab < 1)).all())
    torch.testing.assert_close(R.aligned_probiou(a[:, None], b[None]), ab, atol=1e-12, rtol=0)


@given(st.lists(box_strategy, min_size=1, max_size=5))
def test_format_round_trips(l1):
    a = torch.tensor(l1, dtype=torch.float64)
    torch.testing.assert_close(R.convert_rboxes(R.convert_rboxes(a, "xywhr", "xywha"), "xywha", "xywhr"), a)
    back = R.convert_rboxes(R.convert_rboxes(a, "xywhr", "poly"), "poly", "xywhr")
    # the same rectangle (canonical form), hence the same corners up to their cyclic order: IoU 1
    torch.testing.assert_close(R.aligned_rotated_iou(back, a), torch.ones(len(a), dtype=torch.float64), atol=1e-7,
                               rtol=0)
    assert bool((back[:, 2] >= back[:, 3] - 1e-9).all())
    assert bool(((back[:, 4] >= -math.pi / 4 - 1e-9) & (back[:, 4] < 3 * math.pi / 4 + 1e-9)).all())
    hbox = R.rbox_to_hbox(a)
    corners = R.xywhr_to_corners(a)
    assert bool((corners >= hbox[:, None, :2] - 1e-9).all() and (corners <= hbox[:, None, 2:] + 1e-9).all())


def test_conventions_agree_away_from_the_sides():
    boxes = random_rboxes(15, 9, spread=50)
    xs = torch.arange(-10, 70, 1.3)
    pts = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    a = R.points_in_rboxes(pts, boxes)
    b = R.points_in_rboxes(pts, boxes, convention="mmrotate", eps=0.0)
    shrunk = R.points_in_rboxes(pts, boxes, convention="mmrotate", eps=0.05)
    grown = R.points_in_rboxes(pts, torch.cat((boxes[:, :2], boxes[:, 2:4] + 0.1, boxes[:, 4:]), 1),
                               convention="mmrotate", eps=0.0)
    assert bool((shrunk <= a).all() and (a <= grown).all())
    assert (a != b).sum() <= 2                                        # only points within rounding of a side


# ----------------------------------------------------------------------------- gradients, dtypes, edges
def test_gradcheck_float64():
    a = torch.tensor([[10.0, 10.0, 8.0, 5.0, 0.3], [0.0, 1.0, 3.0, 6.0, -0.4]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[11.0, 9.5, 7.0, 6.0, 1.1], [0.5, 0.0, 4.0, 4.0, 0.2]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(R.aligned_rotated_iou, (a, b))
    assert torch.autograd.gradcheck(R.aligned_probiou, (a, b))
    assert torch.autograd.gradcheck(lambda x, y: R.pairwise_rotated_iou(x, y), (a, b))
    assert torch.autograd.gradcheck(R.pairwise_probiou, (a, b))


def test_empty_inputs_keep_the_graph():
    a = torch.zeros(0, 5, requires_grad=True)
    b = random_rboxes(3, 0)
    out = R.pairwise_rotated_iou(a, b)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert a.grad.shape == (0, 5)
    assert R.pairwise_probiou(a, b).shape == (0, 3)
    assert R.aligned_rotated_iou(a, a).shape == (0,)
    assert R.rbbox_overlaps(b, a).shape == (3, 0)


def test_half_precision_is_computed_in_float32():
    a, b = random_rboxes(6, 1), random_rboxes(5, 2)
    for dtype in (torch.float16, torch.bfloat16):
        out = R.pairwise_rotated_iou(a.to(dtype), b.to(dtype))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, R.pairwise_rotated_iou(a.to(dtype).float(), b.to(dtype).float()))
        assert R.pairwise_probiou(a.to(dtype), b.to(dtype)).dtype == torch.float32


def test_degenerate_boxes():
    a = torch.tensor([[0.0, 0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 4.0, 4.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 4.0, 4.0, 0.0]])
    out = R.pairwise_rotated_iou(a, b)
    assert out[0, 0] == 0 and out[1, 0] == pytest.approx(1.0)
    # mmrotate clamps the zero side to 1e-3 px: a 1e-3 x 3 sliver inside the 4 x 4 box, IoU 3e-3 / 16
    assert R.rbbox_overlaps(a, b)[0, 0].item() == pytest.approx(3e-3 / 16, rel=1e-3)


def test_rbbox_overlaps_conventions():
    a, b = random_rboxes(8, 5, spread=30), random_rboxes(8, 6, spread=30)
    with_scores = torch.cat((a, torch.rand(8, 1)), 1)
    torch.testing.assert_close(R.rbbox_overlaps(with_scores, b), R.pairwise_rotated_iou(a, b))
    torch.testing.assert_close(R.rbbox_overlaps(a, b, is_aligned=True), R.aligned_rotated_iou(a, b))
    torch.testing.assert_close(R.rbbox_overlaps(a, b, mode="iof"), R.pairwise_rotated_iou(a, b, mode="iof"))
    assert not R.rbbox_overlaps(a.requires_grad_(), b).requires_grad    # mmrotate computes on detached copies
    assert R.is_rotated_calculator(dict(type="RBboxOverlaps2D"))
    assert not R.is_rotated_calculator(dict(type="BboxOverlaps2D"))
    with pytest.raises(ValueError, match="no other keys"):
        R.is_rotated_calculator(dict(type="RBboxOverlaps2D", scale=2))


def test_pairwise_batched_and_blocked():
    a, b = random_rboxes(40, 1, spread=50).view(2, 20, 5), random_rboxes(30, 2, spread=50).view(2, 15, 5)
    full = R.pairwise_rotated_iou(a, b)
    assert full.shape == (2, 20, 15)
    torch.testing.assert_close(full[1], R.pairwise_rotated_iou(a[1], b[1]))
    torch.testing.assert_close(R.pairwise_rotated_iou(a, b, max_pairs=7), full)


def test_boxes_module_re_exports():
    assert B.pairwise_probiou is R.pairwise_probiou and B.rbbox_overlaps is R.rbbox_overlaps


@pytest.mark.parametrize("call, match", [
    (lambda: R.pairwise_rotated_iou(torch.zeros(3, 4), torch.zeros(2, 5)), r"boxes1 must have shape \[\.\.\., 5\]"),
    (lambda: R.pairwise_probiou(torch.zeros(2, 3, 5), torch.zeros(2, 5)), r"\[N, 5\] and \[M, 5\]"),
    (lambda: R.aligned_rotated_iou(torch.zeros(2, 5), torch.zeros(2, 5), mode="giou"), "mode must be"),
    (lambda: R.regularize_rboxes(torch.zeros(2, 5), "le45"), "pattern must be one of"),
    (lambda: R.convert_rboxes(torch.zeros(2, 5), "xywhr", "xyxy"), "out_fmt must be one of"),
    (lambda: R.convert_rboxes(torch.zeros(2, 5), "poly", "xywhr"), r"\[\.\.\., 8\]"),
    (lambda: R.points_in_rboxes(torch.zeros(4, 3), torch.zeros(2, 5)), r"points must have shape \[A, 2\]"),
    (lambda: R.points_in_rboxes(torch.zeros(4, 2), torch.zeros(2, 5), convention="cv2"), "convention must be"),
    (lambda: R.cxcywh_angle_to_xywhr(torch.zeros(3, 4), torch.zeros(2)), "angle must have shape"),
    (lambda: R.rbbox_overlaps(torch.zeros(3, 5), torch.zeros(2, 5), is_aligned=True), "is_aligned"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cxcywh_angle_and_degrees():
    out = R.cxcywh_angle_to_xywhr(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([90.0]), degrees=True)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0, 4.0, math.pi / 2]]))
    torch.testing.assert_close(R.xywhr_to_xywha(out), torch.tensor([[1.0, 2.0, 3.0, 4.0, 90.0]]))
