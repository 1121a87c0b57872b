"""DetectionLoss (YOLOv8 / YOLO11 loss); the loss functions of detassign.losses are tested in tests/losses.

Parity: ultralytics 8.4.190 ``v8DetectionLoss`` built on a stand-in model (tests/oracles), same raw maps
and batch -> same (box, cls, dfl) items, total and gradients w.r.t. the raw maps.
"""
import math
import types

import pytest
import torch

from detassign.structures import BatchAssignResult
from detassign.yolo import YOLO11
from detassign.yolo.loss import (DEFAULT_ASSIGNER, DetectionLoss, DetectionTargets, targets_from_gt_inds,
                               targets_from_yolo_batch)
from tests.oracles import ultralytics

R = 16


# ----------------------------------------------------------------------------- helpers
def random_case(seed, B=3, nc=5, H=64, W=96, n=12, empty_last=True, tiny=False):
    """Raw maps (requires_grad) and an ultralytics-style batch; image B-1 has no GT when empty_last."""
    g = torch.Generator().manual_seed(seed)
    feats = [(torch.randn(B, 4 * R + nc, H // s, W // s, generator=g) * 2).requires_grad_() for s in (8, 16, 32)]
    hi = B - 1 if empty_last else B
    batch_idx = torch.randint(0, max(hi, 1), (n,), generator=g).sort().values.float()
    cls = torch.randint(0, nc, (n, 1), generator=g).float()
    side = 0.01 if tiny else 0.5
    wh = torch.rand(n, 2, generator=g) * side + 0.02
    center = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    return feats, dict(batch_idx=batch_idx, cls=cls, bboxes=torch.cat((center, wh), 1))


def ultralytics_loss(feats, batch, nc):
    ultra = ultralytics()
    head = torch.nn.Module()
    head.nc, head.reg_max, head.stride = nc, R, torch.tensor([8.0, 16.0, 32.0])
    model = torch.nn.Module()
    model.anchor = torch.nn.Parameter(torch.zeros(1))
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    model.model = torch.nn.ModuleList([head])
    crit = ultra.loss.v8DetectionLoss(model)
    B = feats[0].shape[0]
    preds = dict(boxes=torch.cat([f[:, :4 * R].reshape(B, 4 * R, -1) for f in feats], 2),
                 scores=torch.cat([f[:, 4 * R:].reshape(B, nc, -1) for f in feats], 2), feats=feats)
    loss, items = crit(preds, batch)
    return loss.sum(), torch.stack(list(items.values()))


class UltralyticsTAL:
    """The oracle's TaskAlignedAssigner behind our assign_batch interface (isolates the loss arithmetic)."""

    def __init__(self, nc):
        self.tal = ultralytics().tal.TaskAlignedAssigner(topk=10, num_classes=nc, alpha=0.5, beta=6.0,
                                                         stride=[8, 16, 32])

    def assign_batch(self, pred_scores, pred_bboxes, priors, gt_labels, gt_bboxes, gt_mask):
        # the batched interface passes logits and a Priors; ultralytics' assigner takes the sigmoid and the points
        _, boxes, scores, fg, idx = self.tal(pred_scores.sigmoid(), pred_bboxes, priors.points,
                                             gt_labels[..., None].float(), gt_bboxes, gt_mask[..., None].float())
        return BatchAssignResult(gt_mask.sum(1), torch.where(fg, idx + 1, 0), None, None,
                                 target_boxes=boxes, target_scores=scores)


def exact_tal():
    # tie_break="torch": the same torch.topk on the same rows as ultralytics, so zero-metric ties match too
    return dict(DEFAULT_ASSIGNER, tie_break="torch")


def compare(seed, assigner, **case):
    nc = case.get("nc", 5)
    feats, batch = random_case(seed, **case)
    ref_total, ref_items = ultralytics_loss(feats, batch, nc)
    ref_grads = torch.autograd.grad(ref_total, feats)
    total, items = DetectionLoss(nc, assigner=assigner(nc) if callable(assigner) else assigner)(feats, batch)
    grads = torch.autograd.grad(total, feats)
    torch.testing.assert_close(items, ref_items, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=1e-5)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6)
    return items


CASES = [dict(), dict(B=2, nc=1, H=96, W=64), dict(B=4, nc=3, n=20), dict(B=2, nc=80, H=64, W=64, n=6),
         dict(tiny=True), dict(B=1, n=3, empty_last=False), dict(B=3, nc=2, H=128, W=32, n=15)]


# ----------------------------------------------------------------------------- parity
@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(12))
def test_loss_matches_v8_detection_loss_with_our_tal(seed):
    compare(seed, exact_tal(), **CASES[seed % len(CASES)])


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_loss_arithmetic_matches_with_the_oracle_assigner(seed):
    compare(100 + seed, UltralyticsTAL, **CASES[seed % len(CASES)])


@pytest.mark.oracle
def test_batch_without_any_gt_matches_and_has_zero_box_terms():
    feats, batch = random_case(7, n=0)
    items = compare(7, exact_tal(), n=0)
    assert items[0] == 0 and items[2] == 0 and items[1] > 0


@pytest.mark.oracle
def test_default_assigner_matches_when_no_ties():
    # Default TAL (tie_break="index") equals ultralytics whenever no GT has zero-metric candidates in its
    # top-k; large GTs and confident predictions make that so here.
    compare(3, None, B=2, nc=2, n=4)


# ----------------------------------------------------------------------------- hand-worked
def test_no_gt_all_zero_logits_hand_value():
    # No GT: target scores all 0 -> target_scores_sum = max(0, 1) = 1; BCE(0 logit, 0) = ln 2 per entry.
    # A = 8*8 + 4*4 + 2*2 = 84 anchors, K = 2, B = 2 -> the sum runs over 336 entries: cls = 336 ln 2;
    # cls item = 0.5 * 336 ln 2 (gain); total = item * B.
    feats = [torch.zeros(2, 4 * R + 2, s, s, requires_grad=True) for s in (8, 4, 2)]
    targets = DetectionTargets(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=bool))
    loss = DetectionLoss(2, assigner=exact_tal())
    total, items = loss(feats, targets)
    expected = 0.5 * 336 * math.log(2)
    torch.testing.assert_close(items, torch.tensor([0.0, expected, 0.0]))
    torch.testing.assert_close(total, torch.tensor(2 * expected))
    total.backward()
    # d/dx BCE(x, 0) at 0 = sigmoid(0) = 0.5; times gain 0.5 and batch 2 -> 0.5 on class channels, 0 on box ones
    assert torch.allclose(feats[0].grad[:, 4 * R:], torch.full_like(feats[0].grad[:, 4 * R:], 0.5))
    assert torch.all(feats[0].grad[:, :4 * R] == 0)


def test_targets_from_yolo_batch_pads_in_order():
    # image 1 gets two GTs, image 0 one, image 2 none; 100 x 200 (h x w) image
    batch_idx = torch.tensor([1.0, 0.0, 1.0])
    cls = torch.tensor([[3.0], [1.0], [2.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1], [0.1, 0.9, 0.2, 0.2]])
    t = targets_from_yolo_batch(batch_idx, cls, boxes, 3, (100, 200))
    assert t.mask.tolist() == [[True, False], [True, True], [False, False]]
    assert t.labels[1].tolist() == [3, 2] and t.labels[0, 0] == 1
    # (cx, cy, w, h) = (100, 50, 40, 40) px -> (80, 30, 120, 70)
    assert t.bboxes[1, 0].tolist() == [80.0, 30.0, 120.0, 70.0]


def test_target_formats_agree():
    feats, batch = random_case(5, B=2, n=5)
    padded = targets_from_yolo_batch(batch["batch_idx"], batch["cls"], batch["bboxes"], 2, (64, 96))
    loss = DetectionLoss(5, assigner=exact_tal())
    a = loss(feats, batch)[1]
    b = loss(feats, padded)[1]
    c = loss(feats, dict(labels=padded.labels, bboxes=padded.bboxes, mask=padded.mask))[1]
    assert torch.equal(a, b) and torch.equal(b, c)
    # one image, no padding: mask=None (all valid) means the same as an all-True mask
    feats1, batch1 = random_case(6, B=1, n=4, empty_last=False)
    full = targets_from_yolo_batch(batch1["batch_idx"], batch1["cls"], batch1["bboxes"], 1, (64, 96))
    assert bool(full.mask.all())
    assert torch.equal(loss(feats1, DetectionTargets(full.labels, full.bboxes))[1], loss(feats1, full)[1])


def test_bad_inputs_raise():
    loss = DetectionLoss(5, assigner=exact_tal())
    feats, batch = random_case(0, B=2)
    with pytest.raises(ValueError, match="feats"):
        loss(feats[:2], batch)
    with pytest.raises(ValueError, match=r"feats\[0\]"):
        loss([f[:, :10] for f in feats], batch)
    with pytest.raises(ValueError, match="targets"):
        loss(feats, dict(boxes=torch.zeros(2, 1, 4)))
    with pytest.raises(ValueError, match="gt_labels"):
        loss(feats, DetectionTargets(torch.full((2, 1), 9), torch.tensor([[[1.0, 1, 5, 5]]] * 2),
                                     torch.ones(2, 1, dtype=bool)))
    with pytest.raises(ValueError, match="batch_idx"):
        targets_from_yolo_batch(torch.tensor([0.0, 5.0]), torch.zeros(2), torch.rand(2, 4), 2, (64, 64))
    with pytest.raises(ValueError, match="num_classes"):
        DetectionLoss(0)
    with pytest.raises(TypeError, match="assign_batch"):
        DetectionLoss(5, assigner=object())


# ----------------------------------------------------------------------------- pluggable assigners
ASSIGNERS = {
    "TaskAlignedAssigner": dict(type="TaskAlignedAssigner", preset="ultralytics", topk=10),
    "ATSSAssigner": dict(type="ATSSAssigner", topk=9),
    "ATSSAssigner-DDOD": dict(type="ATSSAssigner", topk=9, alpha=0.8),
    "SimOTAAssigner": dict(type="SimOTAAssigner"),
    "DynamicSoftLabelAssigner": dict(type="DynamicSoftLabelAssigner"),
    "BatchMaxIoUAssigner": dict(type="BatchMaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4),
    "MaxIoUAssigner": dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4),   # per image, looped
}


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_each_assigner_gives_finite_loss_and_gradients(name):
    cfg = ASSIGNERS[name]
    feats, batch = random_case(11, B=3, n=10)
    loss = DetectionLoss(5, assigner=cfg)
    total, items = loss(feats, batch)
    total.backward()
    assert torch.isfinite(total) and torch.all(torch.isfinite(items)) and items.shape == (3,)
    assert items[0] > 0 and items[2] > 0  # some foreground anchors were assigned
    for f in feats:
        assert torch.all(torch.isfinite(f.grad)) and f.grad.abs().sum() > 0
    feats2, batch2 = random_case(12, B=2, n=0)
    assert torch.isfinite(loss(feats2, batch2)[0])  # no GT anywhere


def test_every_assigner_is_called_through_one_interface():
    # no dispatch on class names: a subclass gets its parent's behaviour, a per-image assigner its own loop,
    # and the priors the loss hands out are the ones each algorithm reads
    from detassign.assigners.atss import ATSSAssigner
    from detassign.assigners.batch_max_iou import BatchMaxIoUAssigner
    from detassign.yolo.loss import loss_priors

    class MyATSS(ATSSAssigner):
        pass

    feats, batch = random_case(5, B=2, n=6)
    base = DetectionLoss(5, assigner=ATSSAssigner(topk=9))(feats, batch, return_assignment=True)[2]
    sub = DetectionLoss(5, assigner=MyATSS(topk=9))(feats, batch, return_assignment=True)[2]
    assert torch.equal(base.result.gt_inds, sub.result.gt_inds)
    per_image = DetectionLoss(5, assigner=ASSIGNERS["MaxIoUAssigner"])(feats, batch, return_assignment=True)[2]
    batched = DetectionLoss(5, assigner=BatchMaxIoUAssigner(0.5, 0.4))(feats, batch, return_assignment=True)[2]
    assert torch.equal(per_image.result.gt_inds, batched.result.gt_inds)
    priors = loss_priors(torch.tensor([[4.0, 4.0], [12.0, 4.0]]), torch.tensor([8.0, 8.0]), [2], 5.0, (8, 16))
    assert priors.boxes.tolist() == [[-16.0, -16.0, 24.0, 24.0], [-8.0, -16.0, 32.0, 24.0]]   # 5 strides wide
    assert list(priors.level_sizes) == [2] and priors.image_size == (8, 16)


def test_quality_targets_from_gt_inds_hand_case():
    # GTs: #1 class 1 at (0, 0, 10, 10), #2 class 0 at (20, 20, 30, 30). Anchor 0 -> GT 2 with a pred box
    # equal to it (IoU 1); anchor 1 -> GT 1 with pred (0, 0, 10, 5): IoU 50 / 100 = 0.5; anchor 2 negative;
    # anchor 3 ignored (-1): no target, weight 0 in the classification loss.
    gt_labels = torch.tensor([[1, 0]])
    gt_boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]])
    pred = torch.tensor([[[20.0, 20, 30, 30], [0, 0, 10, 5], [0, 0, 10, 10], [0, 0, 10, 10]]])
    t = targets_from_gt_inds(torch.tensor([[2, 1, 0, -1]]), gt_labels, gt_boxes, pred, num_classes=2)
    torch.testing.assert_close(t.target_scores[0], torch.tensor([[1.0, 0], [0, 0.5], [0, 0], [0, 0]]))
    assert t.fg_mask.tolist() == [[True, True, False, False]]
    assert t.cls_weight.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert torch.equal(t.target_boxes[0, :2], gt_boxes[0].flip(0))
    empty = targets_from_gt_inds(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
                                 torch.zeros(1, 0, 4), pred, num_classes=2)
    assert empty.target_scores.abs().sum() == 0 and not empty.fg_mask.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps_give_close_finite_losses(dtype):
    feats, batch = random_case(3, B=2, n=6)
    loss = DetectionLoss(5)
    _, items32 = loss([f.detach() for f in feats], batch)
    total, items = loss([f.detach().to(dtype) for f in feats], batch)
    assert torch.isfinite(total) and torch.all(torch.isfinite(items))
    torch.testing.assert_close(items.float(), items32, rtol=1e-2, atol=1e-2)


def test_loss_trains_a_model_end_to_end():
    torch.manual_seed(0)
    model = YOLO11("p", num_classes=2)
    loss_fn = DetectionLoss(2, strides=model.stride, assigner=exact_tal())
    images = torch.randn(2, 3, 64, 64)
    targets = DetectionTargets(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[[4.0, 4, 40, 30], [30, 30, 60, 62]],
                                                                              [[10.0, 8, 50, 50], [0, 0, 0, 0]]]),
                               torch.tensor([[True, True], [True, False]]))
    total, items = loss_fn(model(images), targets)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
