"""One batched solver for the Hungarian family: the pluggable linear-assignment back end, repeated GTs,
query groups, several decoder layers per call, OneToManyHungarianAssigner, and DETA / MS-DETR's Stage2
assigner. Oracles: scipy per block, mmdet 3.3.0's HungarianAssigner, the project's mmdet-verified
TopkHungarian assignment, and a loop implementation of Stage2 written from the papers' code."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detassign import build_assigner
from detassign.assigners import lsa_solvers as L
from detassign.assigners.hungarian import HungarianAssigner
from detassign.assigners.one_to_many import OneToManyHungarianAssigner, match_blocks, repeat_gt_columns
from detassign.assigners.stage2 import Stage2Assigner
from detassign.assigners.topk_hungarian import topk_linear_assignment
from detassign.boxes import pairwise_iou
from detassign.structures import Instances
from tests import oracles

DINO_COSTS = [dict(type="FocalLossCost", weight=2.0), dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
              dict(type="IoUCost", iou_mode="giou", weight=2.0)]


def scipy_gt_inds(block, valid_cols, source):
    """Loop reference: scipy on one [q, kM] block's valid columns -> 1-based GT index per query."""
    out = torch.zeros(block.shape[0], dtype=torch.long)
    cols = torch.nonzero(valid_cols).squeeze(1)
    if len(cols) and block.shape[0]:
        r, c = linear_sum_assignment(block[:, cols].numpy())
        out[torch.from_numpy(r)] = source[cols[torch.from_numpy(c)]] + 1
    return out


# ----------------------------------------------------------------------------- solvers
def test_solve_batched_equals_scipy_per_block():
    g = torch.Generator().manual_seed(0)
    blocks = [torch.rand(q, m, generator=g) for q, m in ((7, 3), (3, 7), (5, 5), (0, 4), (4, 0), (1, 1))]
    out = L.solve_batched(blocks, solver="scipy")
    for block, (rows, cols) in zip(blocks, out):
        r, c = linear_sum_assignment(block.numpy()) if block.numel() else (np.zeros(0), np.zeros(0))
        assert rows.tolist() == list(r) and cols.tolist() == list(c)
        assert rows.dtype == torch.long and len(rows) == min(block.shape)
    # the same blocks padded, with their sizes as [N, 2]; and [N] columns when every row is valid
    padded = torch.full((6, 7, 7), 99.0)
    for i, b in enumerate(blocks):
        padded[i, :b.shape[0], :b.shape[1]] = b
    sizes = torch.tensor([b.shape for b in blocks])
    for a, b in zip(L.solve_batched(padded, sizes), out):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    full = L.solve_batched(padded[:3, :, :5], torch.tensor([3, 5, 2]))
    for i, m in enumerate((3, 5, 2)):
        r, c = linear_sum_assignment(padded[i, :, :m].numpy())
        assert full[i][0].tolist() == list(r) and full[i][1].tolist() == list(c)


def test_solve_batched_by_hand_and_maximize():
    # rows 0, 1, 2; columns 0, 1: the cheapest one-to-one matching is (1 -> 0, 0 -> 1): 1 + 2 = 3 beats 2 + 4
    cost = torch.tensor([[4.0, 2.0], [1.0, 5.0], [3.0, 3.0]])
    (rows, cols), = L.solve_batched([cost])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert L.matching_cost(cost, (rows, cols)).item() == 3.0
    (rows, cols), = L.solve_batched([cost], maximize=True)                     # 5 + 4 = 9
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1]
    assert L.solve_batched([]) == []


class FakeTLA:
    """Stands in for torch-linear-assignment (a CUDA kernel; not installable here): solves each padded
    block with scipy, returning its column per row (-1 unmatched) as ``batch_linear_assignment`` does."""

    calls = 0

    @classmethod
    def batch_linear_assignment(cls, cost):
        cls.calls += 1
        out = torch.full(cost.shape[:2], -1, dtype=torch.long)
        for i, block in enumerate(cost):
            r, c = linear_sum_assignment(block.numpy())
            out[i, torch.from_numpy(r)] = torch.from_numpy(c)
        return out


def test_gpu_solver_padding_gives_scipy_matchings(monkeypatch):
    # the padded-column rule (0 when rows outnumber columns, max + 1 otherwise) must not change the optimum
    monkeypatch.setattr(L, "_tla", lambda: FakeTLA)
    g = torch.Generator().manual_seed(1)
    shapes = [(6, 2), (6, 6), (6, 9), (6, 0), (3, 5), (3, 1), (9, 4)]
    blocks = [torch.randn(q, m, generator=g) * 3 for q, m in shapes]
    FakeTLA.calls = 0
    ours = L.solve_batched(blocks, solver="torch_linear_assignment")
    assert FakeTLA.calls == 3                                                   # one call per row count
    for block, got, ref in zip(blocks, ours, L.solve_batched(blocks, solver="scipy")):
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # with ties (integer costs) the matchings may differ but their total cost may not
    ties = [torch.randint(0, 3, (q, m), generator=g).float() for q, m in shapes]
    for block, got, ref in zip(ties, L.solve_batched(ties, solver="torch_linear_assignment"),
                               L.solve_batched(ties, solver="scipy")):
        assert len(got[0]) == len(ref[0]) == min(block.shape)
        assert L.matching_cost(block, got) == L.matching_cost(block, ref)


def test_gpu_solver_absent():
    assert L.torch_linear_assignment_available() == ("torch_linear_assignment" in L.available_solvers())
    if L.torch_linear_assignment_available():
        pytest.skip("torch-linear-assignment is installed: the absent-package message cannot be checked")
    with pytest.raises(ImportError, match="pip install torch-linear-assignment"):
        L.solve_batched([torch.rand(3, 2)], solver="torch_linear_assignment")
    # "auto" falls back to scipy (CPU costs, or no package)
    cost = torch.rand(4, 3)
    auto, = L.solve_batched([cost], solver="auto")
    ref, = L.solve_batched([cost], solver="scipy")
    assert torch.equal(auto[0], ref[0]) and torch.equal(auto[1], ref[1])


@pytest.mark.cuda
def test_torch_linear_assignment_on_cuda_equals_scipy():
    if not L.torch_linear_assignment_available():
        pytest.skip("torch-linear-assignment is not installed (it builds only against a CUDA toolkit)")
    g = torch.Generator().manual_seed(2)
    blocks = [torch.rand(300, m, generator=g) for m in (5, 40, 100, 0)]
    gpu = L.solve_batched([b.cuda() for b in blocks], solver="torch_linear_assignment")
    for block, got, ref in zip(blocks, gpu, L.solve_batched(blocks, solver="scipy")):
        assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: L.solve_batched([torch.rand(2, 2)], solver="lapjv"), ValueError, "solver must be one of"),
    (lambda: L.solve_batched([torch.tensor([[1.0, float("nan")]])]), ValueError, r"cost block 0 \(1 x 2\) holds 1 NaN"),
    (lambda: L.solve_batched(torch.rand(2, 3, 3), torch.tensor([1, 2, 3])), ValueError, "sizes must be"),
    (lambda: L.solve_batched(torch.rand(2, 3, 3), torch.tensor([4, 2])), ValueError, "within the padded block"),
    (lambda: L.solve_batched([torch.rand(2, 2)], sizes=[2]), ValueError, "sizes is only for a padded"),
    (lambda: L.solve_batched(torch.rand(3, 3)), ValueError, r"padded \[N, Q, M\] tensor"),
])
def test_solver_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- repeated GTs, groups, layers
def test_repeated_gts_by_hand():
    # 3 queries, 2 GTs. One-to-one: q2 -> g0 (0.5) and q1 -> g1 (1) = 1.5, q0 unmatched.
    # Two copies of each GT (tile: columns g0 g1 g0 g1): three queries fill three of the four columns,
    # q0 -> g0 (1), q1 -> g1 (1), q2 -> g0 (0.5) = 2.5
    cost = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.5, 3.0]])
    assert match_blocks(cost).tolist() == [0, 2, 1]
    assert match_blocks(cost, repeat=2).tolist() == [1, 2, 1]
    assert match_blocks(cost, repeat=2, layout="interleave").tolist() == [1, 2, 1]
    rep, mask, source = repeat_gt_columns(cost, torch.ones(2, dtype=torch.bool), 2, "tile")
    assert rep.shape == (3, 4) and source.tolist() == [0, 1, 0, 1] and mask.all()
    assert repeat_gt_columns(cost, torch.ones(2, dtype=torch.bool), 2, "interleave")[2].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("layout", ["tile", "interleave"])
def test_repeated_gts_equal_scipy_on_the_repeated_matrix(layout):
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(4, 30, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    k = 6                                                                        # 36 > 30 columns in image 0
    ours = match_blocks(cost, mask, repeat=k, layout=layout)
    for b in range(4):
        rep, rmask, source = repeat_gt_columns(cost[b], mask[b], k, layout)
        assert torch.equal(ours[b], scipy_gt_inds(rep, rmask, source))
        counts = torch.bincount(ours[b], minlength=7)[1:]
        assert int(counts.max()) <= k and bool((counts[~mask[b]] == 0).all())
        assert int((ours[b] > 0).sum()) == min(30, k * int(mask[b].sum()))


def test_interleaved_repeat_is_the_topk_hungarian_assignment():
    # mmdet's TopkHungarianAssigner repeats GT columns interleaved; the project's version is mmdet-exact
    g = torch.Generator().manual_seed(4)
    cost = torch.rand(40, 5, generator=g)
    rows, gts = topk_linear_assignment(cost, 4)
    expected = torch.zeros(40, dtype=torch.long)
    expected[rows] = gts + 1
    assert torch.equal(match_blocks(cost, repeat=4, layout="interleave"), expected)


def test_query_groups_equal_a_loop_over_groups():
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(2, 3 * 12, 5, generator=g)
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]]).bool()
    ours = match_blocks(cost, mask, groups=3)
    for b in range(2):
        for grp in range(3):
            block = cost[b, grp * 12:(grp + 1) * 12]
            ref = scipy_gt_inds(block, mask[b], torch.arange(5))
            assert torch.equal(ours[b, grp * 12:(grp + 1) * 12], ref)
        # every valid GT once per group
        assert torch.bincount(ours[b], minlength=6)[1:][mask[b]].tolist() == [3] * int(mask[b].sum())
    both = match_blocks(cost, mask, groups=3, repeat=2)
    assert torch.bincount(both[1], minlength=6)[1:].tolist() == [6] * 5


def test_several_decoder_layers_in_one_call(monkeypatch):
    g = torch.Generator().manual_seed(6)
    Lyr, B, Q, M = 6, 4, 20, 7
    cost = torch.rand(Lyr, B, Q, M, generator=g)
    mask = torch.rand(B, M, generator=g) > 0.3
    calls = []
    real = L.solve_batched
    monkeypatch.setattr("detassign.assigners.one_to_many.solve_batched",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ours = match_blocks(cost, mask)
    assert len(calls) == 1 and ours.shape == (Lyr, B, Q)
    for layer in range(Lyr):
        for b in range(B):
            assert torch.equal(ours[layer, b], scipy_gt_inds(cost[layer, b], mask[b], torch.arange(M)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(groups=7), "groups=7 must divide"),
    (dict(repeat=0), "repeat must be >= 1"),
    (dict(layout="blocks"), "layout must be one of"),
    (dict(gt_mask=torch.ones(3, dtype=torch.bool)), "gt_mask must end in M=4"),
    (dict(gt_mask=torch.ones(5, 4, dtype=torch.bool)), "does not broadcast"),
])
def test_match_blocks_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        match_blocks(torch.rand(2, 12, 4), **kwargs)


# ----------------------------------------------------------------------------- the assigner
def detr_batch(seed, L_=None, B=3, Q=30, M=6, C=7):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if L_ is None else (L_, B)
    logits = torch.randn(*lead, Q, C, generator=g)
    boxes = torch.cat((torch.rand(*lead, Q, 2, generator=g) * 0.8 + 0.1, torch.rand(*lead, Q, 2, generator=g) * 0.3
                       + 0.05), -1)
    centre = torch.rand(B, M, 2, generator=g) * 500 + 50
    side = torch.rand(B, M, 2, generator=g) * 150 + 10
    gt = torch.cat((centre - side / 2, centre + side / 2), -1)
    labels = torch.randint(0, C, (B, M), generator=g)
    mask = torch.arange(M)[None] < torch.tensor([M, M - 2, 1])[:, None]
    return logits, boxes, labels, gt, mask


def test_non_finite_costs_name_the_image_layer_term_and_input():
    logits, boxes, labels, gt, mask = detr_batch(5, L_=3)
    logits[2, 1, 4] = float("nan")             # layer 2, image 1, query 4: NaN focal costs for its 4 valid GTs
    assigner = OneToManyHungarianAssigner(DINO_COSTS, repeat=2)
    with pytest.raises(ValueError, match=r"FocalLossCost produced 4 NaN values for image 1 of layer 2; .*"
                                         r"non-finite inputs: pred_scores \(7 NaN values\)"):
        assigner.assign_batch(logits, boxes, labels, gt, mask, [(600, 640)] * 3)
    one = logits[0].clone()
    one[0, 0, :] = float("inf")
    with pytest.raises(ValueError, match="pred_scores must be finite, got 7 Inf"):
        assigner.assign_batch(one, boxes[0], labels, gt, mask, [(600, 640)] * 3)


def test_resolve_solver():
    assert L.resolve_solver("auto", "cpu") == "scipy"
    assert L.resolve_solver("scipy", torch.device("cpu")) == "scipy"
    with pytest.raises(ValueError, match="solver must be one of"):
        L.resolve_solver("lapx", "cpu")


def test_one_to_one_equals_hungarian_assigner_and_mmdet():
    logits, boxes, labels, gt, mask = detr_batch(0)
    shapes = [(600, 640)] * 3
    ours = OneToManyHungarianAssigner(DINO_COSTS).assign_batch(logits, boxes, labels, gt, mask, shapes)
    scale = torch.tensor([640.0, 600.0, 640.0, 600.0])
    xyxy = torch.cat((boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2), -1) * scale
    # HungarianAssigner's batched interface takes xyxy px boxes
    ref = HungarianAssigner(DINO_COSTS).assign_batch(logits, xyxy, None, labels, gt, mask, img_shapes=shapes)
    assert torch.equal(ours.gt_inds, ref.gt_inds) and torch.equal(ours.labels, ref.labels)
    torch.testing.assert_close(ours.match_cost, ref.match_cost)
    mm = oracles.mmdet()
    mm_assigner = mm.task_utils.build(dict(type="HungarianAssigner", match_costs=DINO_COSTS))
    for b in range(3):
        keep = mask[b]
        res = mm_assigner.assign(mm.InstanceData(scores=logits[b], bboxes=xyxy[b]),
                                 mm.InstanceData(bboxes=gt[b][keep], labels=labels[b][keep]),
                                 img_meta=dict(img_shape=(600, 640)))
        assert torch.equal(ours[b].gt_inds, res.gt_inds)
        one = OneToManyHungarianAssigner(DINO_COSTS).assign(
            Instances(scores=logits[b], bboxes=xyxy[b]), Instances(bboxes=gt[b][keep], labels=labels[b][keep]),
            img_meta=dict(img_shape=(600, 640)))
        assert torch.equal(one.gt_inds, res.gt_inds)


def test_layers_repeat_and_groups_through_the_assigner():
    logits, boxes, labels, gt, mask = detr_batch(1, L_=4, Q=36)
    assigner = OneToManyHungarianAssigner(DINO_COSTS, repeat=3, groups=2)
    results = assigner.assign_batch(logits, boxes, labels, gt, mask, (600, 640))
    assert isinstance(results, list) and len(results) == 4
    for layer in range(4):
        alone = assigner.assign_batch(logits[layer], boxes[layer], labels, gt, mask, (600, 640))
        assert torch.equal(results[layer].gt_inds, alone.gt_inds)
        assert torch.equal(results[layer].labels, alone.labels)
        counts = torch.bincount(alone.gt_inds[0], minlength=7)[1:]
        assert counts.tolist() == [6] * 6                                       # 3 copies x 2 groups, 18 <= 18
    built = build_assigner(dict(type="OneToManyHungarianAssigner", match_costs=DINO_COSTS, repeat=6))
    assert built.repeat == 6


# ----------------------------------------------------------------------------- Stage2
def stage2_reference(logits, boxes, labels, gt_boxes, threshold=0.4, k=6, wi=0.7, ws=0.3, frac=0.25, num=None):
    """MS-DETR's Stage2 steps on one image with loops (global RNG, its randperm order)."""
    Q, M = logits.shape[0], labels.shape[0]
    if M == 0:
        return [], []
    quality = (wi * pairwise_iou(boxes, gt_boxes) + ws * logits.sigmoid()[:, labels]).T       # [M, Q]
    values, matches = quality.max(0)
    positive = values >= threshold
    for m in range(M):
        positive[quality[m].argmax()] = True
    pos, neg = torch.nonzero(positive).squeeze(1), torch.nonzero(~positive).squeeze(1)
    cap = min(len(pos), int((Q if num is None else num) * frac))
    sampled = pos[torch.randperm(len(pos))[:cap]]
    torch.randperm(len(neg))
    gts = matches[sampled]
    pairs = []
    for m in sorted(set(gts.tolist())):
        count = int((gts == m).sum())
        best = sorted(range(Q), key=lambda i: (-quality[m, i].item(), i))[:min(count, k)]
        pairs += [(i, m, quality[m, i].item()) for i in best]
    pairs.sort(key=lambda p: p[2])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_stage2_by_hand():
    # quality = IoU (DETA's weights 1 / 0): GT0 [0,0,10,10], GT1 [20,0,30,10]; queries q0 = GT0 (1.0), q1 half of
    # GT0 (0.5), q2 0.3 of GT0, q3 0.3 of GT1, q4 far away (0), q5 0.2 of GT1.
    # threshold 0.4: q0, q1 positive for GT0; low quality: GT1's best query q3 too. Sample of 12: cap 3, all
    # kept. GT0 has 2 positives -> its 2 best queries q0, q1; GT1 has 1 -> q3. Ascending quality: q3, q1, q0.
    gt = torch.tensor([[[0.0, 0, 10, 10], [20, 0, 30, 10]]])
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 3], [20, 0, 30, 3], [50, 50, 60, 60],
                           [20, 0, 30, 2]]])
    logits = torch.zeros(1, 6, 2)
    assigner = Stage2Assigner(iou_weight=1.0, score_weight=0.0, num_samples=12)
    out = assigner.assign_batch(logits, boxes, torch.tensor([[0, 1]]), gt)
    (queries, gts), = out.indices
    assert queries.tolist() == [3, 1, 0] and gts.tolist() == [1, 0, 0]
    assert out.gt_inds.tolist() == [[1, 1, 0, 2, 0, 0]] and out.num_sampled.tolist() == [3]
    assert out.labels.tolist() == [[0, 0, -1, 1, -1, -1]]                      # GT0 is class 0, GT1 class 1
    (queries, _), = Stage2Assigner(iou_weight=1.0, score_weight=0.0, num_samples=12, topk=1).assign_batch(
        logits, boxes, torch.tensor([[0, 1]]), gt).indices
    assert queries.tolist() == [3, 0]
    no_low = Stage2Assigner(iou_weight=1.0, score_weight=0.0, num_samples=12, low_quality=False)
    assert no_low.assign_batch(logits, boxes, torch.tensor([[0, 1]]), gt).indices[0][0].tolist() == [1, 0]


def test_stage2_equals_the_loop_reference_and_its_random_stream():
    g = torch.Generator().manual_seed(7)
    B, Q, M, C = 3, 60, 8, 5
    logits = torch.randn(B, Q, C, generator=g)
    centre = torch.rand(B, Q, 2, generator=g) * 80 + 10
    side = torch.rand(B, Q, 2, generator=g) * 30 + 10
    boxes = torch.cat((centre - side / 2, centre + side / 2), -1)
    gt = boxes[:, :M].clone() + torch.randn(B, M, 4, generator=g)             # many queries near some GT
    gt = torch.cat((gt[..., :2], torch.maximum(gt[..., 2:], gt[..., :2] + 1)), -1)
    labels = torch.randint(0, C, (B, M), generator=g)
    mask = torch.arange(M)[None] < torch.tensor([M, 3, 0])[:, None]
    assigner = Stage2Assigner(threshold=0.3)
    torch.manual_seed(123)
    ours = assigner.assign_batch(logits, boxes, labels, gt, mask)
    torch.manual_seed(123)
    for b in range(B):
        keep = mask[b]
        q, m = stage2_reference(logits[b], boxes[b], labels[b][keep], gt[b][keep], threshold=0.3)
        assert ours.indices[b][0].tolist() == q and ours.indices[b][1].tolist() == m
    assert int(ours.num_sampled[0]) == int(Q * 0.25)                          # more positives than the cap
    assert ours.indices[2][0].numel() == 0 and not ours.gt_inds[2].any()
    # a seeded generator makes the subsample reproducible and independent of the global stream
    a = assigner.assign_batch(logits, boxes, labels, gt, mask, generator=torch.Generator().manual_seed(5))
    b = assigner.assign_batch(logits, boxes, labels, gt, mask, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a.indices, b.indices))
    # per GT at most topk queries; gt_inds holds each query's highest-quality pair
    for b_ in range(B):
        q, m = a.indices[b_]
        if m.numel():
            assert int(torch.bincount(m).max()) <= 6
        for query in set(q.tolist()):
            best = max((a.quality[b_, g_, query].item(), g_) for g_ in m[q == query].tolist())
            assert a.gt_inds[b_, query].item() == best[1] + 1


def test_stage2_edges_and_bad_input():
    assigner = Stage2Assigner()
    out = assigner.assign_batch(torch.randn(2, 5, 3), torch.rand(2, 5, 4).sort(-1).values[..., [0, 1, 2, 3]],
                                torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4))
    assert [len(q) for q, _ in out.indices] == [0, 0] and not out.gt_inds.any()
    with pytest.raises(ValueError, match="topk must be"):
        Stage2Assigner(topk=0)
    with pytest.raises(ValueError, match="positive_fraction"):
        Stage2Assigner(positive_fraction=1.5)
    with pytest.raises(ValueError, match=r"gt_bboxes must have shape \[B, M, 4\]"):
        assigner.assign_batch(torch.randn(2, 5, 3), torch.rand(2, 5, 4), torch.zeros(2, 1, dtype=torch.long),
                              torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="gt_bboxes has B=3"):
        assigner.assign_batch(torch.randn(2, 5, 3), torch.rand(2, 5, 4), torch.zeros(3, 1, dtype=torch.long),
                              torch.zeros(3, 1, 4))
    assert isinstance(build_assigner(dict(type="Stage2Assigner", topk=4, threshold=0.6)), Stage2Assigner)
    # per image, an empty tensor of any dtype or rank is an image without GT (mmdet's convention)
    pred = Instances(scores=torch.randn(5, 3), bboxes=torch.tensor([[0, 0, 4, 4.0]]).repeat(5, 1))
    for empty in (torch.empty(0), torch.LongTensor([]), torch.empty(0, 4).long()):
        out = assigner.assign(pred, Instances(bboxes=empty, labels=empty))
        assert out.num_gts == 0 and out.gt_inds.tolist() == [0] * 5 and out.labels.tolist() == [-1] * 5
        assert out.pairs_query.numel() == 0 and out.quality.shape == (0, 5)


def test_stage2_per_image_result_is_mmdets_with_the_pairs_as_extras():
    # the hand-worked image of test_stage2_by_hand, through the mmdet-style per-image call
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 3], [20, 0, 30, 3], [50, 50, 60, 60],
                          [20, 0, 30, 2]])
    res = Stage2Assigner(iou_weight=1.0, score_weight=0.0, num_samples=12).assign(
        Instances(scores=torch.zeros(6, 2), bboxes=boxes), Instances(bboxes=gt, labels=torch.tensor([0, 1])))
    assert res.num_gts == 2 and res.gt_inds.tolist() == [1, 1, 0, 2, 0, 0] and res.labels.tolist() == [0, 0, -1, 1,
                                                                                                          -1, -1]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([1.0, 0.5, 0, 0.3, 0, 0]))   # the pair's IoU
    assert res.pairs_query.tolist() == [3, 1, 0] and res.pairs_gt.tolist() == [1, 0, 0] and int(res.num_sampled) == 3
    # built from an mmdet config in the 'detassign' scope, a head gets mmdet's AssignResult with the same extras
    mm = oracles.mmdet()
    import detassign.integrations.mmdet  # noqa: F401  (registers the scope)

    facing = mm.task_utils.build(dict(type="detassign.Stage2Assigner", iou_weight=1.0, score_weight=0.0,
                                      num_samples=12))
    out = facing.assign(mm.InstanceData(scores=torch.zeros(6, 2), bboxes=boxes),
                        mm.InstanceData(bboxes=gt, labels=torch.tensor([0, 1])))
    assert isinstance(out, mm.assigners.AssignResult)
    assert torch.equal(out.gt_inds, res.gt_inds) and torch.equal(out.get_extra_property("pairs_query"), res.pairs_query)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(threshold=float("nan")), ValueError, "threshold"), (dict(topk=2.0), TypeError, "topk"),
    (dict(iou_weight="0.7"), TypeError, "iou_weight"), (dict(score_weight=-1), ValueError, "score_weight"),
    (dict(num_samples=-1), ValueError, "num_samples"), (dict(low_quality="yes"), TypeError, "low_quality")])
def test_stage2_hyper_parameters_checked_when_built(kwargs, error, name):
    with pytest.raises(error, match=name):
        Stage2Assigner(**kwargs)
