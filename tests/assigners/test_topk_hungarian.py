"""TopkHungarianAssigner (DDQ-DETR one-to-many): hand-worked case, mmdet 3.3.0 parity, properties."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import build_assigner
from detassign.assigners.topk_hungarian import TopkHungarianAssigner
from tests import oracles
from tests.assigners.test_hungarian import FixedCost

C = 5
META = dict(img_shape=(160, 200))


def rand_boxes(n, gen, size=150.0):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def random_case(seed, N=None, M=None, ties=False):
    gen = torch.Generator().manual_seed(seed)
    N = int(torch.randint(0, 30, (1,), generator=gen)) if N is None else N
    M = int(torch.randint(0, 8, (1,), generator=gen)) if M is None else M
    scores = torch.rand(N, C, generator=gen)
    gt_bboxes = rand_boxes(M, gen)
    boxes = rand_boxes(N, gen)
    if M and N >= M:  # some queries near GTs so IoUs are not all 0
        boxes[:M] = gt_bboxes + torch.randn(M, 4, generator=gen)
    labels = torch.randint(0, C, (M,), generator=gen)
    if ties and N >= 2:
        scores[1], boxes[1] = scores[0], boxes[0]
    return scores, boxes, gt_bboxes, labels


def test_one_to_many_by_hand():
    #       g0  g1
    # q0    0   1
    # q1    0   2
    # q2    0   3
    # q3    5   0
    # topk=2, N // M = 2 -> k = 2: g1 takes its two cheapest distinct queries jointly with g0:
    # g1 {q3, q0} = 0 + 1 = 1 and g0 {q1, q2} = 0 (total 1); g1 {q3, q1} would cost 2.
    reg = FixedCost([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [5.0, 0.0]])
    zero = FixedCost(torch.zeros(4, 2))
    assigner = TopkHungarianAssigner(topk=2, cls_cost=zero, reg_cost=reg, iou_cost=zero)
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 20]])
    gt = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20]])
    scores = torch.full((4, C), 0.5)
    r = assigner.assign(scores, boxes, gt, torch.tensor([1, 4]), META)
    assert r.gt_inds.tolist() == [2, 1, 1, 2]
    assert r.labels.tolist() == [4, 1, 1, 4]
    # per positive in query order: IoU(q0, g1) = 100/200, IoU(q1, g0) = 1, IoU(q2, g0) = 0, IoU(q3, g1) = 1
    assert r.max_overlaps.tolist() == pytest.approx([0.5, 1.0, 0.0, 1.0])
    # metric = score ** 1 * IoU ** 6 = 0.5 * [0.5^6, 1, 0, 1]
    assert r.assign_metrics.tolist() == pytest.approx([0.5 * 0.5 ** 6, 0.5, 0.0, 0.5])
    dense = TopkHungarianAssigner(topk=2, cls_cost=zero, reg_cost=reg, iou_cost=zero, dense_outputs=True)
    rd = dense.assign(scores, boxes, gt, torch.tensor([1, 4]), META)
    assert rd.max_overlaps.shape == (4,) and rd.assign_metrics.shape == (4,)


def test_edge_cases():
    assigner = TopkHungarianAssigner(topk=3)
    scores, boxes, gt, labels = random_case(0, N=6, M=0)
    r = assigner.assign(scores, boxes, gt, labels, META)
    assert r.gt_inds.tolist() == [0] * 6 and r.max_overlaps is None and r.num_gts == 0
    scores, boxes, gt, labels = random_case(0, N=2, M=3)  # N < M: k = 0, no positives (mmdet)
    r = assigner.assign(scores, boxes, gt, labels, META)
    assert r.gt_inds.tolist() == [0, 0] and r.labels.tolist() == [-1, -1] and r.max_overlaps.shape == (0,)
    scores, boxes, gt, labels = random_case(0, N=0, M=2)  # no queries: empty result (mmdet's view() raises)
    r = assigner.assign(scores, boxes, gt, labels, META)
    assert r.gt_inds.shape == (0,) and r.num_gts == 2
    with pytest.raises(ValueError, match="topk"):
        TopkHungarianAssigner(topk=0)
    with pytest.raises(ValueError, match="iou_calculator"):
        TopkHungarianAssigner(topk=2, iou_calculator=dict(type="BboxOverlaps2D", mode="iof"))
    with pytest.raises(ValueError, match="decode_bboxes"):
        assigner.assign(torch.rand(4, C), torch.rand(3, 4), gt, labels, META)


def test_nan_error_names_cost():
    scores, boxes, gt, labels = random_case(2, N=8, M=2)
    scores[3, :] = float("nan")
    with pytest.raises(ValueError, match="cls_cost FocalLossCost produced 2 NaN values for image 'x.png'"):
        TopkHungarianAssigner(topk=2).assign(scores, boxes, gt, labels, dict(img_shape=(160, 200), img_path="x.png"))


@pytest.mark.oracle
@pytest.mark.parametrize("topk", [1, 4, 8])
def test_matches_mmdet(topk):
    mm = oracles.mmdet()
    cfg = dict(type="TopkHungarianAssigner", topk=topk)
    ours, ref = build_assigner(cfg), mm.task_utils.build(cfg)
    for seed in range(30):  # N in [0, 29], M in [0, 7]: includes M=0, N<M (k=0), ties
        scores, boxes, gt, labels = random_case(seed, ties=seed % 4 == 0)
        alpha, beta = (1, 6) if seed % 2 else (0.5, 4)
        got = ours.assign(scores, boxes, gt, labels, META, alpha=alpha, beta=beta)
        want = ref.assign(scores, boxes, gt, labels, META, alpha=alpha, beta=beta)
        assert torch.equal(got.gt_inds, want.gt_inds), seed
        if want.labels is not None:
            assert torch.equal(got.labels, want.labels)
        else:  # mmdet returns None when k = 0; ours keeps -1 labels
            assert (got.labels == -1).all()
        if want.max_overlaps is None:
            assert got.max_overlaps is None
        else:
            torch.testing.assert_close(got.max_overlaps, want.max_overlaps, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(got.assign_metrics, want.assign_metrics, atol=1e-6, rtol=1e-6)


@pytest.mark.oracle
def test_matches_mmdet_half_and_other_costs():
    mm = oracles.mmdet()
    cfg = dict(type="TopkHungarianAssigner", topk=3, cls_cost=dict(type="ClassificationCost", weight=1.0),
               reg_cost=dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
               iou_cost=dict(type="IoUCost", iou_mode="iou", weight=2.0))
    ours, ref = build_assigner(cfg), mm.task_utils.build(cfg)
    for seed in range(10):
        scores, boxes, gt, labels = random_case(seed, N=20, M=4)
        half = (scores.half(), boxes.half())
        got = ours.assign(*half, gt, labels, META)
        want = ref.assign(half[0].float(), half[1].float(), gt, labels, META)
        assert torch.equal(got.gt_inds, want.gt_inds)
        torch.testing.assert_close(got.assign_metrics, want.assign_metrics, atol=1e-6, rtol=1e-6)


@given(N=st.integers(0, 24), M=st.integers(1, 6), topk=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_each_gt_gets_exactly_k_distinct_queries(N, M, topk, seed):
    scores, boxes, gt, labels = random_case(seed, N=N, M=M)
    r = TopkHungarianAssigner(topk=topk, dense_outputs=True).assign(scores, boxes, gt, labels, META)
    k = min(topk, N // M)
    counts = torch.bincount(r.gt_inds, minlength=M + 1)[1:]
    assert counts.tolist() == [k] * M  # one GT per query by construction (gt_inds is [N])
    pos = r.gt_inds > 0
    assert torch.equal(r.labels[pos], labels[r.gt_inds[pos] - 1]) and (r.labels[~pos] == -1).all()
    assert (r.max_overlaps[~pos] == 0).all()


@given(N=st.integers(4, 20), M=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_gt_permutation_equivariance(N, M, seed):
    scores, boxes, gt, labels = random_case(seed, N=N, M=M)
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(seed))
    assigner = TopkHungarianAssigner(topk=2)
    base = assigner.assign(scores, boxes, gt, labels, META)
    permuted = assigner.assign(scores, boxes, gt[perm], labels[perm], META)
    back = torch.where(permuted.gt_inds > 0, perm[(permuted.gt_inds - 1).clamp(min=0)] + 1, permuted.gt_inds)
    # a GT's k copies are interchangeable, so the query sets per GT are what must agree
    assert torch.equal(back, base.gt_inds)
