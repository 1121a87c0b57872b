"""ApproxMaxIoUAssigner: group IoU (max over each square's approxs) then MaxIoU rules; mmdet 3.3.0 parity."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.approx_max_iou import ApproxMaxIoUAssigner, approx_overlaps
from detassign.assigners.max_iou import MaxIoUAssigner
from detassign.boxes import pairwise_iou
from tests.oracles import mmdet
from tests.assigners.test_max_iou import KNOBS, assert_same, random_case, run_pair


def random_approxs(priors, seed, P=None):
    """[N, P, 4] jittered copies of each square (x1 <= x2 kept), P from the seed when not given."""
    g = torch.Generator().manual_seed(seed)
    P = P or 1 + seed % 4
    approxs = priors.float()[:, None, :] + torch.randn(len(priors), P, 4, generator=g) * 4
    approxs[..., 2:] = torch.maximum(approxs[..., 2:], approxs[..., :2])
    return approxs.to(priors.dtype)


# ----------------------------------------------------------------------------- hand-worked
def test_hand_worked_group_max():
    # square [0,0,10,10] has approxs [0,0,10,10] and [0,0,20,10]; GT [0,0,20,10] (area 200):
    #   approx 1: overlap 100, union 100 + 200 - 100 = 200 -> 0.5;  approx 2: identical -> 1.0.  Group IoU = 1.0.
    # square [30,30,40,40] with one approx equal to itself: IoU 0 -> negative.
    squares = torch.tensor([[0.0, 0, 10, 10], [30, 30, 40, 40]])
    approxs = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 20, 10]],
                            [[30.0, 30, 40, 40], [30, 30, 40, 40]]])
    gts = Instances(bboxes=torch.tensor([[0.0, 0, 20, 10]]), labels=torch.tensor([2]))
    res = ApproxMaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3).assign(Instances(priors=squares, approxs=approxs), gts)
    assert res.gt_inds.tolist() == [1, 0] and res.labels.tolist() == [2, -1]
    assert res.max_overlaps.tolist() == [1.0, 0.0]   # the group's best IoU, not the square's 0.5
    torch.testing.assert_close(approx_overlaps(gts.bboxes, approxs), torch.tensor([[1.0, 0.0]]))


# ----------------------------------------------------------------------------- oracle parity
@pytest.mark.oracle
@pytest.mark.parametrize("knobs", KNOBS[:7], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_parity_with_mmdet(knobs):
    ref_cls = mmdet().assigners.ApproxMaxIoUAssigner
    for seed in range(30):
        priors, gts, labels, ignore = random_case(seed)
        ref, ours = run_pair(ApproxMaxIoUAssigner, ref_cls, knobs, priors, gts, labels, ignore,
                             approxs=random_approxs(priors, seed))
        assert_same(ref, ours, f"seed {seed}")


@pytest.mark.oracle
def test_parity_ga_config_with_gpu_thr():
    """Guided anchoring's RPN config (ignore_iof_thr=-1), with gpu_assign_thr low enough to trigger."""
    cfg = dict(type="ApproxMaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, ignore_iof_thr=-1,
               gpu_assign_thr=2)
    ours, ref = build_assigner(cfg), mmdet().task_utils.build(cfg)
    for seed in range(20):
        priors, gts, labels, _ = random_case(seed + 100)
        approxs = random_approxs(priors.float(), seed, P=9)
        a = ours.assign(Instances(priors=priors.float(), approxs=approxs), Instances(bboxes=gts, labels=labels))
        b = ref.assign(mmdet().InstanceData(priors=priors.float(), approxs=approxs),
                       mmdet().InstanceData(bboxes=gts, labels=labels))
        assert_same(b, a, f"seed {seed}")


# ----------------------------------------------------------------------------- properties
@given(st.integers(0, 10 ** 6), st.sampled_from(["mmdet", "nonzero", "argmax"]))
def test_single_approx_equal_to_square_is_max_iou(seed, mode):
    priors, gts, labels, ignore = random_case(seed % 1000)
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.3, low_quality_mode=mode)
    a = ApproxMaxIoUAssigner(**knobs).assign(Instances(priors=priors, approxs=priors[:, None]),
                                             Instances(bboxes=gts, labels=labels), Instances(bboxes=ignore))
    b = MaxIoUAssigner(**knobs).assign(Instances(priors=priors), Instances(bboxes=gts, labels=labels),
                                       Instances(bboxes=ignore))
    assert torch.equal(a.gt_inds, b.gt_inds) and torch.equal(a.max_overlaps, b.max_overlaps)


@given(st.integers(0, 10 ** 6))
def test_group_iou_is_max_over_approxs(seed):
    priors, gts, _, _ = random_case(seed % 1000)
    approxs = random_approxs(priors.float(), seed)
    per_approx = torch.stack([pairwise_iou(gts, approxs[:, p]) for p in range(approxs.shape[1])])   # [P, M, N]
    assert torch.equal(approx_overlaps(gts, approxs), per_approx.amax(0))


# ----------------------------------------------------------------------------- corner cases and errors
def test_empty_inputs():
    assigner = ApproxMaxIoUAssigner(0.5, 0.4)
    squares = torch.tensor([[0.0, 0, 10, 10]])
    res = assigner.assign(Instances(priors=squares, approxs=squares[:, None]),
                          Instances(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)))
    assert res.gt_inds.tolist() == [0] and res.max_overlaps.tolist() == [0.0]
    res = assigner.assign(Instances(priors=torch.zeros(0, 4), approxs=torch.zeros(0, 3, 4)),
                          Instances(bboxes=squares, labels=torch.tensor([0])))
    assert res.gt_inds.shape == (0,)


def test_bad_inputs():
    assigner = ApproxMaxIoUAssigner(0.5, 0.4)
    gts = Instances(bboxes=torch.tensor([[0.0, 0, 1, 1]]), labels=torch.tensor([1]))
    squares = torch.tensor([[0.0, 0, 10, 10], [5, 5, 8, 8]])
    with pytest.raises(ValueError, match="pred_instances.approxs"):
        assigner.assign(Instances(priors=squares), gts)
    with pytest.raises(ValueError, match="pred_instances.approxs"):
        assigner.assign(Instances(priors=squares, approxs=torch.zeros(3, 2, 4)), gts)
    with pytest.raises(ValueError, match="pred_instances.approxs"):
        assigner.assign(Instances(priors=squares, approxs=torch.zeros(2, 0, 4)), gts)
    with pytest.raises(ValueError, match="pred_instances.approxs"):
        assigner.assign(Instances(priors=squares, approxs=torch.tensor([[[1.0, 0, 0, 1]]] * 2)), gts)
