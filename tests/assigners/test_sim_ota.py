"""SimOTAAssigner: hand-worked cases, mmdet 3.3.0 parity, batched == per image, properties, bad inputs."""
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from detassign import BatchAssignResult, Instances, Priors, build_assigner
from detassign.assigners import _dynamic_k as DK
from detassign.assigners._batch import pad_gts
from detassign.assigners.sim_ota import SimOTAAssigner, candidate_regions, candidate_rules, exact_cls_cost, total_cost
from detassign.boxes import bbox_overlaps
from tests.oracles import mmdet


# ----------------------------------------------------------------------------- shared case generator
def make_priors(size=128, strides=(8, 16, 32)):
    """Point priors (cx, cy, stride, stride) at cell corners (mmdet's offset 0), level by level."""
    out = []
    for s in strides:
        n = size // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        cx, cy = xs.flatten().float() * s, ys.flatten().float() * s
        out.append(torch.stack([cx, cy, torch.full_like(cx, s), torch.full_like(cx, s)], 1))
    return torch.cat(out)


def make_case(seed, num_gts=None, num_classes=8, size=128, tiny=False, off_image=False, logits=False):
    """A realistic random image: GT sides log-uniform, 70% of predictions jitter a GT, random scores."""
    g = torch.Generator().manual_seed(seed)
    priors = make_priors(size)
    A = len(priors)
    M = int(torch.randint(0, 9, (1,), generator=g)) if num_gts is None else num_gts
    lo, hi = (math.log(1.0), math.log(6.0)) if tiny else (math.log(4.0), math.log(100.0))
    wh = torch.empty(M, 2).uniform_(lo, hi, generator=g).exp()
    ctr = torch.rand(M, 2, generator=g) * size
    if off_image:
        ctr = ctr + (torch.rand(M, 2, generator=g) - 0.5) * size
    gt = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    labels = torch.randint(0, num_classes, (M,), generator=g)
    pw = torch.empty(A, 2).uniform_(1.5, 4.5, generator=g).exp()
    pred = torch.cat([priors[:, :2] - pw / 2, priors[:, :2] + pw / 2], 1)
    if M:
        pick = torch.randint(0, M, (A,), generator=g)
        near = gt[pick] + torch.randn(A, 4, generator=g) * wh[pick].repeat(1, 2) * 0.2
        near = torch.cat([torch.minimum(near[:, :2], near[:, 2:]), torch.maximum(near[:, :2], near[:, 2:])], 1)
        pred = torch.where((torch.rand(A, generator=g) < 0.7)[:, None], near, pred)
    scores = torch.rand(A, num_classes, generator=g)
    if logits:
        scores = (scores - 0.5) * 12
    return priors, pred, scores, gt, labels


def case_kwargs(seed):
    """Mix of tiny GTs, off-image GTs, 80 classes and fp16 scores over the seeds."""
    return dict(tiny=seed % 5 == 1, off_image=seed % 7 == 2, num_classes=80 if seed % 3 == 0 else 8)


def near_tie_at_decisions(cost, ious, topk):
    """cost [A', M], ious [A', M] (the exact per-image ones): True if a decision sits on a near-tie,
    i.e. a GT's k-th and (k+1)-th lowest costs, or the two lowest costs of a prior taken by several
    GTs, differ by a few float32 ulps (plus 1e-5): there the reference's tie order decides, and the
    vectorised path (whose costs differ by rounding) may legitimately decide otherwise."""
    n, m = cost.shape
    if n == 0 or m == 0:
        return False

    def close(a, b):
        return abs(a - b) <= 4 * torch.finfo(torch.float32).eps * max(1.0, abs(a), abs(b)) + 1e-5

    ks = torch.topk(ious, min(topk, n), dim=0).values.sum(0).int().clamp(min=1)
    ordered, order = cost.sort(dim=0, stable=True)
    taken = torch.zeros(n, dtype=torch.long)
    for j in range(m):
        k = int(ks[j])
        taken[order[:k, j]] += 1
        if k < n and close(float(ordered[k, j]), float(ordered[k - 1, j])):
            return True
    if m > 1:
        two = cost[taken > 1].topk(2, dim=1, largest=False).values.tolist()
        if any(close(a, b) for a, b in two):
            return True
    return False


def simota_cost(priors, pred, scores, gt, labels, radius=2.5, mode="box_or_center"):
    """The exact per-image cost [A', M] and IoU [A', M] (for tie detection in tests)."""
    in_box, in_center = candidate_regions(priors, gt, radius)
    candidate, unpenalised = candidate_rules(in_box, in_center, mode)
    valid = candidate.any(0)
    ious = bbox_overlaps(pred[valid], gt)
    return total_cost(exact_cls_cost(scores[valid], labels), ious, unpenalised[:, valid].t(), 1.0, 3.0), ious


def run(assigner, priors, pred, scores, gt, labels):
    return assigner.assign(Instances(priors=priors, bboxes=pred, scores=scores), Instances(bboxes=gt, labels=labels))


def assert_same(ours, ref):
    assert torch.equal(ours.gt_inds, ref.gt_inds)
    assert torch.equal(ours.labels, ref.labels)
    assert torch.equal(ours.max_overlaps.float(), ref.max_overlaps.float())
    assert ours.num_gts == ref.num_gts


# ----------------------------------------------------------------------------- hand-worked
def tiny_case():
    priors = torch.tensor([[4., 4., 8., 8.], [12., 4., 8., 8.], [20., 4., 8., 8.], [36., 36., 8., 8.]])
    pred = torch.tensor([[0., 0., 16., 8.], [0., 0., 8., 8.], [0., 0., 16., 8.], [30., 30., 40., 40.]])
    scores = torch.full((4, 2), 0.5)
    gt = torch.tensor([[0., 0., 16., 8.]])
    return priors, pred, scores, gt, torch.tensor([1])


@pytest.mark.parametrize("exact", [True, False])
def test_hand_worked_mmdet_mode(exact):
    # GT [0, 0, 16, 8], center (8, 4); radius 2.5 * stride 8 = 20 -> center square (-12, -16, 28, 24).
    #   prior (4, 4): in box, in center | (12, 4): in box, in center | (20, 4): center only (+1e5) |
    #   (36, 36): neither -> not a candidate.
    # IoU with the GT: 1, 64 / 128 = 0.5, 1.  Class cost (p = 0.5 for both classes): 2 ln 2 = 1.386 each.
    # cost: 1.386 + 3 * -ln(1 + 1e-7) = 1.386 | 1.386 + 3 ln 2 = 3.466 | 1.386 + 1e5.
    # dynamic k = max(1, floor(1 + 0.5 + 1)) = 2 -> the two lowest costs: priors 0 and 1.
    res = run(SimOTAAssigner(exact=exact), *tiny_case())
    assert res.gt_inds.tolist() == [1, 1, 0, 0]
    assert res.labels.tolist() == [1, 1, -1, -1]
    assert res.max_overlaps.tolist() == [1.0, 0.5, -1e5, -1e5]


@pytest.mark.parametrize("exact", [True, False])
def test_hand_worked_yolox_mode(exact):
    # YOLOX: center region only, radius 1.5 * 8 = 12 -> square (-4, -8, 20, 16); (20, 4) is on the edge
    # (strict test) so only priors 0 and 1 are candidates, IoUs 1 and 0.5 -> k = floor(1.5) = 1:
    # prior 0 (cost 1.386) beats prior 1 (3.466).
    res = run(SimOTAAssigner.yolox(exact=exact), *tiny_case())
    assert res.gt_inds.tolist() == [1, 0, 0, 0]
    assert res.max_overlaps.tolist() == [1.0, -1e5, -1e5, -1e5]


def test_conflict_goes_to_cheapest_gt():
    # Two identical GTs (labels 0 and 1) over one prior; scores favour class 1 (p1 = 0.9, p0 = 0.1):
    # cls cost GT0 = -ln 0.1 - ln 0.1 = 4.605, GT1 = -ln 0.9 - ln 0.9 = 0.211; both GTs take the prior
    # (k = 1) -> it goes to GT1 (gt_inds 2) with its IoU 1.
    priors = torch.tensor([[4., 4., 8., 8.]])
    pred = torch.tensor([[0., 0., 8., 8.]])
    scores = torch.tensor([[0.1, 0.9]])
    gt = torch.tensor([[0., 0., 8., 8.], [0., 0., 8., 8.]])
    for exact in (True, False):
        res = run(SimOTAAssigner(exact=exact), priors, pred, scores, gt, torch.tensor([0, 1]))
        assert res.gt_inds.tolist() == [2] and res.labels.tolist() == [1] and res.max_overlaps.tolist() == [1.0]


# ----------------------------------------------------------------------------- oracle parity
@pytest.mark.oracle
def test_exact_parity_with_mmdet_random():
    mm = mmdet()
    ref = mm.assigners.SimOTAAssigner()
    ours = SimOTAAssigner()
    for seed in range(36):
        priors, pred, scores, gt, labels = make_case(seed, **case_kwargs(seed))
        if seed % 4 == 3:
            scores = scores.half()
        expected = ref.assign(mm.InstanceData(priors=priors, bboxes=pred, scores=scores),
                              mm.InstanceData(bboxes=gt, labels=labels))
        assert_same(run(ours, priors, pred, scores, gt, labels), expected)


@pytest.mark.oracle
def test_batched_parity_with_mmdet_random():
    """The vectorised path equals mmdet except where mmdet's own decision sits on a (near-)tie."""
    mm = mmdet()
    ref = mm.assigners.SimOTAAssigner()
    fast = SimOTAAssigner(exact=False)
    compared = 0
    for seed in range(100, 136):
        case = make_case(seed, **case_kwargs(seed))
        expected = ref.assign(mm.InstanceData(priors=case[0], bboxes=case[1], scores=case[2]),
                              mm.InstanceData(bboxes=case[3], labels=case[4]))
        got = run(fast, *case)
        same = torch.equal(got.gt_inds, expected.gt_inds) and torch.equal(got.max_overlaps, expected.max_overlaps)
        if not same:
            assert near_tie_at_decisions(*simota_cost(*case), topk=10), f"seed {seed} differs without a tie"
        else:
            assert torch.equal(got.labels, expected.labels)
            compared += 1
    assert compared >= 30


def naive_simota(priors, pred, scores, gt, labels, radius, mode, topk=10):
    """Textbook SimOTA, one GT and one prior at a time (float64 costs; ties to the lowest prior index)."""
    A, M = len(priors), len(gt)
    in_box = torch.zeros(M, A, dtype=torch.bool)
    in_center = torch.zeros(M, A, dtype=torch.bool)
    for m, (x1, y1, x2, y2) in enumerate(gt.tolist()):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        for a, (px, py, sx, sy) in enumerate(priors.tolist()):
            in_box[m, a] = x1 < px < x2 and y1 < py < y2
            in_center[m, a] = abs(px - cx) < radius * sx and abs(py - cy) < radius * sy
    candidate = in_center if mode == "center" else in_box | in_center
    free = in_center if mode == "center" else in_box & in_center
    cand = torch.nonzero(candidate.any(0)).squeeze(1).tolist()
    gt_inds = torch.zeros(A, dtype=torch.long)
    if not cand:
        return gt_inds
    ious = bbox_overlaps(pred[cand], gt).double()                            # [A', M]
    p = scores[cand].double()
    cost = torch.zeros(len(cand), M, dtype=torch.float64)
    for m in range(M):
        target = torch.zeros_like(p)
        target[:, labels[m]] = 1
        bce = -(target * p.log().clamp(min=-100) + (1 - target) * (1 - p).log().clamp(min=-100)).sum(1)
        cost[:, m] = bce - 3 * torch.log(ious[:, m] + 1e-7) + 1e5 * (~free[m, cand]).double()
    chosen = {}
    for m in range(M):
        k = max(1, int(ious[:, m].sort(descending=True).values[:topk].sum()))
        for i in sorted(range(len(cand)), key=lambda i: (float(cost[i, m]), i))[:k]:
            chosen.setdefault(i, []).append(m)
    for i, ms in chosen.items():
        gt_inds[cand[i]] = (ms[0] if len(ms) == 1 else int(cost[i].argmin())) + 1
    return gt_inds


@pytest.mark.parametrize("mode", ["center", "box_or_center"])
def test_candidate_modes_match_naive_reference(mode):
    """YOLOX's rule (center squares only, radius 1.5) and mmdet's, against a loop-per-pair reference."""
    radius = 1.5 if mode == "center" else 2.5
    assigner = SimOTAAssigner.yolox(exact=False) if mode == "center" else SimOTAAssigner(exact=False)
    checked = 0
    for seed in range(8):
        case = make_case(seed + 300, num_gts=4, size=64)
        if near_tie_at_decisions(*simota_cost(*case, radius=radius, mode=mode), topk=10):
            continue
        res = run(assigner, *case)
        assert torch.equal(res.gt_inds, naive_simota(*case, radius=radius, mode=mode))
        checked += 1
    assert checked >= 5


@pytest.mark.oracle
def test_edge_cases_match_mmdet():
    mm = mmdet()
    ref = mm.assigners.SimOTAAssigner()
    ours = SimOTAAssigner()
    priors, pred, scores, gt, labels = make_case(7, num_gts=4)
    cases = {
        "empty_gt": (priors, pred, scores, gt[:0], labels[:0]),
        "empty_priors": (priors[:0], pred[:0], scores[:0], gt, labels),
        "no_candidate": (priors, pred, scores, torch.tensor([[500., 500., 520., 530.]]), labels[:1]),
        "gt_without_candidate": (priors, pred, scores, torch.cat([gt, torch.tensor([[500., 500., 520., 530.]])]),
                                 torch.cat([labels, labels[:1]])),
        "zero_area_gt": (priors, pred, scores, torch.tensor([[40., 40., 40., 40.]]), labels[:1]),
        "all_ties": (priors, torch.tensor([[0., 0., 32., 32.]]).expand_as(pred).clone(),
                     torch.full_like(scores, 0.25), torch.tensor([[0., 0., 32., 32.], [0., 0., 32., 32.]]),
                     torch.tensor([1, 1])),
    }
    for name, case in cases.items():
        expected = ref.assign(mm.InstanceData(priors=case[0], bboxes=case[1], scores=case[2]),
                              mm.InstanceData(bboxes=case[3], labels=case[4]))
        got = run(ours, *case)
        assert_same(got, expected), name
        fast = run(SimOTAAssigner(exact=False), *case)
        assert torch.equal(fast.max_overlaps == 0, expected.max_overlaps == 0), name   # same sentinel regime
        if name != "all_ties":
            assert_same(fast, expected)
    # Full ties: every IoU is 1, so k = 10 per GT and every unpenalised prior costs the same. The
    # vectorised path keeps the 10 lowest-index unpenalised priors and gives them to the first GT.
    case = cases["all_ties"]
    fast = run(SimOTAAssigner(exact=False), *case)
    in_box, in_center = candidate_regions(case[0], case[3][:1], 2.5)
    lowest = torch.nonzero((in_box & in_center)[0]).squeeze(1)[:10]
    assert torch.equal(torch.nonzero(fast.pos_mask).squeeze(1), lowest)
    assert set(fast.gt_inds[lowest].tolist()) == {1}


@pytest.mark.oracle
def test_build_from_mmdet_config_and_custom_iou():
    mm = mmdet()
    cfg = dict(type="SimOTAAssigner", center_radius=2.5, candidate_topk=10, iou_weight=3.0, cls_weight=1.0,
               iou_calculator=dict(type="BboxOverlaps2D"))
    ours = build_assigner(cfg)
    ref = mm.task_utils.build(cfg)
    case = make_case(11, num_gts=6)
    expected = ref.assign(mm.InstanceData(priors=case[0], bboxes=case[1], scores=case[2]),
                          mm.InstanceData(bboxes=case[3], labels=case[4]))
    assert_same(run(ours, *case), expected)
    custom = SimOTAAssigner(iou_calculator=lambda a, b: bbox_overlaps(a, b), exact=False)
    assert_same(run(custom, *case), run(SimOTAAssigner(exact=False), *case))


# ----------------------------------------------------------------------------- batched
def as_priors(point_priors):
    """Point priors (cx, cy, sw, sh) [A, 4] -> the batched interface's Priors."""
    return Priors.from_points(point_priors[:, :2], point_priors[:, 2:])


def batch_from_cases(cases, interleave_padding=False, seed=0, logits=True):
    """Stacked cases; ``logits``: the scores become logits (the batched interface's input) whose sigmoid,
    taken over the whole batch as the assigner takes it, is what per-image references are given."""
    priors = cases[0][0]
    pred = torch.stack([c[1] for c in cases])
    scores = torch.stack([c[2] for c in cases])
    if logits:
        scores = torch.logit(scores.clamp(1e-4, 1 - 1e-4))
    labels, boxes, mask = pad_gts([c[3] for c in cases], [c[4] for c in cases])
    if interleave_padding and boxes.shape[1]:
        perm = torch.randperm(boxes.shape[1], generator=torch.Generator().manual_seed(seed))
        labels, boxes, mask = labels[:, perm], boxes[:, perm], mask[:, perm]
        boxes = torch.where(mask[..., None], boxes, torch.full_like(boxes, 7.0))   # padding rows hold junk
    return priors, pred, scores, labels, boxes, mask


def per_image_gt_inds(batch_gt_inds, mask):
    """Map per-image gt_inds (over the valid GTs in order) into the padded GT axis."""
    valid_pos = torch.nonzero(mask).squeeze(1)
    out = batch_gt_inds.clone()
    pos = out > 0
    out[pos] = valid_pos[out[pos] - 1] + 1
    return out


@pytest.mark.parametrize("block_pairs", [None, 3000])
def test_batched_equals_per_image(block_pairs):
    cases = [make_case(200 + i, num_gts=n, **case_kwargs(200 + i)) for i, n in enumerate([3, 0, 8, 1, 5, 2])]
    cases = [(c[0], c[1], c[2][:, :8], c[3], c[4] % 8) for c in cases]        # one class count for the batch
    assigner = SimOTAAssigner(exact=False, block_pairs=block_pairs)
    for interleave in (False, True):
        priors, pred, logits, labels, boxes, mask = batch_from_cases(cases, interleave, seed=1)
        res = assigner.assign_batch(logits, pred, as_priors(priors), labels, boxes, mask)
        assert isinstance(res, BatchAssignResult) and res.num_gts.tolist() == [3, 0, 8, 1, 5, 2]
        probs = logits.sigmoid()                                               # the assigner's own op
        for i, case in enumerate(cases):
            case = (priors, pred[i], probs[i], boxes[i][mask[i]], labels[i][mask[i]])   # padded order
            single = run(assigner, *case)                                      # exact=False: bit-identical
            assert torch.equal(res.gt_inds[i], per_image_gt_inds(single.gt_inds, mask[i]))
            assert torch.equal(res.labels[i], single.labels)
            assert torch.equal(res.max_overlaps[i], single.max_overlaps)
            exact = run(SimOTAAssigner(), *case)
            if not near_tie_at_decisions(*simota_cost(*case), topk=10):
                assert torch.equal(single.gt_inds, exact.gt_inds)


def test_batched_fp16_scores_and_empty_batch():
    cases = [make_case(400 + i, num_gts=4) for i in range(3)]
    priors, pred, logits, labels, boxes, mask = batch_from_cases(cases)
    res16 = SimOTAAssigner().assign_batch(logits.half(), pred, as_priors(priors), labels, boxes, mask)
    probs16 = logits.half().sigmoid()                                          # the sigmoid in half, as inside
    for i, case in enumerate(cases):
        single = run(SimOTAAssigner(exact=False), case[0], case[1], probs16[i], case[3], case[4])
        assert torch.equal(res16.gt_inds[i], single.gt_inds)
    assert res16.max_overlaps.dtype == torch.float32
    empty = SimOTAAssigner().assign_batch(logits, pred, as_priors(priors), labels[:, :0], boxes[:, :0], mask[:, :0])
    assert empty.gt_inds.abs().sum() == 0 and bool((empty.max_overlaps == 0).all())
    assert bool((empty.labels == -1).all())
    none = SimOTAAssigner().assign_batch(logits[:0], pred[:0], as_priors(priors), labels[:0], boxes[:0], mask[:0])
    assert none.gt_inds.shape == (0, len(priors))


@given(seed=st.integers(0, 10 ** 6), perm_seed=st.integers(0, 10 ** 6))
def test_gt_permutation_equivariance(seed, perm_seed):
    case = make_case(seed, num_gts=5, size=64)
    cost, ious = simota_cost(*case)
    assume(not near_tie_at_decisions(cost, ious, 10))
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(perm_seed))
    assigner = SimOTAAssigner(exact=False)
    base = run(assigner, *case)
    permuted = run(assigner, case[0], case[1], case[2], case[3][perm], case[4][perm])
    # GT j of the permuted call is GT perm[j] of the original.
    mapped = torch.where(permuted.gt_inds > 0, perm[(permuted.gt_inds - 1).clamp(min=0)] + 1, permuted.gt_inds)
    assert torch.equal(mapped, base.gt_inds)
    assert torch.equal(permuted.max_overlaps, base.max_overlaps)


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    priors, pred, scores, gt, labels = make_case(5, num_gts=3)
    a = SimOTAAssigner()
    with pytest.raises(ValueError, match="scores"):
        run(a, priors, pred, torch.where(scores > 0.5, torch.nan, scores), gt, labels)
    with pytest.raises(ValueError, match="probabilities"):
        run(a, priors, pred, scores * 5 - 2, gt, labels)                      # logits passed by mistake
    with pytest.raises(ValueError, match="bboxes"):
        run(a, priors, pred[:, :3], scores, gt, labels)
    with pytest.raises(ValueError, match="labels"):
        run(a, priors, pred, scores, gt, labels + 100)
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        run(a, priors, pred, scores, gt[:, [2, 1, 0, 3]], labels)             # x1 > x2
    with pytest.raises(ValueError, match="priors"):
        a.assign(Instances(bboxes=pred, scores=scores), Instances(bboxes=gt, labels=labels))
    points = as_priors(priors)
    with pytest.raises(ValueError, match="gt_mask"):
        a.assign_batch(scores[None], pred[None], points, labels[None], gt[None], torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="pred_bboxes"):
        a.assign_batch(scores[None], pred[None, :-1], points, labels[None], gt[None])
    with pytest.raises(ValueError, match="pred_scores must be finite"):
        a.assign_batch(torch.full_like(scores, float("inf"))[None], pred[None], points, labels[None], gt[None])
    with pytest.raises(ValueError, match="SimOTAAssigner needs priors.strides"):
        a.assign_batch(scores[None], pred[None], priors[:, :2], labels[None], gt[None])   # bare points
    with pytest.raises(ValueError, match="candidate_mode"):
        SimOTAAssigner(candidate_mode="inside")
    with pytest.raises(ValueError, match="candidate_topk"):
        SimOTAAssigner(candidate_topk=0)
    with pytest.raises(ValueError, match="iou_calculator"):
        SimOTAAssigner(iou_calculator=dict(type="BboxOverlaps2D", scale=0.0))
    with pytest.raises(ValueError, match="SimOTAAssigner has no rotated form"):
        SimOTAAssigner(iou_calculator=dict(type="RBboxOverlaps2D"))
    assert "candidate_mode='box_or_center'" in repr(a) and DK.check_block_pairs(None) is None


@pytest.mark.cuda
def test_cuda_matches_cpu():
    cases = [make_case(500 + i, num_gts=6) for i in range(4)]
    priors, pred, scores, labels, boxes, mask = batch_from_cases(cases)
    cpu = SimOTAAssigner().assign_batch(scores, pred, as_priors(priors), labels, boxes, mask)
    gpu = SimOTAAssigner().assign_batch(scores.cuda(), pred.cuda(), as_priors(priors).to("cuda"), labels.cuda(),
                                        boxes.cuda(), mask.cuda())
    assert gpu.gt_inds.device.type == "cuda"
    for i, case in enumerate(cases):
        if not near_tie_at_decisions(*simota_cost(*case), topk=10):
            assert torch.equal(gpu.gt_inds[i].cpu(), cpu.gt_inds[i])
            torch.testing.assert_close(gpu.max_overlaps[i].cpu(), cpu.max_overlaps[i])


def test_gt_major_iou_is_bit_identical_to_bbox_overlaps():
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(3, 7, 4, generator=g) * 50
    boxes = torch.rand(3, 90, 4, generator=g) * 50
    gt[..., 2:] += gt[..., :2]
    boxes[..., 2:] += boxes[..., :2]
    boxes[0, :5] = gt[0, :5]                                                   # exact matches: IoU 1
    for dtype in (torch.float32, torch.float64, torch.float16):
        ours = DK.batched_ious(SimOTAAssigner().iou_calculator, gt.to(dtype), boxes.to(dtype))
        assert torch.equal(ours, bbox_overlaps(boxes.to(dtype), gt.to(dtype)).transpose(1, 2))
