import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import boxes as B
from tests.oracles import mmdet, ultralytics


def random_boxes(n, seed, degenerate=False, scale=600.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) * scale / 3
    if degenerate:  # zero-area boxes: points, horizontal and vertical lines
        wh[::3] = 0
        wh[1::5, 0] = 0
        wh[2::7, 1] = 0
    return torch.cat([xy, xy + wh], 1)


# ------------------------------------------------------------------ hand-worked cases
def test_iou_giou_hand_worked():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 4.0, 2.0], [4.0, 0.0, 6.0, 2.0]])
    # overlap 1, union 4 + 4 - 1 = 7 -> 1/7; touching -> 0; apart -> 0
    iou = B.pairwise_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0, 0.0]]))
    # GIoU: enclose 9 -> 1/7 - (9 - 7)/9; touching: enclose 8, union 8 -> 0; apart: enclose 12 -> -(12-8)/12
    giou = B.pairwise_giou(a, b)
    torch.testing.assert_close(giou, torch.tensor([[1 / 7 - 2 / 9, 0.0, -1 / 3]]))
    # IoF: overlap / area(a) = 1/4
    torch.testing.assert_close(B.pairwise_iof(a, b)[0, 0], torch.tensor(0.25))


def test_diou_ciou_hand_worked():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([2.0, 0.0, 4.0, 2.0])
    # IoU 0; center distance^2 = 4; enclosing diagonal^2 = 4^2 + 2^2 = 20 -> DIoU = -0.2 (eps-level error)
    assert B.aligned_diou(a, b).item() == pytest.approx(-0.2, abs=1e-6)
    # same aspect ratio -> v = 0 -> CIoU == DIoU
    assert B.aligned_ciou(a, b).item() == pytest.approx(-0.2, abs=1e-6)


def test_identical_boxes_have_iou_one_and_no_nan():
    a = random_boxes(20, 0)
    for fn in (B.aligned_ciou, B.aligned_diou):
        out = fn(a, a)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, torch.ones(20), atol=1e-5, rtol=0)
    torch.testing.assert_close(B.aligned_iou(a, a), torch.ones(20))


def test_format_roundtrip():
    a = random_boxes(10, 1)
    for fmt in ("xywh", "cxcywh"):
        torch.testing.assert_close(B.convert_boxes(B.convert_boxes(a, "xyxy", fmt), fmt, "xyxy"), a)
    torch.testing.assert_close(B.xyxy_to_cxcywh(torch.tensor([0.0, 0, 4, 2])), torch.tensor([2.0, 1, 4, 2]))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="boxes2"):
        B.pairwise_iou(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(TypeError, match="boxes1"):
        B.pairwise_iou([[0, 0, 1, 1]], torch.zeros(3, 4))
    with pytest.raises(ValueError, match="in_fmt"):
        B.convert_boxes(torch.zeros(1, 4), "ltrb", "xyxy")
    with pytest.raises(ValueError, match="mode"):
        B.bbox_overlaps(torch.zeros(1, 4), torch.zeros(1, 4), mode="diou")


def test_empty_inputs_and_backward():
    a = torch.zeros(0, 4, requires_grad=True)
    b = random_boxes(3, 2)
    out = B.pairwise_iou(a, b)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert B.pairwise_giou(b, torch.zeros(0, 4)).shape == (3, 0)
    assert B.aligned_ciou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


def test_half_inputs_upcast_to_float32():
    a = random_boxes(8, 3).half()
    b = random_boxes(8, 4).half()
    out = B.pairwise_iou(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, B.pairwise_iou(a.float(), b.float()))
    # a 300 x 300 box has area 90000 > fp16 max: float32 keeps it finite
    big = torch.tensor([[0.0, 0.0, 300.0, 300.0]]).half()
    assert B.pairwise_iou(big, big).item() == pytest.approx(1.0)


def test_gradcheck_float64():
    a = random_boxes(4, 5).double().requires_grad_()
    b = (random_boxes(4, 6).double() + 10).requires_grad_()
    for fn in (B.aligned_iou, B.aligned_giou, B.aligned_diou):
        assert torch.autograd.gradcheck(fn, (a, b))
    # CIoU's alpha has no gradient by definition: check its analytic grad is finite and the rest by gradcheck
    ciou = lambda x, y: B.aligned_diou(x, y)  # noqa: E731  (DIoU part of CIoU)
    assert torch.autograd.gradcheck(ciou, (a, b))
    g = torch.autograd.grad(B.aligned_ciou(a, b).sum(), (a, b))
    assert all(torch.isfinite(t).all() for t in g)


def test_points_in_boxes():
    pts = torch.tensor([[1.0, 1.0], [2.0, 1.0], [5.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert B.points_in_boxes(pts, boxes).tolist() == [[True, False, False]]
    assert B.points_in_boxes(pts, boxes, inclusive=True).tolist() == [[True, True, False]]
    # eps: (1, 1) is 1 px from every side of (0, 0, 2, 2): inside for eps 0.5, not for eps 1 (strictly more)
    assert B.points_in_boxes(pts[:1], boxes, eps=0.5).tolist() == [[True]]
    assert B.points_in_boxes(pts[:1], boxes, eps=1.0).tolist() == [[False]]
    # NaN anywhere is outside, whichever test
    nan = torch.tensor([[float("nan"), 1.0]])
    assert not B.points_in_boxes(nan, boxes).any() and not B.points_in_boxes(nan, boxes, inclusive=True).any()


@pytest.mark.parametrize("eps, inclusive", [(0.0, False), (1e-9, False), (0.01, False), (0.0, True)])
def test_points_in_boxes_is_the_references_test(eps, inclusive):
    # the references compute the four distances and compare their minimum (ultralytics'
    # ``deltas.amin(-1).gt_(eps)``, mmdet's ``min(deltas) > 0.01``); points on sides, corners and 0.01 px
    # inside them included, so a different rounding would show
    g = torch.Generator().manual_seed(0)
    gts = torch.cat([random_boxes(20, 1), torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.1, 0.1, 0.3, 0.3]])])
    pts = torch.cat([torch.rand(200, 2, generator=g) * 600, gts[:, :2], gts[:, 2:], gts[:, :2] + 0.01,
                     torch.stack([gts[:, 0], gts[:, 3] - 0.01], 1)])
    deltas = torch.stack((pts[None, :, 0] - gts[:, None, 0], pts[None, :, 1] - gts[:, None, 1],
                          gts[:, None, 2] - pts[None, :, 0], gts[:, None, 3] - pts[None, :, 1]), -1)   # [M, A, 4]
    expected = deltas.amin(-1) >= 0 if inclusive else deltas.amin(-1) > eps
    assert torch.equal(B.points_in_boxes(pts, gts, eps, inclusive), expected)
    # aligned: each point with its own box, any broadcast (here [M, A] pairs)
    assert torch.equal(B.aligned_points_in_boxes(pts[None], gts[:, None], eps, inclusive), expected)


def test_compute_dtype():
    f16, f32, f64 = torch.zeros(1, dtype=torch.float16), torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    assert B.compute_dtype(f16, torch.zeros(1, dtype=torch.bfloat16)) == torch.float32
    assert B.compute_dtype(f16, None, f64) == torch.float64 and B.compute_dtype() == torch.float32
    assert B.to_compute_dtype(torch.tensor([3])).dtype == torch.float32 and B.to_compute_dtype(f64) is f64
    assert B.to_compute_dtype(f32) is f32 and B.to_compute_dtype(torch.tensor([True])).dtype == torch.float32


@pytest.mark.parametrize("mode", ["iou", "giou", "iof"])
def test_one_mmdet_kernel_for_pairwise_aligned_and_coordinates(mode):
    # pairwise, aligned and coordinate-table calls run the same kernel: the same bits, in place or not
    a, b = random_boxes(30, 4, degenerate=True), random_boxes(40, 5, degenerate=True)
    pairwise = B.bbox_overlaps(a, b, mode)                                              # [30, 40]
    aligned = B.bbox_overlaps(a[:, None].expand(30, 40, 4), b[None].expand(30, 40, 4), mode, is_aligned=True)
    assert torch.equal(pairwise, aligned)
    ca, cb = a[:, None].expand(30, 40, 4).reshape(-1, 4).t(), b[None].expand(30, 40, 4).reshape(-1, 4).t()
    for inplace in (False, True):
        table = B.overlaps_of_coordinates(ca.clone(), cb.clone(), mode, area_a=B.box_area(ca.t()),
                                          area_b=B.box_area(cb.t()), inplace=inplace)
        assert torch.equal(table.view(30, 40), pairwise)


# ------------------------------------------------------------------ properties
coord = st.floats(0, 500, allow_nan=False, width=32)
side = st.floats(0, 200, allow_nan=False, width=32)
box = st.tuples(coord, coord, side, side).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@given(st.lists(box, min_size=1, max_size=6), st.lists(box, min_size=1, max_size=6))
def test_iou_symmetric_and_bounded(xs, ys):
    a, b = torch.tensor(xs), torch.tensor(ys)
    iou = B.pairwise_iou(a, b)
    torch.testing.assert_close(iou, B.pairwise_iou(b, a).T)
    assert ((iou >= 0) & (iou <= 1 + 1e-6)).all()
    giou = B.pairwise_giou(a, b)
    assert ((giou >= -1 - 1e-6) & (giou <= 1 + 1e-6)).all()
    assert (giou <= iou + 1e-6).all()
    ciou = B.pairwise_ciou(a, b)
    assert ((ciou >= -1.5) & (ciou <= 1 + 1e-6)).all()


# ------------------------------------------------------------------ oracles
@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("degenerate", [False, True])
def test_mmdet_bbox_overlaps_exact(seed, degenerate):
    mm = mmdet()
    a, b = random_boxes(40, seed, degenerate), random_boxes(30, seed + 100, degenerate)
    for mode in ("iou", "giou", "iof"):
        assert torch.equal(B.bbox_overlaps(a, b, mode=mode), mm.bbox_overlaps(a, b, mode=mode))
        assert torch.equal(B.bbox_overlaps(a[:30], b, mode=mode, is_aligned=True),
                           mm.bbox_overlaps(a[:30], b, mode=mode, is_aligned=True))
    assert torch.equal(B.pairwise_giou(a, b), mm.bbox_overlaps(a, b, mode="giou"))
    # batched leading dimensions
    assert torch.equal(B.pairwise_iou(a.view(2, 20, 4), b.view(2, 15, 4)),
                       mm.bbox_overlaps(a.view(2, 20, 4), b.view(2, 15, 4)))


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("degenerate", [False, True])
def test_ultralytics_bbox_iou_exact(seed, degenerate):
    ul = ultralytics()
    a, b = random_boxes(40, seed, degenerate), random_boxes(40, seed + 100, degenerate)
    cases = [
        (dict(), lambda x, y: B.aligned_iou(x, y, convention="ultralytics")),
        (dict(GIoU=True), lambda x, y: B.aligned_giou(x, y, convention="ultralytics")),
        (dict(DIoU=True), B.aligned_diou),
        (dict(CIoU=True), B.aligned_ciou),
    ]
    for kw, fn in cases:
        ref = ul.metrics.bbox_iou(a, b, xywh=False, **kw).squeeze(-1)
        assert torch.equal(fn(a, b), ref), kw
        # pairwise by broadcasting, as TAL uses it
        ref = ul.metrics.bbox_iou(a[:, None], b[None], xywh=False, **kw).squeeze(-1)
        if kw.get("CIoU"):
            assert torch.equal(B.pairwise_ciou(a, b), ref)
        if kw.get("DIoU"):
            assert torch.equal(B.pairwise_diou(a, b), ref)
    # the two conventions agree to 1e-6 on ordinary pixel boxes
    ref = ul.metrics.bbox_iou(a, b, xywh=False).squeeze(-1)
    assert (B.aligned_iou(a, b) - ref).abs().max() < 1e-6 or degenerate


def test_ciou_formula_matches_paper():
    # CIoU = IoU - rho^2/c^2 - alpha v, v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2 (Zheng et al. 2020)
    a = torch.tensor([0.0, 0.0, 4.0, 2.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0, 3.0, 3.0], dtype=torch.float64)
    iou = 4 / (8 + 6 - 4)
    rho2 = (2 - 2) ** 2 + (1 - 1.5) ** 2
    c2 = 4**2 + 3**2
    v = 4 / math.pi**2 * (math.atan(2 / 3) - math.atan(4 / 2)) ** 2
    alpha = v / (1 - iou + v)
    assert B.aligned_ciou(a, b, eps=0.0).item() == pytest.approx(iou - rho2 / c2 - alpha * v, abs=1e-12)
