"""RotatedTaskAlignedAssigner: a hand-worked case, parity with ultralytics 8.4.190's
RotatedTaskAlignedAssigner, properties, a crowded aerial scene on CPU, edge cases and bad input; and the
rotated overlap calculator (mmrotate's RBboxOverlaps2D) in MaxIoU / ATSS / DynamicSoftLabel."""

import math

import pytest
import torch

from detassign import build_assigner
from detassign.assigners.atss import ATSSAssigner
from detassign.assigners.dynamic_soft_label import DynamicSoftLabelAssigner
from detassign.assigners.max_iou import MaxIoUAssigner
from detassign.assigners.rotated_calculators import RotatedATSSAssigner
from detassign.assigners.rotated_task_aligned import ROTATED_TAL_PRESETS, RotatedTaskAlignedAssigner
from detassign.integrations.ultralytics import ultralytics_targets
from detassign.rotated_boxes import pairwise_rotated_iou
from detassign.structures import Instances, Priors
from tests import oracles
from tests.memory import measure_in_child
from tests.test_rotated_boxes import random_rboxes
from tests.fixtures import make_anchors

PRESET_ARGS = {  # preset -> ultralytics RotatedTaskAlignedAssigner arguments
    "ultralytics": dict(topk=13, alpha=1.0, beta=6.0),
    "ultralytics_loss": dict(topk=10, alpha=0.5, beta=6.0),
    "yolo26_one2many": dict(topk=10, alpha=0.5, beta=6.0),
    "yolo26_one2one": dict(topk=7, alpha=0.5, beta=6.0, topk2=1),
}


def random_obb_batch(seed, B=3, M=8, C=5, size=128, min_side=3.0):
    """Padded oriented batch: GT sides log-uniform in [min_side, 75] px, any angle, some off the image;
    predictions scattered around the anchors."""
    g = torch.Generator().manual_seed(seed)
    points = make_anchors(size)
    A = len(points)
    centres = torch.rand(B, M, 2, generator=g) * 1.2 * size - 0.1 * size
    sides = torch.exp(torch.rand(B, M, 2, generator=g) * math.log(75 / min_side)) * min_side
    angles = (torch.rand(B, M, 1, generator=g) - 0.5) * math.pi
    n = torch.randint(0, M + 1, (B,), generator=g)
    if seed % 3 == 0:
        n[0] = 0
    mask = torch.arange(M)[None] < n[:, None]
    gt = torch.cat((centres, sides, angles), -1) * mask[..., None]
    labels = torch.randint(0, C, (B, M), generator=g)
    pred = torch.cat((points[None] + torch.randn(B, A, 2, generator=g) * 4,
                      torch.exp(torch.rand(B, A, 2, generator=g) * 3.5) * 4,
                      (torch.rand(B, A, 1, generator=g) - 0.5) * math.pi), -1)
    scores = torch.rand(B, A, C, generator=g)
    return scores, pred, points, labels, gt, mask


def run_ultralytics(preset, scores, pred, points, labels, gt, mask):
    ref = oracles.ultralytics().tal.RotatedTaskAlignedAssigner(num_classes=scores.shape[-1], **PRESET_ARGS[preset])
    return ref(scores, pred, points, labels[..., None].float(), gt, mask[..., None].float())


def tie_free_mask(preset, scores, pred, points, labels, gt, mask):
    """GTs whose top-k never has to choose among zero-metric candidates (torch.topk's order there is
    unspecified), found with ultralytics' own candidate and metric code. -> mask [B, M]."""
    ref = oracles.ultralytics().tal.RotatedTaskAlignedAssigner(num_classes=scores.shape[-1], **PRESET_ARGS[preset])
    ref.bs, ref.n_max_boxes = gt.shape[:2]
    inside = ref.select_candidates_in_gts(points, gt, mask[..., None].float()) & mask[..., None]
    metric, _ = ref.get_box_metrics(scores, pred, labels[..., None], gt, inside)
    n_pos = ((metric > 0) & inside).sum(-1)
    n_zero = ((metric == 0) & inside).sum(-1)
    return mask & ~((n_zero > 0) & (n_pos < ref.topk))


def assert_matches_ultralytics(result, reference):
    labels, boxes, scores, fg, gt_idx = reference
    assert torch.equal(result.fg_mask, fg)
    assert torch.equal(result.gt_inds[fg] - 1, gt_idx[fg])
    assert torch.equal(result.labels[fg], labels[fg])
    torch.testing.assert_close(result.target_boxes[fg], boxes[fg], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.target_scores, scores.to(result.target_scores.dtype), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- hand-worked
def test_inclusive_candidates_by_hand():
    # One GT (16, 16, 24, 8, 0) spans x in [4, 28], y in [12, 20]; stride-8 anchors sit at 4, 12, 20, 28.
    # The rotated test is inclusive, so the 8 anchors with x in {4, 12, 20, 28} and y in {12, 20} (all on or
    # inside the border) are candidates; ultralytics' horizontal (strict) test would keep none of them.
    # (float64: in float32 the rounding inside ProbIoU's log moves u of identical boxes to 0.99953)
    points = make_anchors(32, strides=(8,)).double()
    A = len(points)                                                          # 16
    gt = torch.tensor([[[16.0, 16.0, 24.0, 8.0, 0.0]]], dtype=torch.float64)
    pred = gt.expand(1, A, 5).clone()                                        # every prediction is the GT: u = 0.99955
    scores = torch.linspace(0.05, 0.8, A, dtype=torch.float64).reshape(1, A, 1)
    assigner = RotatedTaskAlignedAssigner(topk=3, alpha=1.0, beta=6.0, strides=(8,))
    res = assigner.assign_batch_probs(scores, pred, points, torch.zeros(1, 1), gt)
    candidates = [4, 5, 6, 7, 8, 9, 10, 11]                                  # rows y = 12 and y = 20
    # t = s * u^6 grows with the anchor index: the top 3 candidates are anchors 9, 10, 11
    assert torch.nonzero(res.fg_mask[0]).squeeze(1).tolist() == [9, 10, 11]
    assert set(candidates) >= {9, 10, 11}
    u = 1 - math.sqrt(2e-7)
    # target score of the best anchor: t * max u / (max t + 1e-9) = u (1 - 1e-9 / t)
    assert res.target_scores[0, 11, 0].item() == pytest.approx(u, abs=5e-9)  # eps / t = 1.3e-9
    assert res.max_overlaps[0, 11].item() == pytest.approx(u, abs=1e-9)
    assert torch.equal(res.target_boxes[0, 11], gt[0, 0])
    assert_matches_ultralytics(res, oracles.ultralytics().tal.RotatedTaskAlignedAssigner(
        topk=3, num_classes=1, alpha=1.0, beta=6.0, stride=[8])(scores, pred, points, torch.zeros(1, 1, 1), gt,
                                                                torch.ones(1, 1, 1)))


def test_small_gts_are_widened_for_the_candidate_test():
    # a 4 x 4 px GT at a stride-8 cell centre has one anchor on its centre; widened to 16 x 16 (strides[1])
    # it reaches the 8 neighbours at +-8 px too (inclusive), and keeps its real box as the target
    points = make_anchors(64)
    gt = torch.tensor([[[28.0, 28.0, 4.0, 4.0, 0.3]]])
    A = len(points)
    pred = torch.cat((points, torch.full((A, 2), 6.0), torch.zeros(A, 1)), 1)[None]
    scores = torch.full((1, A, 1), 0.5)
    res = RotatedTaskAlignedAssigner(topk=20).assign_batch_probs(scores, pred, points, torch.zeros(1, 1), gt)
    off = RotatedTaskAlignedAssigner(topk=20, widen_small_gt=False).assign_batch_probs(scores, pred, points,
                                                                                  torch.zeros(1, 1), gt)
    # the rotated 16 x 16 box reaches the 3 x 3 stride-8 neighbours' centres only partly: compare to the
    # explicit widened test, and check the unwidened box keeps just its centre anchor
    assert int(off.fg_mask.sum()) == 1 and bool(off.fg_mask[0, 3 * 8 + 3])
    assert int(res.fg_mask.sum()) > 1
    assert torch.equal(res.target_boxes[res.fg_mask], gt[0].expand(int(res.fg_mask.sum()), 5))


# ----------------------------------------------------------------------------- ultralytics oracle
@pytest.mark.parametrize("preset", sorted(PRESET_ARGS))
def test_matches_ultralytics_with_torch_ties(preset):
    for seed in range(8):
        batch = random_obb_batch(seed)
        res = RotatedTaskAlignedAssigner(preset=preset, num_classes=5, tie_break="torch").assign_batch_probs(*batch)
        assert_matches_ultralytics(res, run_ultralytics(preset, *batch))


@pytest.mark.parametrize("preset", ["ultralytics_loss", "yolo26_one2one"])
def test_matches_ultralytics_on_tie_free_gts(preset):
    for seed in range(8):
        scores, pred, points, labels, gt, mask = random_obb_batch(seed + 20, M=12, min_side=1.0)
        mask = tie_free_mask(preset, scores, pred, points, labels, gt, mask)
        gt = gt * mask[..., None]
        batch = (scores, pred, points, labels, gt, mask)
        res = RotatedTaskAlignedAssigner(preset=preset, num_classes=5).assign_batch_probs(*batch)
        assert_matches_ultralytics(res, run_ultralytics(preset, *batch))


def test_ultralytics_tuple_conversion():
    batch = random_obb_batch(4)
    res = RotatedTaskAlignedAssigner(preset="ultralytics_loss", tie_break="torch").assign_batch_probs(*batch)
    ref = run_ultralytics("ultralytics_loss", *batch)
    # the one conversion the horizontal swap uses too, with 5 box columns: bit for bit, ultralytics' dtypes
    ours = ultralytics_targets(res.gt_inds, res.target_scores, batch[3], batch[4])
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_presets_are_the_references_constructor_values():
    tal = oracles.ultralytics().tal
    for preset, args in PRESET_ARGS.items():
        ref = tal.RotatedTaskAlignedAssigner(**args)
        ours = RotatedTaskAlignedAssigner(preset=preset)
        assert (ours.topk, ours.alpha, ours.beta, ours.eps) == (ref.topk, ref.alpha, ref.beta, ref.eps)
        assert (ours.topk2 or ours.topk) == ref.topk2 and ours.min_candidate_size == ref.stride_val
    assert set(ROTATED_TAL_PRESETS) == set(PRESET_ARGS)


# ----------------------------------------------------------------------------- properties
def test_batched_equals_per_image_and_paths_agree():
    scores, pred, points, labels, gt, mask = random_obb_batch(7)
    assigner = RotatedTaskAlignedAssigner(preset="ultralytics_loss")
    full = assigner.assign_batch_probs(scores, pred, points, labels, gt, mask)
    for b in range(scores.shape[0]):
        keep = mask[b]
        one = assigner.assign(Instances(priors=points, bboxes=pred[b], scores=scores[b]),
                              Instances(bboxes=gt[b][keep], labels=labels[b][keep]))
        assert torch.equal(one.gt_inds, full[b].gt_inds)
        assert torch.equal(one.target_scores, full[b].target_scores)
    # the chunked (non-grid) candidate test and tiny pair blocks give the same result
    generic = RotatedTaskAlignedAssigner(preset="ultralytics_loss", widen_small_gt=False, strides=())
    grid = RotatedTaskAlignedAssigner(preset="ultralytics_loss", widen_small_gt=False, max_chunk_mib=0.001)
    a = generic.assign_batch_probs(scores, pred, points, labels, gt, mask)
    b = grid.assign_batch_probs(scores, pred, points, labels, gt, mask)
    assert torch.equal(a.gt_inds, b.gt_inds)
    torch.testing.assert_close(a.target_scores, b.target_scores, atol=1e-7, rtol=0)


def test_gt_permutation_and_topk_bound():
    scores, pred, points, labels, gt, mask = random_obb_batch(11, B=1, M=10)
    mask[:] = True
    gt = random_obb_batch(12, B=1, M=10)[4]
    assigner = RotatedTaskAlignedAssigner(preset="ultralytics_loss")
    res = assigner.assign_batch_probs(scores, pred, points, labels, gt, mask)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    res_p = assigner.assign_batch_probs(scores, pred, points, labels[:, perm], gt[:, perm], mask)
    back = torch.where(res_p.gt_inds > 0, perm[(res_p.gt_inds - 1).clamp(min=0)] + 1, 0)
    # ties between GTs (equal overlaps) go to the lower index, which a permutation moves: compare where unique
    assert (back != res.gt_inds).sum() <= 2
    counts = torch.bincount(res.gt_inds[res.fg_mask], minlength=11)[1:]
    assert int(counts.max()) <= assigner.topk


def test_crowded_aerial_scene_runs_in_bounded_memory():
    # 3000 oriented GTs on a 1024 px image (A = 21504): ultralytics holds several dense [B, M, A] tensors
    # (64.5 M elements, 258 MB each in float32); the pair path grows the process by a few MiB
    setup = """
    import math
    from detassign.assigners.rotated_task_aligned import RotatedTaskAlignedAssigner
    from tests.fixtures import make_anchors
    g = torch.Generator().manual_seed(0)
    size, B, M, C = 1024, 1, 3000, 15
    pts = make_anchors(size)
    A = len(pts)
    gt = torch.cat([torch.rand(B, M, 2, generator=g) * size, torch.rand(B, M, 2, generator=g) * 30 + 4,
                    (torch.rand(B, M, 1, generator=g) - 0.5) * 3], -1)
    labels = torch.randint(0, C, (B, M), generator=g)
    pred = torch.cat([pts[None] + torch.randn(B, A, 2, generator=g) * 3, torch.rand(B, A, 2, generator=g) * 30 + 4,
                      (torch.rand(B, A, 1, generator=g) - 0.5) * 3], -1)
    scores = torch.rand(B, A, C, generator=g)
    assigner = RotatedTaskAlignedAssigner(preset="ultralytics_loss")
    """
    out = measure_in_child(setup, "res = assigner.assign_batch_probs(scores, pred, pts, labels, gt)",
                           "int(res.fg_mask.sum())")
    assert out["result"] > 10000
    assert out["grown_mib"] < 100, out


# ----------------------------------------------------------------------------- edge cases and bad input
def test_empty_and_masked_gts():
    scores, pred, points, labels, gt, mask = random_obb_batch(1)
    assigner = RotatedTaskAlignedAssigner()
    for g, m in ((gt[:, :0], mask[:, :0]), (gt, torch.zeros_like(mask))):
        res = assigner.assign_batch_probs(scores, pred, points, labels[:, :g.shape[1]], g, m)
        assert not res.fg_mask.any() and (res.labels == -1).all() and res.target_scores.abs().sum() == 0
        assert res.target_boxes.shape == (*scores.shape[:2], 5)
    # a GT far off the image has no candidate anchor at all
    far = torch.tensor([[[900.0, 900.0, 10.0, 10.0, 0.3]]]).expand(3, 1, 5)
    for tie_break in ("index", "torch"):
        res = RotatedTaskAlignedAssigner(tie_break=tie_break).assign_batch_probs(scores, pred, points, labels[:, :1],
                                                                                 far)
        assert not res.fg_mask.any() and res.num_gts.tolist() == [1, 1, 1]


def test_fewer_anchors_than_topk_and_half_precision():
    points = make_anchors(16, strides=(8,))                                  # 4 anchors < topk 10
    gt = torch.tensor([[[8.0, 8.0, 16.0, 16.0, 0.2]]])
    pred = gt.expand(1, 4, 5).clone()
    scores = torch.rand(1, 4, 2, generator=torch.Generator().manual_seed(0))
    for tie_break in ("index", "torch"):
        assigner = RotatedTaskAlignedAssigner(preset="ultralytics_loss", strides=(8,), tie_break=tie_break)
        res = assigner.assign_batch_probs(scores, pred, points, torch.ones(1, 1), gt)
        assert int(res.fg_mask.sum()) == 4
    half = RotatedTaskAlignedAssigner(preset="ultralytics_loss", strides=(8,)).assign_batch_probs(
        scores.half(), pred.half(), points.half(), torch.ones(1, 1), gt.half())
    assert half.target_scores.dtype == torch.float32 and int(half.fg_mask.sum()) == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="yolo99"), "preset must be one of"),
    (dict(topk=0), "topk must be >= 1"),
    (dict(topk2=1.5), "topk2 must be an int"),
    (dict(alpha=math.nan), "alpha must be a number"),
    (dict(beta=-1.0), "beta must be >= 0"),
    (dict(strides=(8, "16")), r"strides\[1\] must be a number"),
    (dict(widen_small_gt="yes"), "widen_small_gt must be True or False"),
    (dict(max_chunk_mib=0), "max_chunk_mib must be > 0"),
    (dict(tie_break="random"), "tie_break must be one of"),
    (dict(strides=()), "widen_small_gt=True needs strides"),
    (dict(eps=-1.0), "eps must be >= 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotatedTaskAlignedAssigner(**kwargs)


def test_bad_input():
    scores, pred, points, labels, gt, mask = random_obb_batch(2)
    a = RotatedTaskAlignedAssigner(num_classes=5)
    with pytest.raises(ValueError, match=r"pred_bboxes must have shape \[B, A, 5\], got \(3, 336, 4\)"):
        a.assign_batch_probs(scores, pred[..., :4], points, labels, gt, mask)
    with pytest.raises(ValueError, match=r"gt_bboxes must have shape \[B, M, 5\]"):
        a.assign_batch_probs(scores, pred, points, labels, gt[..., :4], mask)
    with pytest.raises(ValueError, match="pred_scores must lie in"):
        a.assign_batch_probs(scores * 3, pred, points, labels, gt, mask)
    with pytest.raises(ValueError, match="num_classes=5"):
        a.assign_batch_probs(scores[..., :4], pred, points, labels, gt, mask)
    bad = gt.clone()
    bad[1, 0, 2] = -1.0
    with pytest.raises(ValueError, match="non-negative w and h"):
        a.assign_batch_probs(scores, pred, points, labels, bad, torch.ones_like(mask))


def test_builds_from_config():
    a = build_assigner(dict(type="RotatedTaskAlignedAssigner", preset="yolo26_one2one", num_classes=15))
    assert isinstance(a, RotatedTaskAlignedAssigner) and (a.topk, a.topk2, a.alpha) == (7, 1, 0.5)


# ----------------------------------------------------------------------------- rotated overlap calculators
RBOX = dict(type="RBboxOverlaps2D")


def axis_aligned(n, seed, spread=96.0, lo=6.0, hi=40.0):
    """[n, 5] xywhr boxes at angle 0 and their [n, 4] xyxy twins (exact in float32: multiples of 1/8)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.round(torch.rand(n, 2, generator=g) * spread * 8) / 8 + 1 / 16
    sides = torch.round((torch.rand(n, 2, generator=g) * (hi - lo) + lo) * 4) / 4
    rbox = torch.cat((centre, sides, torch.zeros(n, 1)), 1)
    return rbox, torch.cat((centre - sides / 2, centre + sides / 2), 1)


def test_max_iou_with_rotated_calculator_by_hand():
    # GT: a 4 x 4 square turned 45 deg; prior 0 is the same square (IoU 1), prior 1 the unturned square
    # (IoU 1 / sqrt2 = 0.707), prior 2 far away (0): with pos 0.75 / neg 0.4, priors 0 positive, 1 ignored, 2 negative
    assigner = MaxIoUAssigner(pos_iou_thr=0.75, neg_iou_thr=0.4, iou_calculator=RBOX)
    gt = torch.tensor([[10.0, 10.0, 4.0, 4.0, math.pi / 4]])
    priors = torch.tensor([[10.0, 10.0, 4.0, 4.0, math.pi / 4], [10.0, 10.0, 4.0, 4.0, 0.0], [50.0, 50, 4, 4, 0]])
    res = assigner.assign(Instances(priors=priors), Instances(bboxes=gt, labels=torch.tensor([2])))
    assert res.gt_inds.tolist() == [1, -1, 0] and res.labels.tolist() == [2, -1, -1]
    assert res.max_overlaps[1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_max_iou_rotated_at_angle_zero_equals_horizontal():
    priors_r, priors = axis_aligned(300, 1, lo=8, hi=24)
    gts_r, gts = axis_aligned(12, 2)
    ign_r, ign = axis_aligned(3, 3)
    cfg = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.1, ignore_iof_thr=0.5)
    ours = MaxIoUAssigner(**cfg, iou_calculator=RBOX).assign(
        Instances(priors=priors_r), Instances(bboxes=gts_r, labels=torch.arange(12)), Instances(bboxes=ign_r))
    ref = MaxIoUAssigner(**cfg).assign(Instances(priors=priors), Instances(bboxes=gts, labels=torch.arange(12)),
                                       Instances(bboxes=ign))
    assert torch.equal(ours.gt_inds, ref.gt_inds) and torch.equal(ours.labels, ref.labels)
    torch.testing.assert_close(ours.max_overlaps, ref.max_overlaps, atol=1e-6, rtol=0)


def test_max_iou_rotated_overlaps_are_mmrotates():
    gts, priors = random_rboxes(6, 3, spread=60), random_rboxes(40, 4, spread=60)
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, iou_calculator=RBOX).assign(
        Instances(priors=priors), Instances(bboxes=gts, labels=torch.zeros(6, dtype=torch.long)))
    ious = pairwise_rotated_iou(gts.double(), priors.double()).float()
    torch.testing.assert_close(res.max_overlaps, ious.amax(0), atol=1e-5, rtol=0)


def test_atss_rotated_at_angle_zero_equals_horizontal():
    levels = [256, 64, 16]
    points = make_anchors(128)
    strides = torch.cat([torch.full((n,), s) for n, s in zip(levels, (8.0, 16.0, 32.0))])
    side = strides[:, None] * 4
    priors = torch.cat((points - side / 2, points + side / 2), 1)
    priors_r = torch.cat((points, side, side, torch.zeros(len(points), 1)), 1)
    gts_r, gts = axis_aligned(9, 5, spread=110, lo=10, hi=60)
    labels = torch.arange(9) % 3
    ref = ATSSAssigner(topk=9).assign(Instances(priors=priors), levels, Instances(bboxes=gts, labels=labels))
    for assigner in (ATSSAssigner(topk=9, iou_calculator=RBOX), RotatedATSSAssigner(topk=9),
                     build_assigner(dict(type="RotatedATSSAssigner", topk=9))):
        ours = assigner.assign(Instances(priors=priors_r), levels, Instances(bboxes=gts_r, labels=labels))
        assert torch.equal(ours.gt_inds, ref.gt_inds) and torch.equal(ours.labels, ref.labels)
        torch.testing.assert_close(ours.max_overlaps, ref.max_overlaps, atol=1e-6, rtol=0)
    batch = RotatedATSSAssigner(topk=9).assign_batch(None, None, Priors.from_boxes(priors_r, levels),
                                                     labels[None].repeat(2, 1), gts_r[None].repeat(2, 1, 1),
                                                     torch.tensor([[True] * 9, [True] * 4 + [False] * 5]))
    assert torch.equal(batch.gt_inds[0], ref.gt_inds)


def test_dsl_rotated_at_angle_zero_equals_horizontal():
    points = make_anchors(128) + 0.03                                         # keep 0.01 away from GT sides
    levels = [256, 64, 16]
    strides = torch.cat([torch.full((n,), s) for n, s in zip(levels, (8.0, 16.0, 32.0))])
    priors = torch.cat((points, strides[:, None], strides[:, None]), 1)
    gts_r, gts = axis_aligned(7, 6, spread=110, lo=10, hi=50)
    boxes_r, boxes = axis_aligned(len(points), 7, spread=120, lo=6, hi=40)
    logits = torch.randn(len(points), 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(7) % 4
    ref = DynamicSoftLabelAssigner(topk=13).assign(Instances(priors=priors, bboxes=boxes, scores=logits),
                                                   Instances(bboxes=gts, labels=labels))
    rotated = DynamicSoftLabelAssigner(topk=13, iou_calculator=RBOX)
    ours = rotated.assign(Instances(priors=priors, bboxes=boxes_r, scores=logits),
                          Instances(bboxes=gts_r, labels=labels))
    assert int((ref.gt_inds > 0).sum()) > 5
    assert torch.equal(ours.gt_inds, ref.gt_inds) and torch.equal(ours.labels, ref.labels)
    torch.testing.assert_close(ours.max_overlaps, ref.max_overlaps, atol=1e-6, rtol=0)
    batch = rotated.assign_batch(logits[None].repeat(2, 1, 1), boxes_r[None].repeat(2, 1, 1),
                                 Priors.from_points(points, strides), torch.stack((labels, labels.flip(0))),
                                 torch.stack((gts_r, gts_r.flip(0))))
    assert torch.equal(batch.gt_inds[0], ref.gt_inds)
    flipped = torch.where(ref.gt_inds > 0, 8 - ref.gt_inds, ref.gt_inds)      # GT j sits at 6 - j in image 1
    assert torch.equal(batch.gt_inds[1], flipped)


def test_rotated_calculator_refusals():
    with pytest.raises(ValueError, match="no other keys"):
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, iou_calculator=dict(type="RBboxOverlaps2D", scale=2.0))
    gts, priors = axis_aligned(2, 1)[0], axis_aligned(5, 2)[0]
    jitter = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, iou_calculator=RBOX,
                            perm_repeat_gt_cfg=dict(iou_thr=0.97, perm_range=0.01))
    with pytest.raises(ValueError, match="perm_repeat_gt_cfg is not supported"):
        jitter.assign(Instances(priors=priors), Instances(bboxes=gts, labels=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"\[A, 5\] xywhr"):
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, iou_calculator=RBOX).assign(
            Instances(priors=priors[:, :4]), Instances(bboxes=gts, labels=torch.zeros(2, dtype=torch.long)))
