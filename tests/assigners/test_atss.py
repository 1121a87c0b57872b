"""ATSSAssigner: hand-worked cases, mmdet 3.3.0 parity, batched == per-image, properties, bad inputs."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, Priors, build_assigner
from detassign.assigners._batch import pad_gts
from detassign.assigners.atss import ATSSAssigner
from tests.oracles import mmdet
from tests.fixtures import anchor_boxes as make_priors, jitter_boxes, make_gts
from tests.tolerances import assert_close_across_paths

NEG = -1e8  # mmdet's -INF sentinel for non-positive priors


# ----------------------------------------------------------------------------- data
def assign(assigner, priors, levels, gt, labels, ignore=None, scores=None, bboxes=None):
    pred = Instances(priors=priors)
    if scores is not None:
        pred.scores, pred.bboxes = scores, bboxes
    ign = None if ignore is None else Instances(bboxes=ignore)
    return assigner.assign(pred, levels, Instances(bboxes=gt, labels=labels), ign)


ROW = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10]])  # one level, 4 priors


# ----------------------------------------------------------------------------- hand-worked
def test_hand_worked_threshold_inside_and_resolution():
    # Prior centers (5,5) (15,5) (25,5) (35,5); topk=3 on the single level.
    # GT1 [2,0,14,10], center (8,5): distances 3, 7, 17, 27 -> candidates priors 0, 1, 2.
    #   IoU p0: inter 8*10=80, union 100+120-80=140 -> 0.5714; p1: 40/180 = 0.2222; p2: 0.
    #   mean 0.2646, unbiased std sqrt((0.3069^2 + 0.0423^2 + 0.2646^2) / 2) = 0.2881 -> thr 0.5526.
    #   p0 passes (0.5714 >= 0.5526), its center is 3 px inside the left side (> 0.01).
    # GT2 [0,0,12,10], center (6,5): candidates p0, p1, p2 with IoU 100/120=0.8333, 20/200=0.1, 0.
    #   mean 0.3111, std 0.4550 -> thr 0.7661; p0 passes.
    # p0 is positive for both: the larger IoU (GT2, 0.8333) wins.
    gt = torch.tensor([[2.0, 0, 14, 10], [0, 0, 12, 10]])
    res = assign(ATSSAssigner(topk=3), ROW, [4], gt, torch.tensor([7, 9]))
    assert res.gt_inds.tolist() == [2, 0, 0, 0]
    assert res.labels.tolist() == [9, -1, -1, -1]
    assert res.max_overlaps[0].item() == pytest.approx(100 / 120, abs=1e-6)
    assert res.max_overlaps[1:].tolist() == [NEG] * 3
    only_gt1 = assign(ATSSAssigner(topk=3), ROW, [4], gt[:1], torch.tensor([7]))
    assert only_gt1.gt_inds.tolist() == [1, 0, 0, 0]
    assert only_gt1.max_overlaps[0].item() == pytest.approx(80 / 140, abs=1e-6)


def test_hand_worked_threshold_compare_ge_vs_gt():
    # Two priors [0,0,10,10], [10,0,20,10]; GT [4,0,16,10], center (10,5) equidistant from both.
    # topk=9 is clipped to the level size 2. Both IoU = 60 / (100+120-60) = 0.375 (exact in binary),
    # so mean = 0.375, std = 0 and thr = 0.375: ">=" (mmdet) keeps both, ">" (Paddle) keeps none.
    # Centers (5,5) and (15,5) lie 1 px inside the GT's left / right sides.
    priors, gt, labels = ROW[:2], torch.tensor([[4.0, 0, 16, 10]]), torch.tensor([0])
    ge = assign(ATSSAssigner(), priors, [2], gt, labels)
    assert ge.gt_inds.tolist() == [1, 1] and ge.max_overlaps.tolist() == [0.375, 0.375]
    gt_mode = assign(ATSSAssigner(threshold_compare="gt"), priors, [2], gt, labels)
    assert gt_mode.gt_inds.tolist() == [0, 0] and gt_mode.max_overlaps.tolist() == [NEG, NEG]


def test_hand_worked_ignore_region():
    # Ignore box [0,0,10,10] covers prior 0 (IoF 1 > 0.5): gt_inds -1 and center distance 1e8.
    # topk=3, GT1 [2,0,14,10]: candidates become p1, p2, p3 with IoU 0.2222, 0, 0 -> thr 0.0741 + 0.1283
    #   = 0.2024; p1 passes the threshold but its center x=15 is outside the GT (x2=14) -> no positive.
    ignore = torch.tensor([[0.0, 0, 10, 10]])
    gt, labels = torch.tensor([[2.0, 0, 14, 10]]), torch.tensor([3])
    res = assign(ATSSAssigner(topk=3, ignore_iof_thr=0.5), ROW, [4], gt, labels, ignore)
    assert res.gt_inds.tolist() == [-1, 0, 0, 0]
    assert res.max_overlaps.tolist() == [NEG] * 4
    # mmdet quirk: with topk=9 (k = 4) the ignored prior is still a candidate; IoUs 0.5714, 0.2222, 0, 0
    # give mean 0.1984, std 0.2698, thr 0.4683 and p0 turns positive despite the ignore region.
    res = assign(ATSSAssigner(topk=9, ignore_iof_thr=0.5), ROW, [4], gt, labels, ignore)
    assert res.gt_inds.tolist() == [1, 0, 0, 0]
    # ignore_iof_thr <= 0 disables ignoring
    res = assign(ATSSAssigner(topk=3, ignore_iof_thr=-1), ROW, [4], gt, labels, ignore)
    assert res.gt_inds.tolist() == [1, 0, 0, 0]


def test_hand_worked_ddod_cost():
    # DDOD, alpha = 0.5: q = sigmoid(logit)^0.5 * IoU(pred box, GT)^0.5. Pred boxes equal the priors;
    # logits for class 1: p0 0 (sigmoid 0.5), p1 large (sigmoid ~1).
    # GT [2,0,14,10]: q0 = sqrt(0.5 * 0.5714) = 0.5345, q1 = sqrt(1 * 0.2222) = 0.4714, q2 = q3 = 0 (topk 9 -> k 4).
    # mean 0.2515, std 0.2915 -> thr 0.5430: no candidate passes. With alpha = 1 (pure IoU) p0 passes as
    # in test_hand_worked_ignore_region (thr 0.4683).
    scores = torch.full((4, 2), -20.0)
    scores[0, 1], scores[1, 1] = 0.0, 20.0
    gt, labels = torch.tensor([[2.0, 0, 14, 10]]), torch.tensor([1])
    res = assign(ATSSAssigner(alpha=0.5), ROW, [4], gt, labels, scores=scores, bboxes=ROW.clone())
    assert res.gt_inds.tolist() == [0, 0, 0, 0]
    res = assign(ATSSAssigner(alpha=1.0), ROW, [4], gt, labels, scores=scores, bboxes=ROW.clone())
    assert res.gt_inds.tolist() == [1, 0, 0, 0]
    assert res.max_overlaps[0].item() == pytest.approx(80 / 140, abs=1e-6)


def test_empty_gt_and_empty_priors():
    a = ATSSAssigner()
    none = assign(a, ROW, [4], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.tensor([[0.0, 0, 40, 10]]))
    assert none.gt_inds.tolist() == [0] * 4 and none.labels.tolist() == [-1] * 4
    assert none.max_overlaps.tolist() == [0.0] * 4  # mmdet: 0, not -1e8, when there is no GT
    no_priors = assign(a, torch.zeros(0, 4), [0, 0], torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([1]))
    assert no_priors.gt_inds.shape == (0,) and no_priors.max_overlaps.shape == (0,) and no_priors.num_gts == 1
    both = assign(a, torch.zeros(0, 4), [0], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert both.gt_inds.shape == (0,)


@pytest.mark.filterwarnings("ignore:std.*degrees of freedom:UserWarning")
def test_single_candidate_gives_no_positive():
    # One prior in total: K = 1, the unbiased std is NaN, so nothing passes (as mmdet).
    res = assign(ATSSAssigner(), ROW[:1], [1], torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0]))
    assert res.gt_inds.tolist() == [0]


def test_build_from_config():
    a = build_assigner(dict(type="ATSSAssigner", topk=9, iou_calculator=dict(type="BboxOverlaps2D")))
    assert isinstance(a, ATSSAssigner) and a.topk == 9 and "topk=9" in repr(a)


# ----------------------------------------------------------------------------- oracle parity
def _parity_case(seed):
    g = torch.Generator().manual_seed(seed)
    ratios = (1.0,) if seed % 2 else (0.5, 1.0, 2.0)   # 3 ratios: many exact center-distance ties
    priors, levels = make_priors(ratios=ratios)
    m = [0, 1, 2, 5, 9, 14][seed % 6]
    kind = seed % 5
    if kind == 0:
        gt = make_gts(g, m, lo=1.0, hi=6.0)                # tiny GTs
    elif kind == 1:
        gt = make_gts(g, m, off=0.6)                       # many partly / fully off-image
    else:
        gt = make_gts(g, m)
    if m > 2 and seed % 4 == 0:
        gt[2] = gt[0]                                      # duplicate GT: IoU ties between GTs
    labels = torch.randint(0, 6, (m,), generator=g)
    ignore = make_gts(g, 2, lo=16, hi=64) if seed % 3 == 0 else None
    return g, priors, levels, gt, labels, ignore


def _compare(ours, ref, exact_overlaps=True):
    assert torch.equal(ours.gt_inds, ref.gt_inds)
    assert torch.equal(ours.labels, ref.labels)
    if exact_overlaps:
        assert torch.equal(ours.max_overlaps, ref.max_overlaps.float())
    else:
        torch.testing.assert_close(ours.max_overlaps, ref.max_overlaps.float(), atol=1e-6, rtol=0)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(36))
def test_matches_mmdet(seed):
    O = mmdet()
    g, priors, levels, gt, labels, ignore = _parity_case(seed)
    topk = [9, 3, 20][seed % 3]
    thr = 0.5 if ignore is not None else -1
    ref = O.assigners.ATSSAssigner(topk=topk, ignore_iof_thr=thr)
    ref_res = ref.assign(O.InstanceData(priors=priors), levels, O.InstanceData(bboxes=gt, labels=labels),
                         None if ignore is None else O.InstanceData(bboxes=ignore))
    ours = assign(ATSSAssigner(topk=topk, ignore_iof_thr=thr), priors, levels, gt, labels, ignore)
    _compare(ours, ref_res)
    if seed % 6 == 4:
        assert (ours.gt_inds > 0).any()   # the random cases do produce positives


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(30))
def test_matches_mmdet_ddod(seed):
    O = mmdet()
    g, priors, levels, gt, labels, ignore = _parity_case(seed)
    A = len(priors)
    scores = torch.randn(A, 6, generator=g) * 2
    bboxes = jitter_boxes(g, priors, 6.0)
    alpha = [0.8, 0.5, 0.3][seed % 3]
    ref = O.assigners.ATSSAssigner(topk=9, alpha=alpha)
    ref_res = ref.assign(O.InstanceData(priors=priors, scores=scores, bboxes=bboxes), levels,
                         O.InstanceData(bboxes=gt, labels=labels))
    ours = assign(ATSSAssigner(topk=9, alpha=alpha), priors, levels, gt, labels, scores=scores, bboxes=bboxes)
    _compare(ours, ref_res, exact_overlaps=False)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
def test_fp16_inputs_match_mmdet_on_float32_copy(seed):
    O = mmdet()
    g, priors, levels, gt, labels, _ = _parity_case(seed + 100)
    priors16, gt16 = priors.half(), gt.half()
    ref_res = O.assigners.ATSSAssigner(topk=9).assign(
        O.InstanceData(priors=priors16.float()), levels, O.InstanceData(bboxes=gt16.float(), labels=labels))
    ours = assign(ATSSAssigner(), priors16, levels, gt16, labels)
    assert ours.max_overlaps.dtype == torch.float32
    _compare(ours, ref_res)


@pytest.mark.oracle
def test_odd_levels_match_mmdet():
    # A level smaller than topk, an empty level, and a GT far off the image (candidates, no positive).
    O = mmdet()
    priors, _ = make_priors(strides=(16, 64))          # 64 + 4 priors
    levels = [64, 0, 4]
    gt = torch.tensor([[10.0, 10, 60, 70], [300, 300, 340, 330], [0, 0, 128, 128], [40, 40, 41, 41]])
    labels = torch.tensor([0, 1, 2, 3])
    ref_res = O.assigners.ATSSAssigner(topk=9).assign(O.InstanceData(priors=priors), levels,
                                                      O.InstanceData(bboxes=gt, labels=labels))
    ours = assign(ATSSAssigner(), priors, levels, gt, labels)
    _compare(ours, ref_res)
    assert not (ours.gt_inds == 2).any()                # the off-image GT gets nothing


# ----------------------------------------------------------------------------- batched
def batch(assigner, priors, levels, labels, boxes, mask=None, scores=None, bboxes=None):
    """The batched interface on anchor boxes [A, 4] with their level sizes."""
    return assigner.assign_batch(scores, bboxes, Priors.from_boxes(priors, levels), labels, boxes, mask)


def _batch(g, B, max_m, ratios=(1.0,), ddod=False, interleave=False):
    priors, levels = make_priors(ratios=ratios)
    ms = [int(x) for x in torch.randint(0, max_m + 1, (B,), generator=g)]
    gts = [make_gts(g, m, off=0.2) for m in ms]
    labs = [torch.randint(0, 5, (m,), generator=g) for m in ms]
    labels, boxes, mask = pad_gts(gts, labs)
    if interleave and mask.shape[1] > 1:
        perm = torch.randperm(mask.shape[1], generator=g)   # padding rows anywhere, not only at the end
        labels, boxes, mask = labels[:, perm], boxes[:, perm], mask[:, perm]
    boxes[~mask] = torch.tensor([10.0, 10, 100, 100])        # padding that would win if it leaked
    labels[~mask] = 99                                       # out of the class range on purpose
    A = len(priors)
    scores = torch.randn(B, A, 5, generator=g) if ddod else None
    bboxes = jitter_boxes(g, priors.expand(B, A, 4), 6.0) if ddod else None
    return priors, levels, labels, boxes, mask, scores, bboxes


def _check_batch_equals_per_image(assigner, priors, levels, labels, boxes, mask, scores, bboxes):
    res = batch(assigner, priors, levels, labels, boxes, mask, scores, bboxes)
    assert res.gt_inds.shape == (len(mask), len(priors))
    for i in range(len(mask)):
        valid = torch.nonzero(mask[i]).squeeze(1)            # per-image index j -> padded index valid[j]
        one = assign(assigner, priors, levels, boxes[i][valid], labels[i][valid],
                     scores=None if scores is None else scores[i], bboxes=None if bboxes is None else bboxes[i])
        expected = one.gt_inds.clone()
        pos = expected > 0
        expected[pos] = valid[expected[pos] - 1] + 1
        assert torch.equal(res.gt_inds[i], expected)
        assert torch.equal(res.labels[i], one.labels)
        # DDOD mixes IoU and scores through pow: layout-dependent rounding, so a few ulp apart
        assert_close_across_paths(res.max_overlaps[i], one.max_overlaps, f"image {i} max_overlaps")
        assert int(res.num_gts[i]) == len(valid)


@pytest.mark.parametrize("seed", range(6))
def test_batched_equals_per_image(seed):
    g = torch.Generator().manual_seed(seed)
    ddod = seed % 2 == 1
    data = _batch(g, 5, 8, ratios=(1.0,) if seed < 3 else (0.5, 1.0, 2.0), ddod=ddod, interleave=seed % 3 == 0)
    _check_batch_equals_per_image(ATSSAssigner(alpha=0.8 if ddod else None), *data)


@pytest.mark.oracle
def test_batched_matches_mmdet_loop():
    O = mmdet()
    g = torch.Generator().manual_seed(7)
    priors, levels, labels, boxes, mask, _, _ = _batch(g, 6, 10)
    res = batch(ATSSAssigner(), priors, levels, labels, boxes, mask)
    ref = O.assigners.ATSSAssigner(topk=9)
    for i in range(6):
        r = ref.assign(O.InstanceData(priors=priors), levels, O.InstanceData(bboxes=boxes[i][mask[i]],
                                                                              labels=labels[i][mask[i]]))
        assert torch.equal(res[i].gt_inds, r.gt_inds) and torch.equal(res[i].max_overlaps, r.max_overlaps)


def test_batched_empty_shapes():
    a = ATSSAssigner()
    priors, levels = make_priors()
    res = batch(a, priors, levels, torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, 4))
    assert res.gt_inds.shape == (3, len(priors)) and (res.gt_inds == 0).all() and (res.max_overlaps == 0).all()
    res = batch(a, torch.zeros(0, 4), [0, 0], torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 4) * 10 +
                torch.tensor([0.0, 0, 10, 10]))
    assert res.gt_inds.shape == (2, 0)
    # all GTs masked out: every prior negative, max_overlaps 0 as per image
    boxes = torch.tensor([[[10.0, 10, 50, 50]]]).expand(2, 1, 4)
    res = batch(a, priors, levels, torch.zeros(2, 1, dtype=torch.long), boxes, torch.tensor([[True], [False]]))
    assert (res.gt_inds[1] == 0).all() and (res.max_overlaps[1] == 0).all() and (res.gt_inds[0] > 0).any()


@pytest.mark.cuda
def test_batched_cuda_equals_cpu():
    g = torch.Generator().manual_seed(3)
    data = _batch(g, 4, 8)
    cpu = batch(ATSSAssigner(), *data)
    gpu = batch(ATSSAssigner(), *[d.cuda() if isinstance(d, torch.Tensor) else d for d in data])
    assert torch.equal(gpu.gt_inds.cpu(), cpu.gt_inds)


# ----------------------------------------------------------------------------- properties
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 10), ddod=st.booleans())
def test_gt_permutation_equivariance(seed, m, ddod):
    g = torch.Generator().manual_seed(seed)
    priors, levels = make_priors(img=96, strides=(8, 16, 32))
    gt, labels = make_gts(g, m, img=96, off=0.1), torch.randint(0, 4, (m,), generator=g)
    scores = torch.randn(len(priors), 4, generator=g) if ddod else None
    bboxes = jitter_boxes(g, priors, 5.0) if ddod else None
    a = ATSSAssigner(alpha=0.8 if ddod else None)
    perm = torch.randperm(m, generator=g)
    base = assign(a, priors, levels, gt, labels, scores=scores, bboxes=bboxes)
    permuted = assign(a, priors, levels, gt[perm], labels[perm], scores=scores, bboxes=bboxes)
    mapped = torch.where(permuted.gt_inds > 0, perm[(permuted.gt_inds - 1).clamp(min=0)] + 1, permuted.gt_inds)
    assert torch.equal(mapped, base.gt_inds)
    assert_close_across_paths(permuted.max_overlaps, base.max_overlaps, "max_overlaps")
    assert torch.equal(permuted.labels, base.labels)


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), max_m=st.integers(0, 7),
       ddod=st.booleans(), interleave=st.booleans())
def test_batched_equals_per_image_property(seed, batch, max_m, ddod, interleave):
    g = torch.Generator().manual_seed(seed)
    data = _batch(g, batch, max_m, ddod=ddod, interleave=interleave)
    _check_batch_equals_per_image(ATSSAssigner(alpha=0.8 if ddod else None), *data)


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 8))
def test_positives_lie_inside_their_gt(seed, m):
    g = torch.Generator().manual_seed(seed)
    priors, levels = make_priors(img=96)
    gt, labels = make_gts(g, m, img=96), torch.randint(0, 3, (m,), generator=g)
    res = assign(ATSSAssigner(), priors, levels, gt, labels)
    pos = res.gt_inds > 0
    centers = (priors[pos, :2] + priors[pos, 2:]) / 2
    boxes = gt[res.gt_inds[pos] - 1]
    assert ((centers > boxes[:, :2] + 0.01) & (centers < boxes[:, 2:] - 0.01)).all()
    assert (res.max_overlaps[pos] > 0).all() and (res.max_overlaps[~pos] == NEG).all()


# ----------------------------------------------------------------------------- bad inputs
def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)
    with pytest.raises(ValueError, match="alpha"):
        ATSSAssigner(alpha=1.5)
    with pytest.raises(ValueError, match="threshold_compare"):
        ATSSAssigner(threshold_compare=">=")
    with pytest.raises(ValueError, match="iou_calculator"):
        ATSSAssigner(iou_calculator=dict(type="BboxOverlaps3D"))


def test_bad_assign_inputs():
    a = ATSSAssigner()
    gt, labels = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0])
    with pytest.raises(ValueError, match="num_level_priors"):
        assign(a, ROW, [3], gt, labels)
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assign(a, ROW[:, :3], [4], gt, labels)
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        assign(a, ROW, [4], torch.tensor([[5.0, 0, 0, 10]]), labels)
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        assign(a, ROW, [4], torch.tensor([[0.0, float("nan"), 5, 10]]), labels)
    with pytest.raises(ValueError, match="gt_instances.labels"):
        assign(a, ROW, [4], gt, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pred_instances.scores"):
        assign(ATSSAssigner(alpha=0.8), ROW, [4], gt, labels)
    with pytest.raises(ValueError, match="gt_instances.labels"):
        assign(ATSSAssigner(alpha=0.8), ROW, [4], gt, torch.tensor([5]), scores=torch.zeros(4, 2), bboxes=ROW)
    with pytest.raises(TypeError, match="pred_instances.priors"):
        assign(a, ROW.long(), [4], gt, labels)


def test_bad_batch_inputs():
    a = ATSSAssigner()
    priors, levels = make_priors()
    boxes, labels = torch.tensor([[[0.0, 0, 10, 10]]]), torch.tensor([[0]])
    with pytest.raises(ValueError, match="priors"):
        a.assign_batch(None, None, priors[None], labels, boxes)
    with pytest.raises(ValueError, match="ATSSAssigner needs priors.level_sizes"):
        a.assign_batch(None, None, priors, labels, boxes)                  # anchor boxes without levels
    with pytest.raises(ValueError, match="gt_bboxes"):
        batch(a, priors, levels, labels, boxes[0])
    with pytest.raises(ValueError, match="level_sizes"):
        batch(a, priors, levels[:2], labels, boxes)
    with pytest.raises(TypeError, match="pred_scores"):
        batch(ATSSAssigner(alpha=0.8), priors, levels, labels, boxes)
    with pytest.raises(ValueError, match="pred_scores"):
        batch(ATSSAssigner(alpha=0.8), priors, levels, labels, boxes, None, torch.zeros(1, 5, 3), torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match="needs priors.boxes"):
        a.assign_batch(None, None, Priors(torch.zeros(3, 2), level_sizes=[3]), labels, boxes)


def test_batched_priors_without_boxes_use_octave_base_scale_squares():
    # points with strides and no anchor boxes: mmdet's ATSS anchors, squares of 8 strides (here 5)
    points = Priors.grid((64, 64), (8, 16))
    g = torch.Generator().manual_seed(2)
    boxes = make_gts(g, 4, off=0.0)[None] * 0.5
    labels = torch.zeros(1, 4, dtype=torch.long)
    for scale in (8.0, 5.0):
        squares = Priors.from_boxes(points.square_boxes(scale), points.level_sizes)
        derived = ATSSAssigner(octave_base_scale=scale).assign_batch(None, None, points, labels, boxes)
        given = ATSSAssigner().assign_batch(None, None, squares, labels, boxes)
        assert torch.equal(derived.gt_inds, given.gt_inds) and torch.equal(derived.max_overlaps, given.max_overlaps)
    half = 8.0 * 8 / 2       # the first prior: center (4, 4), stride 8
    assert points.square_boxes(8.0)[0].tolist() == [4 - half, 4 - half, 4 + half, 4 + half]


# ----------------------------------------------------------------------------- grid window (step 1 fast path)
from detassign.assigners import atss as atss_module  # noqa: E402
from detassign.assigners.atss import level_grids, nearest_in_window, nearest_per_level  # noqa: E402


def tie_gts(g, m, img=128, step=4.0):
    """GTs whose centers sit on the 4-px lattice: exactly on cell centers or cell borders of every level,
    so 2 or 4 cells are equidistant (distance ties), mixed with random and off-image ones."""
    c = torch.randint(-4, int(img / step) + 4, (m, 2), generator=g).float() * step
    wh = torch.randint(1, 12, (m, 2), generator=g).float() * step
    gt = torch.cat([c - wh / 2, c + wh / 2], 1)
    rand = make_gts(g, m, img=img, off=0.2)
    return torch.where(torch.rand(m, 1, generator=g) < 0.7, gt, rand)


def test_level_grids_detects_single_anchor_levels_only():
    priors, levels = make_priors()
    grids = level_grids(priors, levels)
    assert [(gr.start, gr.H, gr.W) for gr in grids] == [(0, 16, 16), (256, 8, 8), (320, 4, 4)]
    assert torch.equal(grids[1].cx, ((torch.arange(8) + 0.5) * 16).float())
    three, levels3 = make_priors(ratios=(0.5, 1.0, 2.0))                 # 3 anchors per cell: centers tie
    assert level_grids(three, levels3) == [None, None, None]
    g = torch.Generator().manual_seed(0)
    shuffled = priors[torch.randperm(len(priors), generator=g)]
    assert all(gr is None or gr.H * gr.W == n for gr, n in zip(level_grids(shuffled, levels), levels))


@pytest.mark.parametrize("topk", [1, 4, 9, 15])
def test_window_equals_full_topk_including_ties(topk):
    g = torch.Generator().manual_seed(topk)
    priors, levels = make_priors()
    centers = box_centers_of(tie_gts(g, 300))[None]                       # [1, 300, 2]
    grids = level_grids(priors, levels)
    pc = (priors[:, :2] + priors[:, 2:]) / 2
    full = nearest_per_level(pc, centers, levels, topk)
    fast = nearest_per_level(pc, centers, levels, topk, grids=grids)
    assert torch.equal(full, fast)
    # both outcomes of the proof occur: ties fall back to the full level, random centers do not
    _, ok = nearest_in_window(grids[0], centers[0, :, 0].contiguous(), centers[0, :, 1].contiguous(), topk)
    assert 0 < int(ok.sum()) < len(ok)


def box_centers_of(boxes):
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)


@pytest.mark.oracle
@pytest.mark.parametrize("grid_window", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_tie_heavy_grid_matches_mmdet(seed, grid_window):
    O = mmdet()
    g = torch.Generator().manual_seed(1000 + seed)
    priors, levels = make_priors()
    gt = tie_gts(g, [1, 3, 8, 14][seed % 4])
    labels = torch.randint(0, 6, (len(gt),), generator=g)
    topk = [9, 3, 5, 12][seed % 4]
    ref = O.assigners.ATSSAssigner(topk=topk).assign(O.InstanceData(priors=priors), levels,
                                                       O.InstanceData(bboxes=gt, labels=labels))
    ours = assign(ATSSAssigner(topk=topk, grid_window=grid_window), priors, levels, gt, labels)
    _compare(ours, ref)


def test_batched_window_path_equals_full_path(monkeypatch):
    g = torch.Generator().manual_seed(11)
    priors, levels = make_priors()
    boxes = torch.stack([tie_gts(g, 9) for _ in range(7)])
    labels = torch.randint(0, 5, (7, 9), generator=g)
    mask = torch.rand(7, 9, generator=g) < 0.8
    full = batch(ATSSAssigner(grid_window=False), priors, levels, labels, boxes, mask)
    monkeypatch.setattr(atss_module, "CPU_CHUNK", len(priors) * 2)           # 2 images per chunk
    fast = batch(ATSSAssigner(), priors, levels, labels, boxes, mask)
    assert torch.equal(full.gt_inds, fast.gt_inds) and torch.equal(full.labels, fast.labels)
    assert torch.equal(full.max_overlaps, fast.max_overlaps)
    with pytest.raises(ValueError, match="grid_window"):
        ATSSAssigner(grid_window=1)
