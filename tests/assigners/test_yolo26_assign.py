"""YOLO26's end-to-end assignment: both branches' presets against the assigners ultralytics 8.4.190's
E2ELoss builds (detection and OBB), hand-worked one-to-one and widening cases, and the branch weights."""

import types

import pytest
import torch

from detassign.assigners.rotated_task_aligned import RotatedTaskAlignedAssigner
from detassign.assigners.task_aligned import TAL_PRESETS, TaskAlignedAssigner
from detassign.assigners.yolo26 import yolo26_assigners, yolo26_branch_weights
from tests import oracles
from tests.assigners.test_rotated_task_aligned import assert_matches_ultralytics, random_obb_batch
from tests.assigners.test_task_aligned import random_batch
from tests.fixtures import make_anchors


def e2e_loss(loss_name="v8DetectionLoss", epochs=10, nc=5):
    """ultralytics' E2ELoss on a stand-in model (one parameter, a head with nc / reg_max / stride)."""
    ultra = oracles.ultralytics()
    model = torch.nn.Module()
    model.p = torch.nn.Parameter(torch.zeros(1))
    head = torch.nn.Module()
    head.nc, head.reg_max, head.stride = nc, 16, torch.tensor([8.0, 16.0, 32.0])
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, angle=1.0, epochs=epochs)
    model.model = torch.nn.ModuleList([head])
    return ultra.loss.E2ELoss(model, getattr(ultra.loss, loss_name))


def _assign_ref(ref, scores, pred, points, labels, gt, mask):
    return ref(scores, pred, points, labels[..., None].float(), gt * mask[..., None], mask[..., None].float())


# ----------------------------------------------------------------------------- the branches
def test_presets_are_e2e_loss_assigners():
    crit = e2e_loss()
    for branch, preset in ((crit.one2many, "yolo26_one2many"), (crit.one2one, "yolo26_one2one")):
        ref = branch.assigner
        ours = TaskAlignedAssigner(preset=preset)
        assert (ours.topk, ours.alpha, ours.beta, ours.eps) == (ref.topk, ref.alpha, ref.beta, ref.eps)
        assert (ours.topk2 or ours.topk) == ref.topk2 and ours.min_candidate_size == ref.stride_val
    assert (crit.one2many.assigner.topk, crit.one2one.assigner.topk, crit.one2one.assigner.topk2) == (10, 7, 1)
    obb = e2e_loss("v8OBBLoss")
    assert type(obb.one2one.assigner).__name__ == "RotatedTaskAlignedAssigner"
    for branch, preset in ((obb.one2many, "yolo26_one2many"), (obb.one2one, "yolo26_one2one")):
        ours = RotatedTaskAlignedAssigner(preset=preset)
        assert (ours.topk, ours.topk2 or ours.topk, ours.alpha) == (branch.assigner.topk, branch.assigner.topk2,
                                                                     branch.assigner.alpha)
    assert TAL_PRESETS["yolo26_one2many"] == TAL_PRESETS["ultralytics_loss"]


@pytest.mark.parametrize("branch", ["one2many", "one2one"])
def test_detection_branches_match_e2e_loss(branch):
    ref = getattr(e2e_loss(), branch).assigner
    ours = TaskAlignedAssigner(preset=f"yolo26_{branch}", num_classes=5, tie_break="torch")
    for seed in range(6):
        batch = random_batch(seed, tiny=True)
        res = ours.assign_batch_probs(*batch)  # random_batch gives probabilities, as ultralytics' call
        labels, boxes, scores, fg, gt_idx = _assign_ref(ref, *batch)
        assert torch.equal(res.fg_mask, fg) and torch.equal(res.gt_inds[fg] - 1, gt_idx[fg])
        assert torch.equal(res.labels[fg], labels[fg]) and torch.equal(res.target_boxes[fg], boxes[fg])
        torch.testing.assert_close(res.target_scores, scores.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("branch", ["one2many", "one2one"])
def test_obb_branches_match_e2e_loss(branch):
    ref = getattr(e2e_loss("v8OBBLoss"), branch).assigner
    ours = RotatedTaskAlignedAssigner(preset=f"yolo26_{branch}", num_classes=5, tie_break="torch")
    for seed in range(6):
        batch = random_obb_batch(seed, min_side=1.0)
        assert_matches_ultralytics(ours.assign_batch_probs(*batch), _assign_ref(ref, *batch))


def test_one_to_one_keeps_one_anchor_per_gt():
    scores, pred, points, labels, gt, mask = random_batch(3, M=10)
    one2many, one2one = yolo26_assigners("detect", num_classes=5)
    many = one2many.assign_batch(scores, pred, points, labels, gt, mask)
    one = one2one.assign_batch(scores, pred, points, labels, gt, mask)
    before = TaskAlignedAssigner(preset="yolo26_one2one", topk2=7, num_classes=5).assign_batch(
        scores, pred, points, labels, gt, mask)                               # topk2 == topk: no second step
    for b in range(scores.shape[0]):
        counts = torch.bincount(one.gt_inds[b][one.fg_mask[b]], minlength=11)[1:]
        assert int(counts.max()) <= 1
        # each GT's kept anchor has the largest metric among that GT's positives before topk2
        for m in torch.nonzero(counts).squeeze(1).tolist():
            kept = one.assign_metrics[b][one.gt_inds[b] == m + 1]
            assert kept.item() == before.assign_metrics[b][before.gt_inds[b] == m + 1].max().item()
    assert int(many.fg_mask.sum()) > int(one.fg_mask.sum()) > 0


def test_one_to_one_by_hand():
    # one GT [0, 0, 32, 32] and four anchors inside it with predicted box = the GT (CIoU 1), scores 0.2, 0.9,
    # 0.5, 0.7: t = s^0.5, so the top 7 hold all four and topk2 = 1 keeps the 0.9 anchor, whose target
    # score is t * max u / (max t + 1e-9) = 1 to 1e-8
    points = torch.tensor([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]])
    gt = torch.tensor([[[0.0, 0.0, 32.0, 32.0]]])
    pred = gt.expand(1, 4, 4).clone()
    scores = torch.tensor([0.2, 0.9, 0.5, 0.7]).reshape(1, 4, 1)
    res = TaskAlignedAssigner(preset="yolo26_one2one", strides=(8,)).assign_batch_probs(
        scores, pred, points, torch.zeros(1, 1, dtype=torch.long), gt)
    assert res.fg_mask.tolist() == [[False, True, False, False]]
    assert res.target_scores[0, 1, 0].item() == pytest.approx(1.0, abs=1e-8)


def test_small_target_widening_is_shared_by_both_branches():
    # a 6 x 6 px GT between anchors: without widening no stride-8 anchor centre is strictly inside; widened
    # to 16 x 16 px (stride[1]) about its centre it covers the 2 x 2 anchors around it, in both branches
    points = make_anchors(64)
    gt = torch.tensor([[[29.0, 29.0, 35.0, 35.0]]])                          # centre (32, 32)
    A = len(points)
    pred = torch.cat((points - 4, points + 4), 1)[None]
    scores = torch.full((1, A, 1), 0.5)
    for assigner in yolo26_assigners("detect"):
        res = assigner.assign_batch_probs(scores, pred, points, torch.zeros(1, 1, dtype=torch.long), gt)
        assert int(res.fg_mask.sum()) >= 1
        assert set(torch.nonzero(res.fg_mask[0]).squeeze(1).tolist()) <= {27, 28, 35, 36}   # (28|36, 28|36)
    off = TaskAlignedAssigner(preset="yolo26_one2many", widen_small_gt=False).assign_batch_probs(
        scores, pred, points, torch.zeros(1, 1, dtype=torch.long), gt)
    assert not off.fg_mask.any()


def test_yolo26_assigners_kinds():
    many, one = yolo26_assigners("obb", num_classes=15)
    assert isinstance(many, RotatedTaskAlignedAssigner) and (many.topk, one.topk, one.topk2) == (10, 7, 1)
    with pytest.raises(ValueError, match="task must be one of"):
        yolo26_assigners("pose")


# ----------------------------------------------------------------------------- loss weights
def test_branch_weights_follow_e2e_loss_update():
    for epochs in (1, 2, 10, 300):
        crit = e2e_loss(epochs=epochs)
        assert yolo26_branch_weights(0, epochs) == (crit.o2m, crit.o2o)
        for done in range(1, min(epochs, 12) + 2):
            crit.update()                                                    # the trainer calls it per epoch
            assert yolo26_branch_weights(done, epochs) == (crit.o2m, crit.o2o)
    assert yolo26_branch_weights(9, 10) == pytest.approx((0.1, 0.9))
    with pytest.raises(ValueError, match="epochs must be"):
        yolo26_branch_weights(0, 0)
    with pytest.raises(ValueError, match="epochs_done must be"):
        yolo26_branch_weights(-1, 5)


def test_ultralytics_preset_unchanged_for_yolo11():
    # the YOLO11 stack's assigner (ultralytics_loss) is the one-to-many branch: same results
    batch = random_batch(5)
    a = TaskAlignedAssigner(preset="ultralytics_loss").assign_batch(*batch)
    b = TaskAlignedAssigner(preset="yolo26_one2many").assign_batch(*batch)
    assert torch.equal(a.gt_inds, b.gt_inds) and torch.equal(a.target_scores, b.target_scores)


@pytest.mark.parametrize("branch", ["one2many", "one2one"])
def test_yolo_stack_loss_trains_each_branch_like_e2e_loss(branch):
    # the YOLO11 stack's DetectionLoss with a YOLO26 preset = that branch of ultralytics' E2ELoss (loss items,
    # total and gradients), so either branch's assignment trains in the stack (its model has one head)
    from detassign.yolo.loss import DetectionLoss
    from tests.yolo.test_yolo_loss import R, random_case

    feats, batch = random_case(2, B=2, nc=5, n=10)
    crit = getattr(e2e_loss(nc=5), branch)
    B = feats[0].shape[0]
    preds = dict(boxes=torch.cat([f[:, :4 * R].reshape(B, 4 * R, -1) for f in feats], 2),
                 scores=torch.cat([f[:, 4 * R:].reshape(B, 5, -1) for f in feats], 2), feats=feats)
    ref_total, ref_items = crit.loss(preds, batch)
    ref_grads = torch.autograd.grad(ref_total.sum(), feats)
    ours = DetectionLoss(5, assigner=dict(type="TaskAlignedAssigner", preset=f"yolo26_{branch}", tie_break="torch"))
    total, items = ours(feats, batch)
    torch.testing.assert_close(items, torch.stack(list(ref_items.values())), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, ref_total.sum(), rtol=1e-5, atol=1e-5)
    for g, rg in zip(torch.autograd.grad(total, feats), ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6)
