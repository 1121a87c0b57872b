"""GridAssigner: positives only among responsible priors; mmdet 3.3.0 parity, sentinels, properties, errors."""
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.grid import GridAssigner
from detassign.boxes import pairwise_iou
from tests.oracles import mmdet
from tests.assigners.test_max_iou import assert_same, random_case, run_pair


def random_flags(n, seed, p=0.4):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed + 17)) < p


KNOBS = [
    dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.0),                   # YOLOv3's config
    dict(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.4), min_pos_iou=0.1),
    dict(pos_iou_thr=0.3, neg_iou_thr=0.2, gt_max_assign_all=False),
    dict(pos_iou_thr=0.6, neg_iou_thr=[0.0, 0.5], min_pos_iou=-0.5, gt_max_assign_all=False),
    dict(pos_iou_thr=0.4, neg_iou_thr=0.3, min_pos_iou=-2.0),                  # even -1 (non-responsible) passes
]


# ----------------------------------------------------------------------------- hand-worked
def test_hand_worked_responsible_only():
    # GT [0,0,10,10]; priors: p0 = GT (IoU 1) not responsible; p1 [0,0,10,5] (IoU 50/100 = 0.5) responsible;
    # p2 [20,20,30,30] (IoU 0) responsible.
    # Step 2 (all priors, 0 <= iou <= 0.5): p1 (0.5 <= 0.5, inclusive) and p2 negative, p0 (1.0) stays -1.
    # Step 3: p0's IoU becomes -1 (not responsible); p1 0.5 is not > 0.5 -> no threshold positive.
    # Step 4: GT's best responsible IoU is 0.5 > min_pos_iou 0 -> p1 positive.
    priors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]])
    pred = Instances(priors=priors, responsible_flags=torch.tensor([False, True, True]))
    res = GridAssigner(0.5, 0.5).assign(pred, Instances(bboxes=torch.tensor([[0.0, 0, 10, 10]]),
                                                        labels=torch.tensor([4])))
    assert res.gt_inds.tolist() == [-1, 1, 0]
    assert res.labels.tolist() == [-1, 4, -1]
    assert res.max_overlaps.tolist() == [-1.0, 0.5, 0.0]   # -1: mmdet's sentinel for non-responsible priors


def test_hand_worked_zero_iou_gt_claims_nothing():
    # A GT overlapping no responsible prior has best IoU 0, and 0 > min_pos_iou 0 is false (strict), so unlike
    # MaxIoUAssigner (mmdet #8289) it makes no zero-IoU prior positive.
    priors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    pred = Instances(priors=priors, responsible_flags=torch.tensor([True, True]))
    res = GridAssigner(0.5, 0.5).assign(pred, Instances(bboxes=torch.tensor([[50.0, 50, 60, 60]]),
                                                        labels=torch.tensor([0])))
    assert res.gt_inds.tolist() == [0, 0]


# ----------------------------------------------------------------------------- oracle parity
@pytest.mark.oracle
@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_parity_with_mmdet(knobs):
    ref_cls = mmdet().assigners.GridAssigner
    for seed in range(30):
        priors, gts, labels, _ = random_case(seed)
        flags = random_flags(len(priors), seed, p=0.0 if seed % 7 == 3 else 0.4)
        if seed % 4 == 1:
            flags = flags.to(torch.uint8)
        ref, ours = run_pair(GridAssigner, ref_cls, knobs, priors, gts, labels, torch.zeros(0, 4),
                             responsible_flags=flags)
        assert_same(ref, ours, f"seed {seed}")


# ----------------------------------------------------------------------------- properties
@given(st.integers(0, 10 ** 6), st.booleans())
def test_positives_are_responsible_and_sentinel(seed, assign_all):
    priors, gts, labels, _ = random_case(seed % 1000)
    flags = random_flags(len(priors), seed)
    res = GridAssigner(0.5, 0.4, gt_max_assign_all=assign_all).assign(
        Instances(priors=priors, responsible_flags=flags), Instances(bboxes=gts, labels=labels))
    assert not bool((res.gt_inds > 0)[~flags].any())
    if len(gts):
        assert bool((res.max_overlaps[~flags] == -1).all())


@given(st.integers(0, 10 ** 6))
def test_gt_permutation_equivariance(seed):
    priors, gts, labels, _ = random_case(seed % 1000 * 10 + 8)        # plain random boxes: no float ties
    flags = random_flags(len(priors), seed, p=0.6)
    overlaps = pairwise_iou(gts, priors).masked_fill(~flags, -1)
    assume(bool((overlaps.amax(1) > 0).all()))
    assume(len(set(overlaps.argmax(1).tolist())) == len(gts))         # no prior is the best of two GTs
    perm = torch.randperm(len(gts), generator=torch.Generator().manual_seed(seed))
    assigner = GridAssigner(0.5, 0.4)
    a = assigner.assign(Instances(priors=priors, responsible_flags=flags), Instances(bboxes=gts, labels=labels))
    b = assigner.assign(Instances(priors=priors, responsible_flags=flags),
                        Instances(bboxes=gts[perm], labels=labels[perm]))
    mapped = torch.where(b.gt_inds > 0, perm[(b.gt_inds - 1).clamp(min=0)] + 1, b.gt_inds)
    assert torch.equal(a.gt_inds, mapped) and torch.equal(a.max_overlaps, b.max_overlaps)


# ----------------------------------------------------------------------------- corner cases and errors
def test_empty_inputs():
    assigner = GridAssigner(0.5, 0.5)
    priors = torch.tensor([[0.0, 0, 10, 10]])
    res = assigner.assign(Instances(priors=priors, responsible_flags=torch.tensor([True])),
                          Instances(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)))
    assert res.gt_inds.tolist() == [0] and res.max_overlaps.tolist() == [0.0] and res.labels.tolist() == [-1]
    res = assigner.assign(Instances(priors=torch.zeros(0, 4), responsible_flags=torch.zeros(0, dtype=torch.bool)),
                          Instances(bboxes=priors, labels=torch.tensor([0])))
    assert res.gt_inds.shape == (0,) and res.num_gts == 1


def test_build_and_bad_inputs():
    assigner = build_assigner(dict(type="GridAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0))
    assert isinstance(assigner, GridAssigner)
    gts = Instances(bboxes=torch.tensor([[0.0, 0, 1, 1]]), labels=torch.tensor([1]))
    priors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 8, 8]])
    with pytest.raises(ValueError, match="responsible_flags"):
        assigner.assign(Instances(priors=priors), gts)
    with pytest.raises(ValueError, match="responsible_flags"):
        assigner.assign(Instances(priors=priors, responsible_flags=torch.ones(3, dtype=torch.bool)), gts)
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assigner.assign(Instances(priors=priors[:, :3], responsible_flags=torch.ones(2, dtype=torch.bool)), gts)
    with pytest.raises(TypeError, match="neg_iou_thr"):
        GridAssigner(0.5, "0.5")
    with pytest.raises(ValueError, match="iou_calculator"):
        GridAssigner(0.5, 0.5, iou_calculator=dict(type="BboxOverlaps2D", mode="giou"))
