"""Match costs: hand-worked values, mmdet 3.3.0 parity, batched == per-image, dtypes, errors."""
import math

import pytest
import torch

from detassign import Instances, build_match_cost
from detassign.assigners.match_costs import (BBoxL1Cost, ClassificationCost, CrossEntropyLossCost, DiceCost,
                                             FocalLossCost, IoUCost)
from tests import oracles

META = dict(img_shape=(100, 200))  # (h, w)


def rand_boxes(n, size=100.0, gen=None):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


# ------------------------------------------------------------------------------------ hand-worked
def test_bbox_l1_by_hand():
    pred = Instances(bboxes=torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    gt = Instances(bboxes=torch.tensor([[20.0, 20.0, 50.0, 50.0]]))
    # xyxy, w=200, h=100: |10-20|/200 + |20-20|/100 + |30-50|/200 + |60-50|/100 = .05 + 0 + .1 + .1 = .25
    assert BBoxL1Cost(weight=5.0)(pred, gt, META).item() == pytest.approx(5 * 0.25)
    # cxcywh: pred (20, 40, 20, 40), gt (35, 35, 30, 30): 15/200 + 5/100 + 10/200 + 10/100 = .275
    assert BBoxL1Cost(box_format="xywh")(pred, gt, META).item() == pytest.approx(0.275)


def test_iou_cost_by_hand():
    pred = Instances(bboxes=torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    gt = Instances(bboxes=torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    # intersection 1, union 4 + 4 - 1 = 7, enclosing 3 x 3 = 9: IoU 1/7, GIoU 1/7 - 2/9 = -5/63
    assert IoUCost(iou_mode="iou")(pred, gt).item() == pytest.approx(-1 / 7)
    assert IoUCost(weight=2.0)(pred, gt).item() == pytest.approx(2 * 5 / 63)


def test_classification_and_focal_by_hand():
    pred = Instances(scores=torch.tensor([[0.0, math.log(3.0)]]))
    gt = Instances(labels=torch.tensor([1, 0]))
    # softmax([0, ln 3]) = [1/4, 3/4] -> costs [-3/4, -1/4]
    assert torch.allclose(ClassificationCost()(pred, gt), torch.tensor([[-0.75, -0.25]]))
    # logit 0 -> p = 1/2: pos = -ln(1/2) * .25 * (1/2)^2, neg = -ln(1/2) * .75 * (1/2)^2 -> pos - neg = -.125 ln 2
    zero = Instances(scores=torch.zeros(1, 2))
    assert FocalLossCost()(zero, gt)[0, 0].item() == pytest.approx(-0.125 * math.log(2), rel=1e-6)


def test_mask_costs_by_hand():
    pred = Instances(masks=torch.tensor([[1.0, 0.5, 0.0, 0.0]]))
    gt = Instances(masks=torch.tensor([[1, 1, 0, 0]]))
    # naive dice: 2 * (1 + .5) = 3 over 1.5 + 2 = 3.5; eps 1 -> 1 - 4 / 4.5 = 1/9
    assert DiceCost(eps=1.0)(pred, gt).item() == pytest.approx(1 / 9)
    # squared denominator: 1 + .25 + 2 = 3.25 -> 1 - 4 / 4.25 = 1/17
    assert DiceCost(eps=1.0, naive_dice=False)(pred, gt).item() == pytest.approx(1 / 17)
    logits = Instances(masks=torch.zeros(1, 2))
    gt2 = Instances(masks=torch.tensor([[1, 0]]))
    # BCE(logit 0) = ln 2 for either target -> mean ln 2
    assert CrossEntropyLossCost()(logits, gt2).item() == pytest.approx(math.log(2))
    # focal per pixel: pos .0625 ln2 (target 1), neg .1875 ln2 (target 0) -> mean .125 ln2
    assert FocalLossCost(binary_input=True)(logits, gt2).item() == pytest.approx(0.125 * math.log(2), rel=1e-6)


# ------------------------------------------------------------------------------------ oracle parity
COST_CFGS = [
    dict(type="ClassificationCost", weight=2.0),
    dict(type="FocalLossCost", weight=2.0),
    dict(type="FocalLossCost", alpha=0.4, gamma=1.5, eps=1e-8, weight=1.5),
    dict(type="FocalLossCost", binary_input=True, weight=5.0),
    dict(type="BBoxL1Cost", weight=5.0),
    dict(type="BBoxL1Cost", box_format="xywh", weight=5.0),
    dict(type="IoUCost", iou_mode="iou", weight=2.0),
    dict(type="IoUCost", iou_mode="giou", weight=2.0),
    dict(type="DiceCost", weight=5.0, pred_act=True, eps=1.0),
    dict(type="DiceCost", naive_dice=False, eps=1e-3),
    dict(type="CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
]


def random_instances(seed, Q=None, M=None, C=7, hw=(6, 5), dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    Q = int(torch.randint(0, 9, (1,), generator=gen)) if Q is None else Q
    M = int(torch.randint(0, 7, (1,), generator=gen)) if M is None else M
    pred = dict(scores=(torch.randn(Q, C, generator=gen) * 3).to(dtype),
                bboxes=rand_boxes(Q, gen=gen).to(dtype),
                masks=(torch.randn(Q, *hw, generator=gen) * 2).to(dtype))
    gt = dict(labels=torch.randint(0, C, (M,), generator=gen), bboxes=rand_boxes(M, gen=gen),
              masks=(torch.rand(M, *hw, generator=gen) > 0.5).long())
    if M and Q:  # a duplicate box / mask pair and a zero-size GT
        pred["bboxes"][0] = gt["bboxes"][0].to(dtype)
        gt["bboxes"][-1, 2:] = gt["bboxes"][-1, :2]
    return pred, gt


@pytest.mark.oracle
@pytest.mark.parametrize("cfg", COST_CFGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_costs_match_mmdet(cfg):
    mm = oracles.mmdet()
    ours, ref = build_match_cost(cfg), mm.task_utils.build(cfg)
    for seed in range(30):
        pred, gt = random_instances(seed)
        got = ours(Instances(**pred), Instances(**gt), META)
        want = ref(mm.InstanceData(**pred), mm.InstanceData(**gt), META)
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.oracle
def test_binary_focal_cost_matches_mmdet():
    mm = oracles.mmdet()
    cfg = dict(type="BinaryFocalLossCost", weight=2.0)
    ours, ref = build_match_cost(cfg), mm.task_utils.build(cfg)
    for seed in range(30):
        gen = torch.Generator().manual_seed(seed)
        Q, M, T = 6, int(torch.randint(1, 5, (1,), generator=gen)), 9
        scores = torch.randn(Q, T, generator=gen) * 2
        positive_maps = (torch.rand(M, T, generator=gen) > 0.6).float()
        token_mask = (torch.rand(T, generator=gen) > 0.3)
        token_mask[0] = True
        gt = dict(positive_maps=positive_maps, text_token_mask=token_mask[None].expand(M, T).clone())
        got = ours(Instances(scores=scores), Instances(**gt))
        want = ref(mm.InstanceData(scores=scores), mm.InstanceData(**gt))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cfg", COST_CFGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_half_inputs_computed_in_float32(cfg, dtype):
    """Half inputs give float32 costs equal to mmdet's on the same values upcast to float32."""
    mm = oracles.mmdet()
    ours, ref = build_match_cost(cfg), mm.task_utils.build(cfg)
    for seed in range(5):
        pred, gt = random_instances(seed, Q=6, M=4, dtype=dtype)
        got = ours(Instances(**pred), Instances(**gt), META)
        pred32 = {k: v.float() for k, v in pred.items()}
        want = ref(mm.InstanceData(**pred32), mm.InstanceData(**gt), META)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------ batched path
@pytest.mark.parametrize("cfg", COST_CFGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_batched_equals_per_image(cfg):
    cost = build_match_cost(cfg)
    B, Q, M = 3, 5, 4
    preds, gts = zip(*(random_instances(100 + b, Q=Q, M=M) for b in range(B)))
    shapes = torch.tensor([[100.0, 200.0], [50.0, 80.0], [640.0, 480.0]])
    stack = lambda dicts: Instances(**{k: torch.stack([d[k] for d in dicts]) for k in dicts[0]})  # noqa: E731
    batched = cost.batched(stack(preds), stack(gts), shapes)
    assert batched.shape == (B, Q, M)
    for b in range(B):
        single = cost(Instances(**preds[b]), Instances(**gts[b]), dict(img_shape=tuple(shapes[b].tolist())))
        torch.testing.assert_close(batched[b], single, atol=1e-6, rtol=1e-6)


def test_empty_gt_and_empty_queries():
    for cfg in COST_CFGS:
        cost = build_match_cost(cfg)
        for Q, M in ((4, 0), (0, 3), (0, 0)):
            pred, gt = random_instances(0, Q=Q, M=M)
            assert cost(Instances(**pred), Instances(**gt), META).shape == (Q, M)


def test_costs_are_differentiable_in_float64():
    pred = Instances(bboxes=rand_boxes(3).double().requires_grad_(),
                     scores=torch.randn(3, 4, dtype=torch.float64, requires_grad=True))
    gt = Instances(bboxes=rand_boxes(2).double(), labels=torch.tensor([0, 3]))
    for cost in (IoUCost(), BBoxL1Cost(), FocalLossCost(), ClassificationCost()):
        out = cost(pred, gt, META)
        assert out.dtype == torch.float64
        out.sum().backward()
    assert torch.isfinite(pred.bboxes.grad).all() and torch.isfinite(pred.scores.grad).all()


# ------------------------------------------------------------------------------------ errors
def test_bad_options_rejected():
    with pytest.raises(ValueError, match="box_format"):
        BBoxL1Cost(box_format="cxcywh")
    with pytest.raises(ValueError, match="iou_mode"):
        IoUCost(iou_mode="diou")
    with pytest.raises(ValueError, match="use_sigmoid"):
        CrossEntropyLossCost(use_sigmoid=False)
    with pytest.raises(TypeError, match="unknown argument"):
        build_match_cost(dict(type="DiceCost", alpha=1))
    with pytest.raises(ValueError, match="unknown match cost"):
        build_match_cost(dict(type="L2Cost"))


def test_missing_fields_and_img_shape():
    pred, gt = random_instances(0, Q=3, M=2)
    with pytest.raises(ValueError, match="img_shape"):
        BBoxL1Cost()(Instances(**pred), Instances(**gt))
    with pytest.raises(ValueError, match="pred_instances.masks"):
        DiceCost()(Instances(scores=pred["scores"]), Instances(**gt))
    with pytest.raises(ValueError, match="same number of pixels"):
        DiceCost()(Instances(masks=torch.zeros(3, 4, 4)), Instances(masks=torch.zeros(2, 5, 5)))


# ------------------------------------------------------------------------------------ in-place / blockwise paths
def _box_batch(seed, B=5, Q=7, M=6, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.stack([rand_boxes(Q, gen=gen) for _ in range(B)]).to(dtype)
    gt = torch.stack([rand_boxes(M, gen=gen) for _ in range(B)]).to(dtype)
    pred[0, 0] = gt[0, 0]                         # identical boxes: IoU 1
    pred[0, 1] = torch.tensor([5.0, 5.0, 5.0, 9.0], dtype=dtype)   # zero area: union clamped at eps
    return Instances(bboxes=pred), Instances(bboxes=gt), torch.tensor([[100.0, 200.0]] * B)


@pytest.mark.parametrize("block_bytes", [1, 2000, 2 ** 20])   # one image per block, a few, all at once
@pytest.mark.parametrize("cost", [BBoxL1Cost(weight=5.0), BBoxL1Cost(box_format="xywh", weight=5.0),
                                  IoUCost(weight=2.0), IoUCost(iou_mode="iou", weight=3.0)], ids=repr)
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.float64, torch.float32),
                                    (torch.float32, torch.float64)], ids=str)
def test_box_costs_added_by_blocks_are_the_sum(monkeypatch, block_bytes, cost, dtypes):
    """add_to works a few images at a time and in place; the sum has the bits of total + batched (same
    element-wise arithmetic), also when the sum must be promoted to the cost's dtype."""
    import detassign.assigners.match_costs as mc
    monkeypatch.setattr(mc, "ADD_BLOCK_BYTES", block_bytes)
    total_dtype, box_dtype = dtypes
    pred, gt, shapes = _box_batch(3, dtype=box_dtype)
    total = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(0), dtype=total_dtype)
    want = total + cost.batched(pred, gt, shapes)
    got = cost.add_to(total.clone(), pred, gt, shapes)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("mode", ["iou", "giou"])
def test_overlaps_into_scratch_has_the_bits_of_the_mmdet_kernel(mode):
    """The four-buffer IoU / GIoU of IoUCost's blocks (overlaps_of_coordinates(work=...)) equals
    boxes.pairwise_(g)iou bit for bit, disjoint, nested, identical and degenerate boxes included."""
    from detassign.boxes import overlaps_of_coordinates, pairwise_giou, pairwise_iou
    for dtype in (torch.float32, torch.float64):
        pred, gt, _ = _box_batch(7, B=3, Q=9, M=5, dtype=dtype)
        p, g = pred.bboxes, gt.bboxes
        a = [p[..., :, i, None].contiguous() for i in range(4)]
        b = [g[..., None, :, i].contiguous() for i in range(4)]
        work = torch.full((4, 3, 9, 5), float("nan"), dtype=dtype)
        got = overlaps_of_coordinates(a, b, mode, area_a=(a[2] - a[0]) * (a[3] - a[1]),
                                      area_b=(b[2] - b[0]) * (b[3] - b[1]), work=work)
        want = (pairwise_giou if mode == "giou" else pairwise_iou)(p, g)
        assert torch.equal(got, want)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.4, 1.5), (0.25, 0)])
def test_focal_cost_in_place_equals_its_terms(alpha, gamma):
    """Without autograd the focal cost runs in place on the gathered logits; same bits as pos - neg."""
    from detassign.assigners.match_costs import _focal_terms, _gather_classes, focal_cost
    gen = torch.Generator().manual_seed(1)
    scores, labels = torch.randn(4, 33, 7, generator=gen) * 4, torch.randint(0, 7, (4, 5), generator=gen)
    pos, neg = _focal_terms(_gather_classes(scores, labels), alpha, gamma, 1e-12)
    assert torch.equal(focal_cost(scores, labels, alpha, gamma), pos - neg)


def test_in_place_weighting_leaves_stored_costs_alone():
    """batched() weights in place only what the built-in costs compute anew: a subclass whose compute returns a
    stored tensor (its own or an IoUCost override) keeps it intact, and batched() always returns a new tensor."""
    from detassign.assigners.match_costs import BaseMatchCost

    stored = torch.arange(6.0).reshape(1, 2, 3)

    class Stored(BaseMatchCost):
        def compute(self, pred_instances, gt_instances, img_shapes=None):
            return stored

    class StoredIoU(IoUCost):
        def compute(self, pred_instances, gt_instances, img_shapes=None):
            return stored

    for cost in (Stored(weight=3.0), StoredIoU(weight=3.0)):
        out = cost.batched(None, None)
        assert out.data_ptr() != stored.data_ptr() and torch.equal(out, torch.arange(6.0).reshape(1, 2, 3) * 3)
        assert torch.equal(stored, torch.arange(6.0).reshape(1, 2, 3))


def test_not_inf_check_behind_one_sum():
    """Inf scores are refused with the element-wise check's message; NaN is left to the cost report, and finite
    scores whose sum overflows (the cheap test fails) still pass."""
    from detassign.assigners.match_costs import check_not_inf
    scores = torch.zeros(2, 3, 4)
    check_not_inf("pred_scores", scores)
    check_not_inf("pred_scores", torch.full((2, 3, 4), 3e38))               # sum overflows to Inf
    check_not_inf("pred_scores", torch.full((2, 3, 4), 6e4, dtype=torch.float16))
    scores[1, 2, 0] = float("nan")
    check_not_inf("pred_scores", scores)
    scores[0, 1, 3] = -float("inf")
    with pytest.raises(ValueError, match=r"pred_scores must be finite, got 1 Inf value\(s\), first at index "
                                         r"\(0, 1, 3\)"):
        check_not_inf("pred_scores", scores)
