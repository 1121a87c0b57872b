"""UniformAssigner: hand-worked cases, mmdet 3.3.0 parity, properties, bad inputs."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.uniform import UniformAssigner, l1_costs, uniform_candidates
from tests.oracles import mmdet
from tests.fixtures import anchor_boxes, jitter_boxes, make_gts

PRIORS = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10]])
PREDS = torch.tensor([[0.0, 0, 10, 10], [12, 0, 22, 10], [20, 0, 30, 10]])


def assign(assigner, priors, preds, gt, labels):
    return assigner.assign(Instances(priors=priors, decoder_priors=preds), Instances(bboxes=gt, labels=labels))


# ----------------------------------------------------------------------------- hand-worked
def test_hand_worked_two_gts():
    # match_times=1. In (cx, cy, w, h): priors (5,5,10,10) (15,5,10,10) (25,5,10,10);
    # preds (5,5,10,10) (17,5,10,10) (25,5,10,10).
    # GT1 [10,0,20,10] = (15,5,10,10): L1 to preds 10, 2, 10 -> pred 1; to priors 10, 0, 10 -> prior 1.
    # GT2 [22,0,34,10] = (28,5,12,10): L1 to preds 25, 13, 5 -> pred 2; to priors 25, 15, 5 -> prior 2.
    # Pairs in mmdet's order (preds round, then priors round): prior [1, 2, 1, 2], GT [0, 1, 0, 1].
    # Step 3 (neg_ignore_thr 0.6): pred 1's best IoU 80/120 = 0.667 > 0.6 -> -1; pred 2: 80/140 = 0.571 -> 0.
    # Step 4 (pos_ignore_thr 0.6): IoU(prior 1, GT1) = 1.0 -> positive 1 (overrides the -1);
    #   IoU(prior 2, GT2) = 80/140 = 0.571 < 0.6 -> ignored -1.
    gt, labels = torch.tensor([[10.0, 0, 20, 10], [22, 0, 34, 10]]), torch.tensor([3, 4])
    a = UniformAssigner(pos_ignore_thr=0.6, neg_ignore_thr=0.6, match_times=1)
    res = assign(a, PRIORS, PREDS, gt, labels)
    assert res.gt_inds.tolist() == [0, 1, -1]
    assert res.labels.tolist() == [-1, 3, -1]
    # mmdet's max_overlaps is per GT: best IoU over priors, GT1 1.0 (prior 1), GT2 0.571 (prior 2).
    torch.testing.assert_close(res.max_overlaps, torch.tensor([1.0, 80 / 140]))
    assert res.pos_idx.tolist() == [True, False, True, False]
    assert torch.equal(res.pos_predicted_boxes, PREDS[[1, 2, 1, 2]])
    assert torch.equal(res.target_boxes, gt[[0, 1, 0, 1]])
    # per_prior: prior 0 best IoU 0 (touches GT1), prior 1 IoU with its GT 1.0, prior 2 best IoU 0.571.
    per_prior = assign(UniformAssigner(0.6, 0.6, 1, max_overlaps_mode="per_prior"), PRIORS, PREDS, gt, labels)
    torch.testing.assert_close(per_prior.max_overlaps, torch.tensor([0.0, 1.0, 80 / 140]))
    assert torch.equal(per_prior.gt_inds, res.gt_inds)


def test_hand_worked_last_pair_wins():
    # Two identical GTs [10,0,20,10] pick the same pred (1) and prior (1): pairs prior [1, 1, 1, 1],
    # GT [0, 1, 0, 1]; the last written pair (GT 2) wins, as mmdet's sequential index write.
    gt = torch.tensor([[10.0, 0, 20, 10], [10, 0, 20, 10]])
    res = assign(UniformAssigner(0.15, 0.7, 1), PRIORS, PREDS, gt, torch.tensor([5, 6]))
    assert res.gt_inds.tolist() == [0, 2, 0] and res.labels.tolist() == [-1, 6, -1]


def test_match_times_larger_than_priors():
    # 3 priors, match_times 4: every prior is a candidate of the single GT (mmdet's topk would raise).
    res = assign(UniformAssigner(0.0, 0.99, 4), PRIORS, PREDS, torch.tensor([[0.0, 0, 30, 10]]), torch.tensor([0]))
    assert res.gt_inds.tolist() == [1, 1, 1] and res.pos_idx.shape == (6,)


def test_empty_gt_and_empty_priors():
    a = UniformAssigner(0.15, 0.7)
    none = assign(a, PRIORS, PREDS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert none.gt_inds.tolist() == [0, 0, 0] and none.labels.tolist() == [-1, -1, -1]
    assert none.max_overlaps is None and none.pos_idx.shape == (0,) and none.target_boxes.shape == (0, 4)
    assert none.pos_predicted_boxes.shape == (0, 4)
    per_prior = assign(UniformAssigner(0.15, 0.7, max_overlaps_mode="per_prior"), PRIORS, PREDS, torch.zeros(0, 4),
                       torch.zeros(0, dtype=torch.long))
    assert per_prior.max_overlaps.tolist() == [0.0, 0.0, 0.0]
    empty = assign(a, torch.zeros(0, 4), torch.zeros(0, 4), torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([1]))
    assert empty.gt_inds.shape == (0,) and empty.num_gts == 1


def test_reads_bboxes_when_decoder_priors_absent():
    gt, labels = torch.tensor([[10.0, 0, 20, 10]]), torch.tensor([3])
    a = UniformAssigner(0.15, 0.7, 1)
    via_bboxes = a.assign(Instances(priors=PRIORS, bboxes=PREDS), Instances(bboxes=gt, labels=labels))
    assert torch.equal(via_bboxes.gt_inds, assign(a, PRIORS, PREDS, gt, labels).gt_inds)


def test_build_from_config():
    a = build_assigner(dict(type="UniformAssigner", pos_ignore_thr=0.15, neg_ignore_thr=0.7, match_times=4))
    assert isinstance(a, UniformAssigner) and a.match_times == 4


# ----------------------------------------------------------------------------- oracle parity
def _case(seed):
    g = torch.Generator().manual_seed(seed)
    priors = anchor_boxes(ratios=(1.0,) if seed % 2 else (0.5, 1.0, 2.0), base=4)[0]
    m = [0, 1, 2, 4, 7, 12][seed % 6]
    kind = seed % 4
    gt = make_gts(g, m, lo=1.0, hi=6.0) if kind == 0 else make_gts(g, m, off=0.5 if kind == 1 else 0.0)
    if m > 2 and seed % 3 == 0:
        gt[2] = gt[0]                                       # shared candidates: last pair wins
    preds = jitter_boxes(g, priors, 8.0)
    return gt, torch.randint(0, 5, (m,), generator=g), priors, preds


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(36))
def test_matches_mmdet(seed):
    O = mmdet()
    gt, labels, priors, preds = _case(seed)
    kw = dict(pos_ignore_thr=[0.15, 0.0, 0.4][seed % 3], neg_ignore_thr=[0.7, 0.5, 1.0][seed % 3],
              match_times=[4, 1, 8][seed % 3])
    ref = O.assigners.UniformAssigner(**kw).assign(O.InstanceData(priors=priors, decoder_priors=preds),
                                                   O.InstanceData(bboxes=gt, labels=labels))
    ours = assign(UniformAssigner(**kw), priors, preds, gt, labels)
    assert torch.equal(ours.gt_inds, ref.gt_inds) and torch.equal(ours.labels, ref.labels)
    if ref.max_overlaps is None:
        assert ours.max_overlaps is None
    else:
        assert torch.equal(ours.max_overlaps, ref.max_overlaps)
    for key in ("pos_idx", "pos_predicted_boxes", "target_boxes"):
        assert torch.equal(ours.get_extra_property(key), ref.get_extra_property(key)), key


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_fp16_inputs_match_mmdet_on_float32_copy(seed):
    O = mmdet()
    gt, labels, priors, preds = _case(seed + 50)
    priors16, preds16 = priors.half(), preds.half()
    ref = O.assigners.UniformAssigner(0.15, 0.7).assign(
        O.InstanceData(priors=priors16.float(), decoder_priors=preds16.float()),
        O.InstanceData(bboxes=gt, labels=labels))
    ours = assign(UniformAssigner(0.15, 0.7), priors16, preds16, gt, labels)
    assert torch.equal(ours.gt_inds, ref.gt_inds)
    if ref.max_overlaps is not None:
        assert torch.equal(ours.max_overlaps, ref.max_overlaps)


# ----------------------------------------------------------------------------- properties
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 8))
def test_per_prior_overlaps_are_own_gt_iou_for_positives(seed, m):
    g = torch.Generator().manual_seed(seed)
    priors = anchor_boxes(img=64, base=4)[0]
    gt, labels = make_gts(g, m, img=64), torch.randint(0, 3, (m,), generator=g)
    preds = jitter_boxes(g, priors, 4.0)
    res = assign(UniformAssigner(0.1, 0.7, max_overlaps_mode="per_prior"), priors, preds, gt, labels)
    assert res.max_overlaps.shape == (len(priors),)
    pos = res.gt_inds > 0
    own = mmdet().bbox_overlaps(priors[pos], gt[res.gt_inds[pos] - 1], is_aligned=True)
    torch.testing.assert_close(res.max_overlaps[pos], own)
    assert (res.max_overlaps[pos] >= 0.1).all()   # positives passed pos_ignore_thr on this very IoU


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 8))
def test_gt_permutation_equivariance_where_unambiguous(seed, m):
    # Equivariant except for priors claimed by pairs of several GTs (there the last GT in order wins).
    g = torch.Generator().manual_seed(seed)
    priors = anchor_boxes(img=64, base=4)[0]
    gt, labels = make_gts(g, m, img=64), torch.randint(0, 3, (m,), generator=g)
    preds = jitter_boxes(g, priors, 4.0)
    a = UniformAssigner(0.1, 0.7)
    perm = torch.randperm(m, generator=g)
    base = assign(a, priors, preds, gt, labels)
    permuted = assign(a, priors, preds, gt[perm], labels[perm])
    prior_index, gt_index = uniform_candidates(l1_costs(preds, gt), l1_costs(priors, gt), a.match_times)
    claims = torch.zeros(len(priors), m, dtype=torch.bool)
    claims[prior_index, gt_index] = True
    unambiguous = claims.sum(1) <= 1
    mapped = torch.where(permuted.gt_inds > 0, perm[(permuted.gt_inds - 1).clamp(min=0)] + 1, permuted.gt_inds)
    assert torch.equal(mapped[unambiguous], base.gt_inds[unambiguous])
    assert torch.equal(permuted.max_overlaps, base.max_overlaps[perm])   # per GT, permuted with the GTs
    # every positive is a candidate of its GT
    pos = base.gt_inds > 0
    assert claims[pos.nonzero().squeeze(1), base.gt_inds[pos] - 1].all()


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    with pytest.raises(ValueError, match="match_times"):
        UniformAssigner(0.15, 0.7, match_times=0)
    with pytest.raises(ValueError, match="max_overlaps_mode"):
        UniformAssigner(0.15, 0.7, max_overlaps_mode="per_anchor")
    with pytest.raises(ValueError, match="iou_calculator"):
        UniformAssigner(0.15, 0.7, iou_calculator=dict(type="BboxDistanceMetric"))
    a = UniformAssigner(0.15, 0.7)
    gt, labels = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0])
    with pytest.raises(ValueError, match="decoder_priors"):
        a.assign(Instances(priors=PRIORS), Instances(bboxes=gt, labels=labels))
    with pytest.raises(ValueError, match="pred_instances.decoder_priors"):
        assign(a, PRIORS, PREDS[:2], gt, labels)
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assign(a, PRIORS[:, :3], PREDS, gt, labels)
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        assign(a, PRIORS, PREDS, torch.tensor([[0.0, 0, float("inf"), 10]]), labels)
    with pytest.raises(ValueError, match="gt_instances.labels"):
        assign(a, PRIORS, PREDS, gt, torch.tensor([[0]]))
