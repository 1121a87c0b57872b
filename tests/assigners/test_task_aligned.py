"""TaskAlignedAssigner: hand-worked cases (the TAL seed's tables), oracle parity with ultralytics 8.4.190 and
mmdet 3.3.0 (ours gets logits, the oracle ``logits.sigmoid()``), the sync-free path against the default one,
the candidate-pair core, properties, edge cases and bad input."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import build_assigner
from detassign.boxes import aligned_points_in_boxes
from detassign.assigners import _pairs
from detassign.assigners import _tal_ops as ops
from detassign.assigners._batch import pad_gts
from detassign.assigners.task_aligned import TAL_PRESETS, TaskAlignedAssigner
from detassign.structures import Instances, Priors
from tests import oracles
from tests.memory import measure_in_child
from tests.tolerances import assert_close_across_paths
from tests.fixtures import make_anchors


# ----------------------------------------------------------------------------- data
def random_batch(seed, B=3, M=8, C=5, size=128, tiny=False, off_image=True, logits=False):
    """Padded batch: image 0 may have no GT; GT sides log-uniform in [min_side, 100] px. Scores are
    probabilities, or with ``logits`` the logits of such probabilities (the batched call's input)."""
    g = torch.Generator().manual_seed(seed)
    points = make_anchors(size)
    A = len(points)
    lo = 1.0 if tiny else 4.0
    span = 1.4 * size if off_image else size
    centres = torch.rand(B, M, 2, generator=g) * span - (span - size) / 2
    sides = torch.exp(torch.rand(B, M, 2, generator=g) * (torch.log(torch.tensor(100.0 / lo)))) * lo
    gt = torch.cat((centres - sides / 2, centres + sides / 2), -1)
    n = torch.randint(0, M + 1, (B,), generator=g)
    if seed % 3 == 0:
        n[0] = 0
    mask = torch.arange(M)[None] < n[:, None]
    gt = gt * mask[..., None]
    labels = torch.randint(0, C, (B, M), generator=g)
    pred_sides = torch.exp(torch.rand(B, A, 2, generator=g) * 3.5) * 4
    pred_centres = points[None] + torch.randn(B, A, 2, generator=g) * 4
    pred = torch.cat((pred_centres - pred_sides / 2, pred_centres + pred_sides / 2), -1)
    scores = torch.rand(B, A, C, generator=g)
    if logits:
        scores = scores.clamp(1e-6, 1 - 1e-6).logit()
    return scores, pred, points, labels, gt, mask


def ultra_assigner(topk, alpha, beta, C):
    return oracles.ultralytics().tal.TaskAlignedAssigner(topk=topk, num_classes=C, alpha=alpha, beta=beta)


def tie_free_mask(scores, pred, points, labels, gt, mask, topk, alpha, beta):
    """Drop GTs whose top-k would have to choose among zero-metric candidates (torch.topk's tie order
    there is unspecified), using ultralytics' own candidate and metric code. -> mask [B, M]."""
    mask = mask.clone()
    C = scores.shape[-1]
    while True:
        ref = ultra_assigner(topk, alpha, beta, C)
        ref.bs, ref.n_max_boxes = gt.shape[:2]
        inside = ref.select_candidates_in_gts(points, gt, mask[..., None].float()) & mask[..., None]
        metric, _ = ref.get_box_metrics(scores, pred, labels[..., None], gt, inside)
        n_pos = ((metric > 0) & inside).sum(-1)
        n_zero = ((metric == 0) & inside).sum(-1)
        bad = mask & (n_zero > 0) & (n_pos < topk)
        if not bad.any():
            return mask
        mask &= ~bad


def run_ultralytics(topk, alpha, beta, scores, pred, points, labels, gt, mask):
    ref = ultra_assigner(topk, alpha, beta, scores.shape[-1])
    return ref(scores, pred, points, labels[..., None].float(), gt * mask[..., None], mask[..., None].float())


def assert_matches_ultralytics(result, reference, atol=1e-6):
    labels, boxes, scores, fg, gt_idx = reference
    assert torch.equal(result.fg_mask, fg)
    assert torch.equal(result.gt_inds[fg] - 1, gt_idx[fg])
    assert torch.equal(result.labels[fg], labels[fg])
    assert torch.equal(result.target_boxes[fg], boxes[fg].to(result.target_boxes.dtype))
    assert torch.equal(result.labels[~fg], torch.full_like(labels[~fg], -1))
    torch.testing.assert_close(result.target_scores, scores.float(), atol=atol, rtol=0)


# ----------------------------------------------------------------------------- the seed's worked tables
def test_seed_metric_table():
    # t = s * u^6: A 0.90 * 0.30^6 = 0.00065610, B 0.50 * 0.70^6 = 0.05882450, C 0.80 * 0.60^6 = 0.03732480
    s = torch.tensor([0.9, 0.5, 0.8])
    u = torch.tensor([0.3, 0.7, 0.6])
    t = ops.alignment_metric(s, u, 1.0, 6.0)
    torch.testing.assert_close(t, torch.tensor([0.0006561, 0.0588245, 0.0373248]), atol=1e-7, rtol=1e-5)
    assert t.argmax() == 1  # B wins although A has the best class score


def _seed_topk2_case():
    # one GT [0, 0, 10, 10] (area 100); predicted boxes [0, 0, 10, h] lie inside it, so IoU = 10 h / 100:
    # A h=2 -> 0.20, B h=7 -> 0.70, C h=5.5 -> 0.55, D h=8.5 -> 0.85; car scores 0.95, 0.60, 0.80, 0.30.
    points = torch.tensor([[2.0, 5.0], [4.0, 5.0], [6.0, 5.0], [8.0, 5.0]])
    pred = torch.tensor([[0, 0, 10, 2.0], [0, 0, 10, 7.0], [0, 0, 10, 5.5], [0, 0, 10, 8.5]])
    scores = torch.tensor([[0.95, 0.0], [0.60, 0.0], [0.80, 0.0], [0.30, 0.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    labels = torch.tensor([0])
    return points, pred, scores, gt, labels


@pytest.mark.parametrize("preset", ["ultralytics", "mmdet"])
@pytest.mark.parametrize("method", ["auto", "blocked"])
def test_seed_top2_picks_d_and_b_with_normalised_scores(preset, method):
    points, pred, scores, gt, labels = _seed_topk2_case()
    tal = TaskAlignedAssigner(preset=preset, topk=2, alpha=1.0, beta=6.0, overlap="iou", widen_small_gt=False,
                              method=method)
    res = tal.assign_batch_probs(scores[None], pred[None], points, labels[None], gt[None])
    # t: A 0.95 * 0.2^6 = 0.0000608, B 0.6 * 0.7^6 = 0.0705894, C 0.8 * 0.55^6 = 0.0221430,
    #    D 0.3 * 0.85^6 = 0.1131442; top-2 = {D, B}.
    # Target score = t * max IoU of the GT's positives / max t: D -> 0.85, B -> 0.0705894 / 0.1131442 * 0.85 = 0.5303
    assert res.gt_inds[0].tolist() == [0, 1, 0, 1]
    t_b, t_d = 0.6 * 0.7 ** 6, 0.3 * 0.85 ** 6
    expected = torch.tensor([0.0, t_b / t_d * 0.85, 0.0, 0.85])
    torch.testing.assert_close(res.target_scores[0, :, 0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.assign_metrics[0], torch.tensor([0.0, t_b, 0.0, t_d]), atol=1e-6, rtol=1e-5)
    assert res.labels[0].tolist() == [-1, 0, -1, 0]


def test_seed_case_through_mmdet_interface():
    points, pred, scores, gt, labels = _seed_topk2_case()
    res = TaskAlignedAssigner(preset="mmdet", topk=2).assign(
        Instances(priors=points, bboxes=pred, scores=scores), Instances(bboxes=gt, labels=labels))
    assert res.gt_inds.tolist() == [0, 1, 0, 1]
    # mmdet's -INF sentinel for non-positives, the IoU for positives
    torch.testing.assert_close(res.max_overlaps, torch.tensor([-1e8, 0.7, -1e8, 0.85]))


def test_batched_call_takes_logits():
    # assign_batch applies the sigmoid itself: the same bits as assign_batch_probs on logits.sigmoid()
    logits, pred, points, labels, gt, mask = random_batch(5, logits=True)
    tal = TaskAlignedAssigner(preset="ultralytics_loss")
    a = tal.assign_batch(logits, pred, points, labels, gt, mask)
    b = tal.assign_batch_probs(logits.sigmoid(), pred, points, labels, gt, mask)
    assert torch.equal(a.gt_inds, b.gt_inds) and torch.equal(a.target_scores, b.target_scores)
    c = tal.assign_batch(logits, pred, Priors.from_points(points), labels, gt, mask)  # the interface's priors
    assert torch.equal(a.gt_inds, c.gt_inds) and torch.equal(a.target_scores, c.target_scores)
    with pytest.raises(ValueError, match="pred_scores"):  # probabilities must lie in [0, 1]; logits need not
        tal.assign_batch_probs(logits, pred, points, labels, gt, mask)


# ----------------------------------------------------------------------------- presets and config
def test_presets_and_overrides():
    u = TaskAlignedAssigner()
    assert (u.preset, u.topk, u.alpha, u.beta) == ("ultralytics", 13, 1.0, 6.0)
    assert (u.overlap, u.conflict, u.candidate_stage, u.inside_eps) == ("ciou", "all_gts", "before_topk", 1e-9)
    assert u.min_candidate_size == 16.0 and not u.require_positive_metric
    loss = TaskAlignedAssigner(preset="ultralytics_loss")
    assert (loss.topk, loss.alpha, loss.beta) == (10, 0.5, 6.0)
    m = TaskAlignedAssigner(preset="mmdet")
    assert (m.topk, m.candidate_stage, m.inside_eps, m.overlap, m.conflict, m.neg_overlap) == (
        13, "after_topk", 0.01, "iou", "selected_gts", -1e8)
    built = build_assigner(dict(type="TaskAlignedAssigner", preset="ultralytics", topk=10))
    assert (built.topk, built.alpha, built.beta) == (10, 1.0, 6.0)
    mm_cfg = build_assigner(dict(type="TaskAlignedAssigner", topk=13, iou_calculator=dict(type="BboxOverlaps2D")))
    assert mm_cfg.preset == "mmdet" and mm_cfg.overlap == "iou"
    assert "topk=13" in repr(u)
    assert set(TAL_PRESETS) == {"ultralytics", "ultralytics_loss", "mmdet", "yolo26_one2many", "yolo26_one2one"}
    for name, preset in TAL_PRESETS.items():  # every preset is plain constructor arguments
        tal = TaskAlignedAssigner(**preset)
        assert all(getattr(tal, key) == (tuple(v) if key == "strides" else v) for key, v in preset.items()), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="yolo"), "preset"),
    (dict(topk=0), "topk"),
    (dict(conflict="cost"), "conflict"),
    (dict(candidate_test="loose"), "candidate_test"),
    (dict(method="window"), "method"),
    (dict(tie_break="random"), "tie_break"),
    (dict(widen_small_gt=True, strides=()), "strides"),
    (dict(iou_calculator=dict(type="BboxOverlaps3D")), "iou_calculator"),
    (dict(topk2=0), "topk2"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskAlignedAssigner(**kwargs)


# ----------------------------------------------------------------------------- ultralytics parity
@pytest.mark.oracle
@pytest.mark.parametrize("preset, topk, alpha, beta", [("ultralytics", 13, 1.0, 6.0),
                                                       ("ultralytics_loss", 10, 0.5, 6.0)])
def test_ultralytics_parity(preset, topk, alpha, beta):
    tal = TaskAlignedAssigner(preset=preset)
    kept = 0
    for seed in range(32):
        logits, pred, points, labels, gt, mask = random_batch(seed, tiny=seed % 4 == 1, logits=True)
        scores = logits.sigmoid()
        mask = tie_free_mask(scores, pred, points, labels, gt, mask, topk, alpha, beta)
        kept += int(mask.sum())
        ref = run_ultralytics(topk, alpha, beta, scores, pred, points, labels, gt, mask)
        assert_matches_ultralytics(tal.assign_batch(logits, pred, points, labels, gt * mask[..., None], mask), ref)
    assert kept > 100  # the tie filter leaves plenty of GTs to compare


@pytest.mark.oracle
def test_ultralytics_parity_fp16():
    # fp16 inputs are computed in float32: compare with ultralytics on the upcast inputs
    tal = TaskAlignedAssigner(preset="ultralytics_loss")
    for seed in range(100, 112):
        logits, pred, points, labels, gt, mask = random_batch(seed, logits=True)
        logits, pred, gt = logits.half(), pred.half(), gt.half()
        scores = logits.float().sigmoid()
        mask = tie_free_mask(scores, pred.float(), points, labels, gt.float(), mask, 10, 0.5, 6.0)
        ref = run_ultralytics(10, 0.5, 6.0, scores, pred.float(), points, labels, gt.float(), mask)
        res = tal.assign_batch(logits, pred, points, labels, gt * mask[..., None], mask)
        assert res.target_scores.dtype == torch.float32 and res.target_boxes.dtype == torch.float16
        assert_matches_ultralytics(res, ref)


@pytest.mark.oracle
@pytest.mark.parametrize("method", ["auto", "blocked"])
@pytest.mark.parametrize("topk, alpha, topk2", [(13, 1.0, None), (10, 0.5, None), (10, 0.5, 4)])
def test_ultralytics_parity_with_ties_via_torch_topk(topk, alpha, topk2, method):
    # tie_break="torch" reproduces torch.topk on ultralytics' dense rows: exact even with zero-metric ties
    tal = TaskAlignedAssigner(preset="ultralytics", topk=topk, alpha=alpha, topk2=topk2, tie_break="torch",
                              method=method)
    for seed in range(200, 215 if method == "auto" else 206):
        logits, pred, points, labels, gt, mask = random_batch(seed, tiny=seed % 2 == 0, logits=True)
        ref_tal = oracles.ultralytics().tal.TaskAlignedAssigner(topk=topk, num_classes=5, alpha=alpha, topk2=topk2)
        ref = ref_tal(logits.sigmoid(), pred, points, labels[..., None].float(), gt, mask[..., None].float())
        assert_matches_ultralytics(tal.assign_batch(logits, pred, points, labels, gt, mask), ref)


@pytest.mark.oracle
def test_ultralytics_parity_topk2_sparse():
    tal = TaskAlignedAssigner(preset="ultralytics", topk=10, topk2=3)
    for seed in range(300, 310):
        logits, pred, points, labels, gt, mask = random_batch(seed, logits=True)
        mask = tie_free_mask(logits.sigmoid(), pred, points, labels, gt, mask, 10, 1.0, 6.0)
        ref_tal = oracles.ultralytics().tal.TaskAlignedAssigner(topk=10, num_classes=5, topk2=3)
        ref = ref_tal(logits.sigmoid(), pred, points, labels[..., None].float(), gt * mask[..., None],
                      mask[..., None].float())
        assert_matches_ultralytics(tal.assign_batch(logits, pred, points, labels, gt * mask[..., None], mask), ref)


@pytest.mark.oracle
def test_ultralytics_empty_gt_dimension():
    logits, pred, points, _, _, _ = random_batch(0, logits=True)
    labels, gt, mask = torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool)
    ref = run_ultralytics(10, 0.5, 6.0, logits.sigmoid(), pred, points, labels, gt, mask)
    res = TaskAlignedAssigner(preset="ultralytics_loss").assign_batch(logits, pred, points, labels, gt, mask)
    assert_matches_ultralytics(res, ref)
    assert torch.equal(res.target_boxes, torch.zeros_like(res.target_boxes))
    assert (res.max_overlaps == 0).all() and (res.gt_inds == 0).all()


# ----------------------------------------------------------------------------- mmdet parity
def random_image(seed, C=4):
    g = torch.Generator().manual_seed(seed)
    A = 0 if seed % 17 == 5 else int(torch.randint(1, 300, (1,), generator=g))
    M = 0 if seed % 11 == 3 else int(torch.randint(1, 12, (1,), generator=g))
    centres = torch.rand(A, 2, generator=g) * 200
    half = torch.rand(A, 1, generator=g) * 16 + 4
    priors = torch.cat((centres - half, centres + half), -1)
    pred_half = torch.rand(A, 2, generator=g) * 40 + 2
    pred_centres = centres + torch.randn(A, 2, generator=g) * 5
    bboxes = torch.cat((pred_centres - pred_half, pred_centres + pred_half), -1)
    scores = torch.rand(A, C, generator=g)
    gt_centres = torch.rand(M, 2, generator=g) * 240 - 20
    gt_half = torch.rand(M, 2, generator=g) * 60 + 0.5
    gt = torch.cat((gt_centres - gt_half, gt_centres + gt_half), -1)
    return priors, bboxes, scores, gt, torch.randint(0, C, (M,), generator=g)


@pytest.mark.oracle
@pytest.mark.parametrize("method", ["auto", "blocked"])
def test_mmdet_parity(method):
    mm = oracles.mmdet()
    ours = TaskAlignedAssigner(preset="mmdet", method=method)
    for seed in range(36):
        priors, bboxes, scores, gt, labels = random_image(seed)
        alpha, beta = (1, 6) if seed % 2 else (0.5, 4.0)
        ref = mm.task_utils.build(dict(type="TaskAlignedAssigner", topk=13)).assign(
            mm.InstanceData(priors=priors, bboxes=bboxes, scores=scores), mm.InstanceData(bboxes=gt, labels=labels),
            alpha=alpha, beta=beta)
        res = ours.assign(Instances(priors=priors, bboxes=bboxes, scores=scores), Instances(bboxes=gt, labels=labels),
                          alpha=alpha, beta=beta)
        assert res.num_gts == ref.num_gts
        assert torch.equal(res.gt_inds, ref.gt_inds)
        assert torch.equal(res.labels, ref.labels)
        assert torch.equal(res.max_overlaps, ref.max_overlaps)
        # pow on differently laid out tensors may differ in the last ulp
        torch.testing.assert_close(res.assign_metrics, ref.assign_metrics, atol=1e-9, rtol=1e-6)


@pytest.mark.oracle
def test_mmdet_batched_equals_mmdet_per_image():
    mm = oracles.mmdet()
    priors = random_image(1)[0]  # shared by the batch
    g = torch.Generator().manual_seed(0)
    images = []
    for seed in (2, 3, 4, 7):
        gt, labels = random_image(seed)[3:]
        bboxes = priors + torch.randn(len(priors), 4, generator=g) * 4
        images.append((bboxes, torch.randn(len(priors), 4, generator=g), gt, labels))
    labels, gt, mask = pad_gts([im[2] for im in images], [im[3] for im in images])
    points = (priors[:, :2] + priors[:, 2:]) / 2
    logits = torch.stack([im[1] for im in images])
    res = TaskAlignedAssigner(preset="mmdet").assign_batch(
        logits, torch.stack([im[0] for im in images]), points, labels, gt, mask)
    assert res.num_gts.tolist() == [len(im[2]) for im in images]
    for i, (bboxes, _, gt_i, labels_i) in enumerate(images):
        ref = mm.task_utils.build(dict(type="TaskAlignedAssigner", topk=13)).assign(
            mm.InstanceData(priors=priors, bboxes=bboxes, scores=logits.sigmoid()[i]),
            mm.InstanceData(bboxes=gt_i, labels=labels_i))
        assert torch.equal(res[i].gt_inds, ref.gt_inds)
        assert torch.equal(res[i].labels, ref.labels)
        assert torch.equal(res[i].max_overlaps, ref.max_overlaps)


def grid_batch(seed, B=3, M=8, C=5, size=128, outliers=True):
    """random_batch (logits) on grid anchors, with a few huge or far-shifted predicted boxes (they widen the
    region where an anchor's box can meet a GT) and exactly repeated metrics (ties across anchors)."""
    logits, pred, points, labels, gt, mask = random_batch(seed, B=B, M=M, C=C, size=size, tiny=seed % 2 == 0,
                                                          logits=True)
    g = torch.Generator().manual_seed(seed + 1000)
    if outliers:
        idx = torch.randint(0, len(points), (B, 3), generator=g)
        big = torch.tensor([-50.0, -50.0, 190.0, 190.0])
        pred[torch.arange(B)[:, None], idx] = big
        pred[:, 5] = pred[:, 5] + 60.0  # a box far from its anchor point
    # two anchors with the same prediction and score: equal metrics for every GT
    pred[:, 7], logits[:, 7] = pred[:, 6], logits[:, 6]
    return logits, pred, points, labels, gt, mask


@pytest.mark.oracle
def test_mmdet_parity_on_grid_anchors():
    # on grid anchors the mmdet order's candidates are read off the grid around each GT
    mm = oracles.mmdet()
    ours = TaskAlignedAssigner(preset="mmdet")
    points = make_anchors(128)
    priors = torch.cat((points - 16, points + 16), -1)
    compared = 0
    for seed in range(16):
        logits, pred, _, labels, gt, mask = grid_batch(seed, B=2, M=7)
        res = ours.assign_batch(logits, pred, points, labels, gt, mask)
        for i in range(2):
            n = int(mask[i].sum())
            ref = mm.task_utils.build(dict(type="TaskAlignedAssigner", topk=13)).assign(
                mm.InstanceData(priors=priors, bboxes=pred[i], scores=logits.sigmoid()[i]),
                mm.InstanceData(bboxes=gt[i, :n], labels=labels[i, :n]))
            # mmdet's torch.topk may keep either of two equal metrics; anchors 6 and 7 tie by construction
            agree = torch.ones(len(points), dtype=torch.bool)
            agree[6:8] = False
            if n and (res.gt_inds[i, 6:8] > 0).any() != (ref.gt_inds[6:8] > 0).any():
                continue
            assert torch.equal(res.gt_inds[i][agree], ref.gt_inds[agree])
            assert torch.equal(res.max_overlaps[i][agree], ref.max_overlaps[agree])
            compared += 1
    assert compared >= 24


def test_ultralytics_style_float_labels_and_mask():
    # ultralytics passes gt_labels and mask_gt as float [B, M, 1]
    scores, pred, points, labels, gt, mask = random_batch(4, logits=True)
    tal = TaskAlignedAssigner()
    a = tal.assign_batch(scores, pred, points, labels, gt, mask)
    b = tal.assign_batch(scores, pred, points, labels[..., None].float(), gt, mask[..., None].float())
    assert torch.equal(a.gt_inds, b.gt_inds) and torch.equal(a.target_scores, b.target_scores)
    with pytest.raises(ValueError, match="gt_labels"):
        tal.assign_batch(scores, pred, points, labels.float() + 0.5, gt, mask)


# ----------------------------------------------------------------------------- the sync-free path
def assert_same_result(a, b, i=slice(None), j=slice(None)):
    """Indices and labels exactly, float fields to the kernels' rounding (pow / atan round by layout)."""
    for key in ("gt_inds", "labels", "target_boxes"):
        assert torch.equal(getattr(a, key)[i], getattr(b, key)[j]), key
    for key in ("max_overlaps", "target_scores", "assign_metrics"):
        assert_close_across_paths(getattr(a, key)[i], getattr(b, key)[j], key)


@given(seed=st.integers(0, 10_000), preset=st.sampled_from(["ultralytics", "ultralytics_loss", "mmdet"]),
       conflict=st.sampled_from([None, "all_gts", "selected_gts"]), positive=st.sampled_from([None, True, False]),
       overlap=st.sampled_from([None, "ciou", "iou"]), grid=st.booleans())
def test_blocked_path_equals_sparse_path(seed, preset, conflict, positive, overlap, grid):
    # the static-shape accelerator path, run on CPU: the same result as the default (sparse) path, ties
    # included (both give equal metrics to the lowest anchor index); tiny budgets force many blocks
    kw = dict(preset=preset, conflict=conflict, require_positive_metric=positive, overlap=overlap)
    logits, pred, points, labels, gt, mask = grid_batch(seed, B=2, M=6, outliers=seed % 2 == 0)
    if not grid:  # anchors in no grid layout: every anchor is enumerated
        perm = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))
        logits, pred, points = logits[:, perm], pred[:, perm], points[perm]
    data = (logits, pred, points, labels, gt, mask)
    ref = TaskAlignedAssigner(**kw).assign_batch(*data)
    for mib in (256.0, 0.01):  # 0.01 MiB: one GT per block
        assert_same_result(TaskAlignedAssigner(method="blocked", max_chunk_mib=mib, **kw).assign_batch(*data), ref)
        assert_same_result(TaskAlignedAssigner(max_chunk_mib=mib, **kw).assign_batch(*data), ref)


@pytest.mark.oracle
def test_blocked_path_matches_mmdet_with_torch_ties():
    # tie_break="torch" on the blocked path is mmdet's own torch.topk over every anchor
    mm = oracles.mmdet()
    for seed in range(12):
        priors, bboxes, scores, gt, labels = random_image(seed)
        ref = mm.task_utils.build(dict(type="TaskAlignedAssigner", topk=13)).assign(
            mm.InstanceData(priors=priors, bboxes=bboxes, scores=scores), mm.InstanceData(bboxes=gt, labels=labels))
        res = TaskAlignedAssigner(preset="mmdet", method="blocked", tie_break="torch").assign(
            Instances(priors=priors, bboxes=bboxes, scores=scores), Instances(bboxes=gt, labels=labels))
        assert torch.equal(res.gt_inds, ref.gt_inds)


def test_blocked_path_edge_cases():
    scores, pred, points, labels, gt, mask = random_batch(1, B=2, M=4, logits=True)
    labels = labels.masked_fill(~mask, 99)  # padding rows may carry any label
    for preset in ("ultralytics", "mmdet"):
        tal = TaskAlignedAssigner(preset=preset, method="blocked")
        assert_same_result(tal.assign_batch(scores, pred, points, labels, gt, mask),
                           TaskAlignedAssigner(preset=preset).assign_batch(scores, pred, points,
                                                                           labels.masked_fill(~mask, 0), gt, mask))
        none = tal.assign_batch(scores, pred, points, labels, gt, torch.zeros_like(mask))
        assert (none.gt_inds == 0).all() and (none.max_overlaps == 0).all() and (none.target_scores == 0).all()
        empty_m = tal.assign_batch(scores, pred, points, labels[:, :0], gt[:, :0], mask[:, :0])
        assert (empty_m.gt_inds == 0).all()
        no_anchor = tal.assign_batch(scores[:, :0], pred[:, :0], points[:0], labels, gt, mask)
        assert no_anchor.gt_inds.shape == (2, 0)


# ----------------------------------------------------------------------------- properties
@given(seed=st.integers(0, 10_000), preset=st.sampled_from(["ultralytics", "mmdet"]))
def test_gt_permutation_equivariance(seed, preset):
    # with t > 0 required, conflicts are decided by positive overlaps, which do not depend on GT order
    tal = TaskAlignedAssigner(preset=preset, require_positive_metric=True)
    scores, pred, points, labels, gt, mask = random_batch(seed, B=2, M=6, logits=True)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
    res = tal.assign_batch(scores, pred, points, labels, gt, mask)
    res_p = tal.assign_batch(scores, pred, points, labels[:, perm], gt[:, perm], mask[:, perm])
    back = torch.cat((torch.zeros(1, dtype=torch.long), perm + 1))  # permuted 1-based index -> original
    assert torch.equal(back[res_p.gt_inds], res.gt_inds)
    assert torch.equal(res_p.target_boxes, res.target_boxes)
    # the pairs are listed in GT order, and atan / pow round by an element's position in the tensor
    assert_close_across_paths(res_p.target_scores, res.target_scores)


@given(seed=st.integers(0, 10_000), preset=st.sampled_from(["ultralytics", "ultralytics_loss", "mmdet"]))
def test_batched_equals_per_image(seed, preset):
    tal = TaskAlignedAssigner(preset=preset)
    scores, pred, points, labels, gt, mask = random_batch(seed, B=3, M=5)
    res = tal.assign_batch_probs(scores, pred, points, labels, gt, mask)
    for i in range(3):
        one = tal.assign_batch_probs(scores[i:i + 1], pred[i:i + 1], points, labels[i:i + 1], gt[i:i + 1],
                                     mask[i:i + 1])
        assert_same_result(one, res, 0, i)
        n = int(mask[i].sum())
        per = tal.assign(Instances(priors=points, bboxes=pred[i], scores=scores[i]),
                         Instances(bboxes=gt[i, :n], labels=labels[i, :n]))
        assert torch.equal(per.gt_inds, res.gt_inds[i])
        assert_close_across_paths(per.target_scores, res.target_scores[i])


@given(seed=st.integers(0, 10_000), topk=st.integers(1, 15),
       preset=st.sampled_from(["ultralytics", "mmdet"]), topk2=st.sampled_from([None, 2]))
def test_at_most_topk_positives_per_gt(seed, topk, preset, topk2):
    tal = TaskAlignedAssigner(preset=preset, topk=topk, topk2=topk2)
    scores, pred, points, labels, gt, mask = random_batch(seed, B=2, M=6, logits=True)
    res = tal.assign_batch(scores, pred, points, labels, gt, mask)
    counts = torch.zeros(2, 7, dtype=torch.long).scatter_add_(1, res.gt_inds, torch.ones_like(res.gt_inds))[:, 1:]
    # ultralytics' "all_gts" rule hands an anchor chosen by several GTs, all overlapping it by 0, to GT 0
    checked = counts[:, 1:] if tal.conflict == "all_gts" and topk2 is None else counts
    assert (checked <= min(topk, topk2 or topk)).all()
    assert (res.target_scores.sum(-1) <= 1 + 1e-6).all() and (res.target_scores >= 0).all()


def test_grid_layouts_are_remembered_by_value():
    # a remembered layout is reused only for equal points: a point moved in place, or a sixth layout after
    # five others, is detected again
    points = make_anchors(64)
    levels = _pairs.detect_grid(points, (8, 16, 32))
    assert levels is not None and _pairs.detect_grid(points.clone(), (8, 16, 32)) == levels
    moved = points.clone()
    moved[3, 0] += 1.0
    assert _pairs.detect_grid(moved, (8, 16, 32)) is None
    moved[3, 0] -= 1.0
    assert _pairs.detect_grid(moved, (8, 16, 32)) == levels
    others = [make_anchors(size) for size in (32, 96, 128, 160, 192)]
    assert all(_pairs.detect_grid(p, (8, 16, 32)) is not None for p in others)
    assert len(_pairs._RECENT_GRIDS) == _pairs._RECENT_GRIDS_KEPT
    assert _pairs.detect_grid(points, (8, 16, 32)) == levels
    assert _pairs.detect_grid(points.double(), (8, 16, 32)) == levels


def test_non_grid_anchor_points_give_the_same_assignment():
    scores, pred, points, labels, gt, mask = random_batch(5, B=2, M=6, logits=True)
    assert _pairs.detect_grid(points, (8, 16, 32)) is not None
    assert _pairs.detect_grid(points[torch.randperm(len(points))], (8, 16, 32)) is None
    assert _pairs.detect_grid(points, (8, 16)) is None
    perm = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))
    for preset in ("ultralytics", "mmdet"):
        tal = TaskAlignedAssigner(preset=preset, require_positive_metric=True)
        res = tal.assign_batch(scores, pred, points, labels, gt, mask)
        res_p = tal.assign_batch(scores[:, perm], pred[:, perm], points[perm], labels, gt, mask)
        assert torch.equal(res_p.gt_inds, res.gt_inds[:, perm])
        assert torch.equal(res_p.target_scores, res.target_scores[:, perm])


# ----------------------------------------------------------------------------- the candidate-pair core
@given(seed=st.integers(0, 10_000), inclusive=st.booleans(), eps=st.sampled_from([0.0, 1e-9, 0.01]),
       budget=st.sampled_from([50, 10**6]))
def test_grid_candidates_equal_every_anchor_candidates(seed, inclusive, eps, budget):
    # one engine, two enumerations: grid cells under the box, or every anchor; the exact test decides
    g = torch.Generator().manual_seed(seed)
    points = make_anchors(96, strides=(8, 16, 32))
    levels = _pairs.detect_grid(points, (8, 16, 32))
    assert levels is not None and [lv.width for lv in levels] == [12, 6, 3]
    boxes = torch.rand(20, 4, generator=g) * 120 - 12
    boxes[:5] = (torch.randint(0, 24, (5, 4), generator=g) * 4).float()  # sides exactly on anchor coordinates
    boxes = torch.cat((torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])), 1)

    def candidates(plan):
        rows, anchors = [], []
        for block in plan.blocks(budget):
            row, anchor = plan.pairs(block)
            keep = aligned_points_in_boxes(points[anchor], boxes[row], eps, inclusive)
            rows.append(row[keep])
            anchors.append(anchor[keep])
        return torch.cat(rows), torch.cat(anchors)

    grid = candidates(_pairs.plan_candidates(levels, boxes, len(points)))
    every = candidates(_pairs.plan_candidates(None, boxes, len(points)))
    assert torch.equal(grid[0], every[0]) and torch.equal(grid[1], every[1])
    assert torch.all(grid[0][1:] >= grid[0][:-1])  # ordered by row, then anchor
    # a plan's row offsets (flat batch priors) shift each row's priors, whatever the slice of rows
    offset = torch.randint(0, 1000, (len(boxes),), generator=g)
    for form in (levels, None):
        plain = _pairs.plan_candidates(form, boxes, len(points))
        shifted = _pairs.plan_candidates(form, boxes, len(points), row_offset=offset)
        for block in shifted.blocks(budget) + [slice(3, 4), slice(5, 5), slice(7, 20)]:
            (row, prior), (row0, prior0) = shifted.pairs(block), plain.pairs(block)
            assert torch.equal(row, row0) and torch.equal(prior, prior0 + offset[row0])


def test_candidate_blocks_hold_whole_rows_within_the_budget():
    points = make_anchors(64)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 30.0, 30.0]])
    plan = _pairs.plan_candidates(_pairs.detect_grid(points, (8, 16, 32)), boxes, len(points))
    per_row = [int(plan.pairs(slice(i, i + 1))[0].numel()) for i in range(3)]
    blocks = plan.blocks(per_row[1] + per_row[2])
    assert blocks == [slice(0, 1), slice(1, 3)]  # row 0 alone exceeds the budget and still gets a block
    every = _pairs.plan_candidates(None, boxes, len(points))
    assert every.blocks(2 * len(points)) == [slice(0, 2), slice(2, 3)]


def test_rank_and_best_per_prior_by_hand():
    # segments [0, 0, 0] [1] [2, 2]: top-2 of each, ties to the earlier element
    seg = torch.tensor([0, 0, 0, 1, 2, 2])
    vals = torch.tensor([0.1, 0.7, 0.7, 0.4, 0.2, 0.2])
    assert _pairs.rank_in_segments(seg, vals, 3).tolist() == [2, 0, 1, 0, 0, 1]
    assert _pairs.topk_in_segments(seg, vals, 3, 2).tolist() == [False, True, True, True, True, True]
    assert _pairs.topk_in_segments(seg[:0], vals[:0], 3, 2).numel() == 0
    # the chosen positions, segment by segment, best first
    assert _pairs.topk_indices_in_segments(seg, vals, 2, sorted_segments=True).tolist() == [1, 2, 3, 4, 5]
    assert _pairs.topk_indices_in_segments(seg, vals, 1).tolist() == [1, 3, 4]
    # dense rows: ties to the lowest column, negative entries rank below every non-negative one
    values = torch.tensor([[0.5, 0.2, 0.5, -1.0, 0.5, 0.0], [0.0, -0.0, 0.0, 0.3, -1.0, -1.0]])
    mask = _pairs.topk_dense(values, 2)
    assert mask.tolist() == [[True, False, True, False, False, False], [True, False, False, True, False, False]]
    assert torch.equal(_pairs.topk_dense(values.double(), 2), mask)  # threshold-and-cumsum route
    # prior 0: owners 2 (key 0.5) and 1 (0.5) -> owner 1 (lowest on a tie); prior 1: owner 0 not eligible -> 3
    # (none); prior 2: no pair -> -inf, 3
    prior, key, owner = torch.tensor([0, 0, 1]), torch.tensor([0.5, 0.5, 0.75]), torch.tensor([2, 1, 0])
    best, winner = _pairs.best_per_prior(prior, key, owner, 3, 3, eligible=torch.tensor([True, True, False]))
    assert best.tolist() == [0.5, float("-inf"), float("-inf")] and winner.tolist() == [1, 3, 3]
    assert _pairs.count_per_prior(prior, torch.tensor([True, True, False]), 3).tolist() == [2, 0, 0]
    assert _pairs.scatter_to_priors(prior, key, torch.tensor([False, True, True]), 3).tolist() == [0.5, 0.75, 0.0]


@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), sorted_segments=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_topk_in_segments_is_rank_below_k(seed, k, sorted_segments, dtype):
    """The top-k mask and positions are the elements of rank < k, on few distinct keys (many ties), for
    segments in order (pair lists) and shuffled."""
    g = torch.Generator().manual_seed(seed)
    P = int(torch.randint(0, 60, (1,), generator=g))
    seg = torch.randint(0, 7, (P,), generator=g)
    if sorted_segments:
        seg = seg.sort().values
    key = (torch.randint(0, 4, (P,), generator=g) / 4).to(dtype)
    expected = _pairs.rank_in_segments(seg, key, 7, nonnegative=True) < k
    mask = _pairs.topk_in_segments(seg, key, 7, k, sorted_segments=sorted_segments)
    assert torch.equal(mask, expected)
    chosen = _pairs.topk_indices_in_segments(seg, key, k, sorted_segments=sorted_segments)
    assert sorted(chosen.tolist()) == torch.nonzero(expected).squeeze(1).tolist()


def test_zeros_buffer():
    big = ops.zeros_buffer((300, 2000), torch.float32, torch.device("cpu"))
    small = ops.zeros_buffer((3, 4), torch.float64, torch.device("cpu"))
    assert big.shape == (300, 2000) and big.dtype == torch.float32 and not big.any()
    assert small.dtype == torch.float64 and not small.any()
    big[1, 2] = 1.0
    assert big.sum() == 1.0


# ----------------------------------------------------------------------------- edge cases
def test_all_gts_masked_and_no_anchors():
    scores, pred, points, labels, gt, mask = random_batch(1, B=2, M=4, logits=True)
    for preset in ("ultralytics", "mmdet"):
        res = TaskAlignedAssigner(preset=preset).assign_batch(scores, pred, points, labels, gt, torch.zeros_like(mask))
        assert (res.gt_inds == 0).all() and (res.labels == -1).all() and (res.target_scores == 0).all()
        assert (res.max_overlaps == 0).all() and (res.num_gts == 0).all()
        empty = TaskAlignedAssigner(preset=preset).assign_batch(scores[:, :0], pred[:, :0], points[:0], labels, gt,
                                                                mask)
        assert empty.gt_inds.shape == (2, 0) and empty.target_scores.shape == (2, 0, 5)
    res = TaskAlignedAssigner(preset="mmdet").assign(
        Instances(priors=torch.zeros(0, 4), bboxes=torch.zeros(0, 4), scores=torch.zeros(0, 3)),
        Instances(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)))
    assert res.gt_inds.shape == (0,) and res.assign_metrics.shape == (0,)


def test_gt_without_candidates_and_off_image():
    points = make_anchors(64)
    scores = torch.full((1, len(points), 2), 0.5)
    pred = torch.cat((points - 4, points + 4), -1)[None]
    gt = torch.tensor([[[500.0, 500.0, 540.0, 540.0], [20.0, 20.0, 44.0, 44.0]]])
    labels = torch.tensor([[0, 1]])
    res = TaskAlignedAssigner(preset="ultralytics", topk=5).assign_batch_probs(scores, pred, points, labels, gt)
    assert (res.gt_inds[0] != 1).all() and (res.gt_inds[0] == 2).sum() == 5


def test_tiny_gt_is_widened_for_the_candidate_test():
    # anchor centres: stride 8 at 4, 12, ..., 28, 36, ...; stride 16 at 8, 24, 40; stride 32 at 16, 48.
    # A 2 x 2 px GT centred at (32, 32) contains none; widened to 16 x 16 about its centre (24..40, strict
    # test) it contains the four stride-8 anchors at x, y in {28, 36}; stride-16 ones at 24 / 40 lie on the border
    points = make_anchors(64)
    scores = torch.full((1, len(points), 1), 0.5)
    pred = torch.cat((points - 4, points + 4), -1)[None]
    gt = torch.tensor([[[31.0, 31.0, 33.0, 33.0]]])
    labels = torch.zeros(1, 1, dtype=torch.long)
    widened = TaskAlignedAssigner(preset="ultralytics").assign_batch_probs(scores, pred, points, labels, gt)
    assert widened.fg_mask.sum() == 4
    plain = TaskAlignedAssigner(preset="ultralytics", widen_small_gt=False)
    assert plain.assign_batch_probs(scores, pred, points, labels, gt).fg_mask.sum() == 0


def test_zero_metric_candidates_fill_topk_by_lowest_index():
    # ultralytics keeps top-k ∩ inside even at t = 0; with tie_break="index" the lowest anchor indices win
    points = make_anchors(64)
    scores = torch.zeros(1, len(points), 1)  # every metric is 0
    pred = torch.cat((points - 4, points + 4), -1)[None]
    gt = torch.tensor([[[0.0, 0.0, 64.0, 64.0]]])
    labels = torch.zeros(1, 1, dtype=torch.long)
    for method in ("auto", "blocked"):
        res = TaskAlignedAssigner(preset="ultralytics", topk=3, method=method).assign_batch_probs(
            scores, pred, points, labels, gt)
        assert res.fg_mask[0].nonzero().squeeze(1).tolist() == [0, 1, 2]
        assert (res.target_scores == 0).all()
    strict = TaskAlignedAssigner(preset="ultralytics", topk=3, require_positive_metric=True)
    assert strict.assign_batch_probs(scores, pred, points, labels, gt).fg_mask.sum() == 0


def test_dense_scene_memory_and_time():
    # measured in a fresh child process: ru_maxrss is a process-wide peak, blind once this process peaked
    setup = """
    from detassign.assigners.task_aligned import TaskAlignedAssigner
    from tests.fixtures import make_anchors
    g = torch.Generator().manual_seed(0)
    points = make_anchors(128)
    B, M, A, C = 2, 2000, len(points), 8
    centres = torch.rand(B, M, 2, generator=g) * 128
    gt = torch.cat((centres - 3, centres + 3), -1)
    logits = torch.randn(B, A, C, generator=g)
    pred = torch.cat((points - 6, points + 6), -1).expand(B, A, 4)
    labels = torch.randint(0, C, (B, M), generator=g)
    assigner = TaskAlignedAssigner(preset="ultralytics_loss")
    """
    run = "res = assigner.assign_batch(logits, pred, points, labels, gt)"
    measured = measure_in_child(setup, run, result="int(res.fg_mask.sum())")
    assert measured["result"] > 0
    # a dense [B, M, A] float metric alone would be 86 MiB, the [B, M, A, 4] box tensor 344 MiB
    assert measured["grown_mib"] < 256 and measured["seconds"] < 20, measured


# ----------------------------------------------------------------------------- bad input
def _good():
    scores, pred, points, labels, gt, mask = random_batch(3, B=2, M=4, logits=True)
    return dict(pred_scores=scores, pred_bboxes=pred, anchor_points=points, gt_labels=labels, gt_bboxes=gt,
                gt_mask=mask)


@pytest.mark.parametrize("name, change, error", [
    ("pred_scores", lambda x: x[0], ValueError),
    ("pred_scores", lambda x: (x * 10).long(), TypeError),
    ("pred_scores", lambda x: x.index_fill(2, torch.tensor([1]), float("nan")), ValueError),
    ("pred_scores", lambda x: x.index_fill(2, torch.tensor([1]), float("inf")), ValueError),
    ("pred_bboxes", lambda x: x[..., :3], ValueError),
    ("pred_bboxes", lambda x: x.index_fill(1, torch.tensor([3]), float("inf")), ValueError),
    ("anchor_points", lambda x: x[:-1], ValueError),
    ("anchor_points", lambda x: x.to("meta"), ValueError),
    ("gt_labels", lambda x: x + 5, ValueError),
    ("gt_bboxes", lambda x: x[..., [2, 3, 0, 1]], ValueError),
    ("gt_bboxes", lambda x: x[:1], ValueError),
    ("gt_mask", lambda x: x[:, :2], ValueError),
])
def test_bad_batch_input(name, change, error):
    kw = _good()
    kw["gt_mask"] = torch.ones_like(kw["gt_mask"])
    kw[name] = change(kw[name])
    with pytest.raises(error, match=name):
        TaskAlignedAssigner().assign_batch(**kw)


def test_bad_per_image_input():
    priors, bboxes, scores, gt, labels = random_image(1)
    tal = TaskAlignedAssigner(preset="mmdet")
    with pytest.raises(ValueError, match="pred_instances.scores"):
        tal.assign(Instances(priors=priors, bboxes=bboxes, scores=scores[:-1]), Instances(bboxes=gt, labels=labels))
    with pytest.raises(ValueError, match="pred_instances.scores"):  # probabilities here, as TOOD passes them
        tal.assign(Instances(priors=priors, bboxes=bboxes, scores=scores * 3 - 1), Instances(bboxes=gt, labels=labels))
    with pytest.raises(ValueError, match="pred_instances.bboxes is required"):
        tal.assign(Instances(priors=priors, scores=scores), Instances(bboxes=gt, labels=labels))
    with pytest.raises(ValueError, match="num_classes"):
        TaskAlignedAssigner(num_classes=7).assign(Instances(priors=priors, bboxes=bboxes, scores=scores),
                                                  Instances(bboxes=gt, labels=labels))


# ----------------------------------------------------------------------------- CUDA (auto-skipped without a GPU)
def _cuda(data):
    return tuple(x.cuda() for x in data)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["auto", "blocked"])
@pytest.mark.parametrize("preset", ["ultralytics", "ultralytics_loss", "mmdet"])
def test_cuda_matches_cpu(preset, method):
    # both paths break ties by anchor index, so only float rounding (atan / pow kernels) may differ
    tal = TaskAlignedAssigner(preset=preset, method=method)
    for seed in range(8):
        data = random_batch(seed, B=3, M=8, logits=True)
        cpu = tal.assign_batch(*data)
        gpu = tal.assign_batch(*_cuda(data))
        for key in ("gt_inds", "labels", "target_boxes"):
            assert torch.equal(getattr(gpu, key).cpu(), getattr(cpu, key)), key
        for key in ("max_overlaps", "target_scores", "assign_metrics"):
            torch.testing.assert_close(getattr(gpu, key).cpu(), getattr(cpu, key), atol=1e-6, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("preset", ["ultralytics", "ultralytics_loss", "mmdet"])
def test_cuda_path_has_no_host_sync(preset):
    from detassign import _validate

    tal = TaskAlignedAssigner(preset=preset, method="blocked")
    data = _cuda(random_batch(2, B=2, M=6, logits=True))
    with _validate.value_checks(False):
        tal.assign_batch(*data)  # warm-up: lazy CUDA initialisation may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            res = tal.assign_batch(*data)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert res.gt_inds.is_cuda and res.fg_mask.any()


def test_simd_sigmoid_equals_the_whole_tensor_sigmoid():
    # the batched calls take the sigmoid of the logits they read only (TAL's pairs, SimOTA's candidate rows):
    # the same bits as logits.sigmoid() there (32768 elements: torch computes the whole tensor in SIMD, on any
    # thread count)
    from detassign.assigners._blocks import simd_sigmoid
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 256, 32, generator=g) * 4
    whole = logits.sigmoid()
    for n in (1, 7, 31, 1000):
        index = torch.randint(0, logits.numel(), (n,), generator=g)
        assert torch.equal(simd_sigmoid(logits.reshape(-1)[index]), whole.reshape(-1)[index])
        rows = torch.randint(0, 256, (n,), generator=g)
        assert torch.equal(simd_sigmoid(logits[:, rows]), whole[:, rows])