"""HungarianAssigner: hand-worked matching, mmdet 3.3.0 parity, one-to-one / equivariance / batched
properties, NaN errors."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, Priors, build_assigner
from detassign.assigners._batch import pad_gts
from detassign.assigners.hungarian import HungarianAssigner
from detassign.assigners.match_costs import BaseMatchCost, BBoxL1Cost, ClassificationCost
from detassign.boxes import cxcywh_to_xyxy
from tests import oracles

DETR = [dict(type="ClassificationCost", weight=1.0), dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
        dict(type="IoUCost", iou_mode="giou", weight=2.0)]
DEFORMABLE = [dict(type="FocalLossCost", weight=2.0), dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
              dict(type="IoUCost", iou_mode="giou", weight=2.0)]
VARIANT = [dict(type="FocalLossCost", weight=1.0, alpha=0.4), dict(type="BBoxL1Cost", weight=3.0),
           dict(type="IoUCost", iou_mode="iou", weight=1.0)]
PRESETS = {"detr": DETR, "deformable": DEFORMABLE, "variant": VARIANT}
C = 6


class FixedCost(BaseMatchCost):
    """A cost that returns the given [Q, M] matrix (for hand-worked cases and properties)."""

    def __init__(self, matrix, weight=1.0):
        super().__init__(weight)
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32)

    def compute(self, pred_instances, gt_instances, img_shapes=None):
        return self.matrix[None] if self.matrix.dim() == 2 else self.matrix


def rand_boxes(n, gen, size=200.0):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def random_image(seed, Q=None, M=None, dtype=torch.float32, ties=False):
    gen = torch.Generator().manual_seed(seed)
    Q = int(torch.randint(0, 12, (1,), generator=gen)) if Q is None else Q
    M = int(torch.randint(0, 9, (1,), generator=gen)) if M is None else M
    scores = torch.randn(Q, C, generator=gen) * 2
    bboxes = rand_boxes(Q, gen)
    labels = torch.randint(0, C, (M,), generator=gen)
    gt_bboxes = rand_boxes(M, gen)
    if ties and Q >= 2 and M >= 2:
        scores[1], bboxes[1] = scores[0], bboxes[0]  # two identical queries
        labels[1], gt_bboxes[1] = labels[0], gt_bboxes[0]  # two identical GTs
    return scores.to(dtype), bboxes.to(dtype), labels, gt_bboxes


# ------------------------------------------------------------------------------------ hand-worked
def test_three_by_two_by_hand():
    #        g0   g1
    # q0    1.0  1.1
    # q1    1.2  5.0
    # q2    4.0  3.0
    # Pairs: q0g0+q1g1 = 6.0, q0g0+q2g1 = 4.0, q1g0+q0g1 = 2.3, q1g0+q2g1 = 8.2, q2g0+q0g1 = 5.1,
    # q2g0+q1g1 = 9.0 -> optimum q1->g0, q0->g1 (2.3); greedy (cheapest pair q0g0 first) would give 4.0.
    cost = FixedCost([[1.0, 1.1], [1.2, 5.0], [4.0, 3.0]])
    result = HungarianAssigner(cost).assign(Instances(scores=torch.zeros(3, 2)),
                                            Instances(labels=torch.tensor([1, 0])))
    assert result.gt_inds.tolist() == [2, 1, 0]
    assert result.labels.tolist() == [0, 1, -1]
    assert result.max_overlaps is None
    assert torch.allclose(result.match_cost, torch.tensor([1.1, 1.2, float("inf")]))


def test_more_gts_than_queries_by_hand():
    # Q=2 < M=3: every query is matched; q0 -> g2 (0.1), q1 -> g0 (0.2); g1 stays unmatched.
    cost = FixedCost([[0.5, 0.9, 0.1], [0.2, 0.3, 0.4]])
    result = HungarianAssigner([cost]).assign(Instances(scores=torch.zeros(2, 2)),
                                              Instances(labels=torch.tensor([0, 1, 1])))
    assert result.gt_inds.tolist() == [3, 1]
    assert result.num_gts == 3


def test_empty_cases():
    assigner = HungarianAssigner(DETR)
    scores, bboxes, labels, gt_bboxes = random_image(0, Q=5, M=0)
    r = assigner.assign(Instances(scores=scores, bboxes=bboxes), Instances(labels=labels, bboxes=gt_bboxes),
                        dict(img_shape=(300, 300)))
    assert r.gt_inds.tolist() == [0] * 5 and r.labels.tolist() == [-1] * 5 and r.num_gts == 0
    scores, bboxes, labels, gt_bboxes = random_image(0, Q=0, M=3)
    r = assigner.assign(Instances(scores=scores, bboxes=bboxes), Instances(labels=labels, bboxes=gt_bboxes),
                        dict(img_shape=(300, 300)))
    assert r.gt_inds.shape == (0,) and r.num_gts == 3


def test_accepts_objects_dicts_and_single():
    assert len(HungarianAssigner(dict(type="IoUCost")).match_costs) == 1
    mixed = HungarianAssigner([ClassificationCost(2.0), dict(type="BBoxL1Cost", weight=5.0)])
    assert isinstance(mixed.match_costs[1], BBoxL1Cost) and mixed.match_costs[1].weight == 5.0
    built = build_assigner(dict(type="HungarianAssigner", match_costs=DETR))
    assert [type(c).__name__ for c in built.match_costs] == ["ClassificationCost", "BBoxL1Cost", "IoUCost"]
    with pytest.raises(ValueError, match="match_costs"):
        HungarianAssigner([])
    with pytest.raises(TypeError, match="match cost"):
        HungarianAssigner([lambda p, g: 0])


# ------------------------------------------------------------------------------------ oracle parity
def _check_parity(mm, preset, seed, dtype=torch.float32, ties=False, Q=None, M=None):
    ours = HungarianAssigner(PRESETS[preset])
    ref = mm.task_utils.build(dict(type="HungarianAssigner", match_costs=PRESETS[preset]))
    scores, bboxes, labels, gt_bboxes = random_image(seed, Q=Q, M=M, dtype=dtype, ties=ties)
    meta = dict(img_shape=(250, 320))
    got = ours.assign(Instances(scores=scores, bboxes=bboxes), Instances(labels=labels, bboxes=gt_bboxes), meta)
    # mmdet on the same values in float32 (ours computes half inputs in float32)
    want = ref.assign(mm.InstanceData(scores=scores.float(), bboxes=bboxes.float()),
                      mm.InstanceData(labels=labels, bboxes=gt_bboxes), meta)
    assert torch.equal(got.gt_inds, want.gt_inds), (preset, seed)
    assert torch.equal(got.labels, want.labels), (preset, seed)
    assert got.num_gts == want.num_gts and want.max_overlaps is None and got.max_overlaps is None


@pytest.mark.oracle
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_matches_mmdet_random(preset):
    mm = oracles.mmdet()
    for seed in range(40):  # Q in [0, 11], M in [0, 8]: includes M=0, Q=0 and Q<M
        _check_parity(mm, preset, seed)


@pytest.mark.oracle
def test_matches_mmdet_edge_cases():
    mm = oracles.mmdet()
    for seed in range(10):
        _check_parity(mm, "detr", seed, Q=3, M=7)        # more GTs than queries
        _check_parity(mm, "deformable", seed, Q=6, M=0)  # no GT
        _check_parity(mm, "deformable", seed, Q=8, M=5, ties=True)
        _check_parity(mm, "variant", seed, Q=9, M=4, dtype=torch.float16)
        _check_parity(mm, "detr", seed, Q=9, M=4, dtype=torch.bfloat16)



def detr_batch(assigner, scores, pred_cxcywh, gt_labels, gt_bboxes, gt_mask, img_shapes):
    """The batched interface from a DETR head's normalised (cx, cy, w, h), converted to xyxy px as mmdet's
    DETRHead converts them before calling its assigner."""
    shapes = torch.as_tensor(img_shapes, dtype=torch.float32).reshape(-1, 2).expand(len(scores), 2)
    h, w = shapes.unbind(-1)
    xyxy = cxcywh_to_xyxy(pred_cxcywh) * torch.stack((w, h, w, h), -1)[:, None, :]
    return assigner.assign_batch(scores, xyxy, None, gt_labels, gt_bboxes, gt_mask, img_shapes=img_shapes)

@pytest.mark.oracle
def test_batched_matches_mmdet_detr_head_convention():
    """assign_batch (xyxy px from normalised cxcywh predictions) == mmdet per image after DETRHead's conversion."""
    mm = oracles.mmdet()
    ours = HungarianAssigner(DEFORMABLE)
    ref = mm.task_utils.build(dict(type="HungarianAssigner", match_costs=DEFORMABLE))
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        B, Q = 4, 10
        Ms = [int(m) for m in torch.randint(0, 8, (B,), generator=gen)]
        shapes = torch.tensor([[200.0, 300.0], [320.0, 240.0], [100.0, 100.0], [250.0, 400.0]])
        scores = torch.randn(B, Q, C, generator=gen)
        pred_cxcywh = torch.rand(B, Q, 4, generator=gen) * 0.5 + 0.1
        gt_list = [rand_boxes(m, gen, size=90.0) for m in Ms]
        lab_list = [torch.randint(0, C, (m,), generator=gen) for m in Ms]
        gt_labels, gt_bboxes, gt_mask = pad_gts(gt_list, lab_list)
        batch = detr_batch(ours, scores, pred_cxcywh, gt_labels, gt_bboxes, gt_mask, shapes)
        for b in range(B):
            h, w = shapes[b].tolist()
            xyxy = cxcywh_to_xyxy(pred_cxcywh[b]) * torch.tensor([w, h, w, h])
            want = ref.assign(mm.InstanceData(scores=scores[b], bboxes=xyxy),
                              mm.InstanceData(labels=lab_list[b], bboxes=gt_list[b]), dict(img_shape=(h, w)))
            assert torch.equal(batch.gt_inds[b], want.gt_inds)
            assert torch.equal(batch.labels[b], want.labels)
            assert int(batch.num_gts[b]) == Ms[b]


# ------------------------------------------------------------------------------------ properties
@given(Q=st.integers(0, 9), M=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_one_to_one(Q, M, seed):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(Q, M, generator=gen)
    r = HungarianAssigner(FixedCost(cost)).assign(Instances(scores=torch.zeros(Q, 1)),
                                                  Instances(labels=torch.zeros(M, dtype=torch.long)))
    matched = r.gt_inds[r.gt_inds > 0]
    assert len(matched) == min(Q, M)                       # number of matches
    assert len(set(matched.tolist())) == len(matched)      # each GT at most once (each query has one slot)
    assert ((r.gt_inds >= 0) & (r.gt_inds <= M)).all()
    if Q and M:  # optimal: no cheaper assignment exists (scipy on the same matrix is the reference)
        rows, cols = torch.nonzero(r.gt_inds > 0)[:, 0], r.gt_inds[r.gt_inds > 0] - 1
        from scipy.optimize import linear_sum_assignment
        ref_rows, ref_cols = linear_sum_assignment(cost.numpy())
        assert cost[rows, cols].sum().item() == pytest.approx(cost.numpy()[ref_rows, ref_cols].sum())


@given(Q=st.integers(1, 10), M=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_gt_permutation_equivariance(Q, M, seed):
    scores, bboxes, labels, gt_bboxes = random_image(seed, Q=Q, M=M)
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(seed + 1))
    assigner = HungarianAssigner(DEFORMABLE)
    meta = dict(img_shape=(250, 320))
    pred = Instances(scores=scores, bboxes=bboxes)
    base = assigner.assign(pred, Instances(labels=labels, bboxes=gt_bboxes), meta)
    permuted = assigner.assign(pred, Instances(labels=labels[perm], bboxes=gt_bboxes[perm]), meta)
    # permuted GT j is original GT perm[j]: map permuted indices back
    back = torch.where(permuted.gt_inds > 0, perm[(permuted.gt_inds - 1).clamp(min=0)] + 1, permuted.gt_inds)
    assert torch.equal(back, base.gt_inds)
    assert torch.equal(permuted.labels, base.labels)


@given(B=st.integers(1, 4), Q=st.integers(0, 8), M=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_batched_equals_per_image(B, Q, M, seed):
    gen = torch.Generator().manual_seed(seed)
    Ms = [int(m) for m in torch.randint(0, M + 1, (B,), generator=gen)]
    scores = torch.randn(B, Q, C, generator=gen)
    pred_cxcywh = torch.rand(B, Q, 4, generator=gen) * 0.6 + 0.05
    shapes = torch.tensor([[180.0, 260.0]]).repeat(B, 1) + torch.arange(B)[:, None] * 10
    gt_list = [rand_boxes(m, gen, size=120.0) for m in Ms]
    lab_list = [torch.randint(0, C, (m,), generator=gen) for m in Ms]
    gt_labels, gt_bboxes, gt_mask = pad_gts(gt_list, lab_list)
    if gt_labels.shape[1]:
        gt_labels[~gt_mask] = -5  # padding labels are never read
    assigner = HungarianAssigner(DETR)
    batch = detr_batch(assigner, scores, pred_cxcywh, gt_labels, gt_bboxes, gt_mask, shapes)
    assert batch.gt_inds.shape == (B, Q)
    for b in range(B):
        h, w = shapes[b].tolist()
        xyxy = cxcywh_to_xyxy(pred_cxcywh[b]) * torch.tensor([w, h, w, h])
        single = assigner.assign(Instances(scores=scores[b], bboxes=xyxy),
                                 Instances(labels=lab_list[b], bboxes=gt_list[b]), dict(img_shape=(h, w)))
        assert torch.equal(batch.gt_inds[b], single.gt_inds)
        assert torch.equal(batch.labels[b], single.labels)
        assert torch.allclose(batch.match_cost[b], single.match_cost)


def test_batched_non_contiguous_gt_mask():
    """Valid GTs need not be packed at the front: gt_inds index the padded M dimension."""
    gen = torch.Generator().manual_seed(3)
    scores, pred = torch.randn(1, 5, C, generator=gen), torch.rand(1, 5, 4, generator=gen) * 0.5 + 0.2
    gt_bboxes = rand_boxes(4, gen, size=50.0)[None]
    gt_labels = torch.randint(0, C, (1, 4), generator=gen)
    mask = torch.tensor([[True, False, True, False]])
    res = detr_batch(HungarianAssigner(DETR), scores, pred, gt_labels, gt_bboxes, mask, (100, 100))
    assert sorted(res.gt_inds[res.gt_inds > 0].tolist()) == [1, 3]
    assert int(res.num_gts[0]) == 2


# ------------------------------------------------------------------------------------ errors
def test_nan_cost_names_term_and_image():
    scores, bboxes, labels, gt_bboxes = random_image(1, Q=6, M=4)
    bboxes[2, 0] = float("nan")
    assigner = HungarianAssigner(DEFORMABLE)
    with pytest.raises(ValueError, match=r"BBoxL1Cost produced 4 NaN values.*IoUCost produced 4 NaN values for "
                                         r"image 'a\.jpg'"):
        assigner.assign(Instances(scores=scores, bboxes=bboxes), Instances(labels=labels, bboxes=gt_bboxes),
                        dict(img_shape=(200, 200), img_path="a.jpg"))


def test_nan_cost_batched_names_image_index():
    gen = torch.Generator().manual_seed(0)
    B, Q = 3, 5
    scores = torch.randn(B, Q, C, generator=gen)
    scores[2, 1, :] = float("nan")
    pred = torch.rand(B, Q, 4, generator=gen) * 0.5 + 0.2
    gt_labels, gt_bboxes, gt_mask = pad_gts([rand_boxes(3, gen, 50.0)] * B, [torch.tensor([0, 1, 2])] * B)
    with pytest.raises(ValueError, match=r"FocalLossCost produced 3 NaN values for image 2"):
        detr_batch(HungarianAssigner(DEFORMABLE), scores, pred, gt_labels, gt_bboxes, gt_mask, (100, 100))


def test_nan_in_padding_is_ignored():
    gen = torch.Generator().manual_seed(0)
    scores, pred = torch.randn(1, 4, C, generator=gen), torch.rand(1, 4, 4, generator=gen) * 0.5 + 0.2
    gt_bboxes = torch.tensor([[[10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 0.0, 0.0]]])
    assigner = HungarianAssigner([FixedCost(torch.tensor([[[1.0, float("nan")]] * 4]))])
    res = detr_batch(assigner, scores, pred, torch.tensor([[1, 0]]), gt_bboxes, torch.tensor([[True, False]]),
                     (64, 64))
    assert (res.gt_inds > 0).sum() == 1


def test_inf_cost_message():
    cost = FixedCost([[1.0, float("inf")], [0.0, 2.0]])
    with pytest.raises(ValueError, match="FixedCost produced 1 Inf value for this image"):
        HungarianAssigner(cost).assign(Instances(scores=torch.zeros(2, 1)), Instances(labels=torch.tensor([0, 0])))


def test_bad_batched_inputs():
    assigner = HungarianAssigner(DETR)
    scores, pred = torch.randn(2, 4, C), torch.rand(2, 4, 4)
    gt_labels, gt_bboxes, gt_mask = torch.zeros(2, 1, dtype=torch.long), torch.tensor([[[0.0, 0, 5, 5]]] * 2), None
    with pytest.raises(ValueError, match="pred_bboxes"):
        assigner.assign_batch(scores, pred[:, :3], None, gt_labels, gt_bboxes, gt_mask, img_shapes=(10, 10))
    with pytest.raises(ValueError, match="img_shapes"):
        assigner.assign_batch(scores, pred, None, gt_labels, gt_bboxes, gt_mask)
    with pytest.raises(ValueError, match="img_shapes"):
        assigner.assign_batch(scores, pred, None, gt_labels, gt_bboxes, gt_mask, img_shapes=torch.ones(3, 2))
    with pytest.raises(ValueError, match="gt_bboxes"):
        assigner.assign_batch(scores, pred, None, gt_labels, gt_bboxes.flip(-1), gt_mask, img_shapes=(10, 10))


def test_batched_img_shapes_default_to_the_priors_image_size():
    gen = torch.Generator().manual_seed(4)
    scores, pred = torch.randn(2, 6, C, generator=gen), rand_boxes(12, gen, size=60.0).view(2, 6, 4)
    gt_labels, gt_bboxes, gt_mask = pad_gts([rand_boxes(3, gen, 60.0)] * 2, [torch.tensor([0, 1, 2])] * 2)
    assigner = HungarianAssigner(DETR)
    given_shapes = assigner.assign_batch(scores, pred, None, gt_labels, gt_bboxes, gt_mask, img_shapes=(64, 80))
    from_priors = assigner.assign_batch(scores, pred, Priors.grid((64, 80), (32,)), gt_labels, gt_bboxes, gt_mask)
    assert torch.equal(given_shapes.gt_inds, from_priors.gt_inds)
    assert torch.equal(given_shapes.match_cost, from_priors.match_cost)


def test_result_is_plain_numpy_free_and_on_input_device():
    scores, bboxes, labels, gt_bboxes = random_image(5, Q=4, M=2)
    r = HungarianAssigner(DETR).assign(Instances(scores=scores, bboxes=bboxes),
                                       Instances(labels=labels, bboxes=gt_bboxes), dict(img_shape=(100, 100)))
    assert r.gt_inds.dtype == torch.long and r.gt_inds.device == labels.device
    assert not isinstance(r.gt_inds, np.ndarray)


# ------------------------------------------------------------------------------------ cost sum and solver paths
def _batch_instances(seed, B=4, Q=9, M=5, scores_dtype=torch.float32, boxes_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(B, Q, C, generator=gen) * 2).to(scores_dtype)
    pred = torch.stack([rand_boxes(Q, gen) for _ in range(B)]).to(boxes_dtype)
    gt = torch.stack([rand_boxes(M, gen) for _ in range(B)])
    labels = torch.randint(0, C, (B, M), generator=gen)
    shapes = torch.tensor([[200.0, 240.0]] * B)
    return Instances(scores=scores, bboxes=pred), Instances(labels=labels, bboxes=gt), shapes


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.float64, torch.float32),
                                    (torch.float32, torch.float64), (torch.float16, torch.bfloat16)], ids=str)
def test_total_cost_has_the_bits_of_the_stacked_sum(dtypes):
    """total_cost sums the terms in place, as they are built (box costs by blocks of images): the same bits as
    mmdet's stack-then-sum, with any term order, promoted dtypes, a cost returning a stored matrix (left intact)
    and more terms than a sequential sum reproduces (then it stacks, as when a term of higher precision follows
    two of lower precision)."""
    from detassign.assigners.hungarian import build_match_costs, sum_costs, total_cost
    pred, gt, shapes = _batch_instances(11, scores_dtype=dtypes[0], boxes_dtype=dtypes[1])
    stored = torch.randn(4, 9, 5, generator=torch.Generator().manual_seed(2))
    kept = stored.clone()
    cost_lists = [DETR, DEFORMABLE, VARIANT, DEFORMABLE[::-1], [FixedCost(stored, weight=0.5)] + DETR,
                  DETR + [FixedCost(stored)], DEFORMABLE * 6]
    for match_costs in map(build_match_costs, cost_lists):
        want, _ = sum_costs(match_costs, pred, gt, shapes)
        got = total_cost(match_costs, pred, gt, shapes)
        assert got.dtype == want.dtype and torch.equal(got, want), [type(c).__name__ for c in match_costs]
    assert torch.equal(stored, kept)


def test_tall_blocks_solved_as_scipy_solves_them():
    """solve_host hands scipy the transpose of a block with more queries than valid GTs (scipy transposes such a
    block itself): the same matching as scipy on the block, ties included; padded columns never matched."""
    from scipy.optimize import linear_sum_assignment

    from detassign.assigners.hungarian import solve_host
    rng = np.random.default_rng(0)
    for trial in range(40):
        B, Q, M = 3, int(rng.integers(1, 9)), int(rng.integers(1, 9))
        cost = rng.integers(0, 3, (B, Q, M)).astype(np.float32)      # integer costs: many ties
        valid = rng.random((B, M)) < 0.7
        gt_inds = solve_host(cost, valid)
        for b in range(B):
            cols = np.flatnonzero(valid[b])
            want = np.zeros(Q, dtype=np.int64)
            if len(cols):
                rows, matched = linear_sum_assignment(cost[b][:, cols])
                want[rows] = cols[matched] + 1
            assert np.array_equal(gt_inds[b], want), (trial, b)


def test_finite_on_valid_columns_only():
    from detassign.assigners.hungarian import finite_on_valid
    cost = np.ones((2, 3, 4), dtype=np.float32)
    valid = np.array([[True, True, False, False], [True, False, True, False]])
    assert finite_on_valid(cost, valid)
    assert finite_on_valid(np.full((2, 3, 4), 3e38, dtype=np.float32), valid)   # the sum overflows, values do not
    cost[0, 1, 3] = np.nan                                                        # padding: ignored
    cost[1, 2, 1] = np.inf
    assert finite_on_valid(cost, valid)
    cost[1, 0, 2] = -np.inf
    assert not finite_on_valid(cost, valid)


def test_cost_terms_of_another_shape_are_refused():
    """Summing in place would broadcast a [1, Q, M] term over the batch (or keep a [1, Q, M] sum): refused."""
    from detassign.assigners.hungarian import build_match_costs, total_cost
    pred, gt, shapes = _batch_instances(12)
    one = FixedCost(torch.zeros(1, 9, 5))
    for match_costs in ([one] + DEFORMABLE, DEFORMABLE + [one]):
        with pytest.raises(ValueError, match=r"gives a cost of shape \((1, 9, 5|4, 9, 5)\) where the other terms"):
            total_cost(build_match_costs(match_costs), pred, gt, shapes)
