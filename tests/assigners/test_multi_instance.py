"""MultiInstanceAssigner (CrowdDet): hand-worked case, mmdet 3.3.0 parity, (N+M, k) layout, edge cases."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.multi_instance import MultiInstanceAssigner
from tests import oracles

# configs/crowddet/crowddet-rcnn_r50_fpn_8xb2-30e_crowdhuman.py, rcnn stage
CROWDDET = dict(type="MultiInstanceAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.3,
                match_low_quality=False, ignore_iof_thr=-1)


def rand_boxes(n, gen, size=100.0):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def random_case(seed, N=None, M=None, I=None):
    gen = torch.Generator().manual_seed(seed)
    N = int(torch.randint(0, 25, (1,), generator=gen)) if N is None else N
    M = int(torch.randint(2, 7, (1,), generator=gen)) if M is None else M
    I = int(torch.randint(0, 3, (1,), generator=gen)) if I is None else I
    gt = rand_boxes(M, gen)
    priors = rand_boxes(N, gen)
    near = min(N, M)
    priors[:near] = gt[:near] + torch.randn(near, 4, generator=gen) * 3  # crowded proposals overlap GTs
    priors[:near, 2:] = torch.maximum(priors[:near, 2:], priors[:near, :2] + 1)
    ignore = rand_boxes(I, gen)
    if I and N:
        ignore[0] = priors[0] + 1.0  # a proposal mostly inside an ignore box
    return priors, gt, torch.randint(0, 3, (M,), generator=gen), ignore


def test_by_hand():
    # proposal P = [0,0,10,10]; GT A = [0,0,10,10] (IoU 1), B = [0,0,10,5] (IoU 50/100 = .5), C far (IoU 0).
    priors = torch.tensor([[0.0, 0, 10, 10]])
    gt = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]])
    r = MultiInstanceAssigner(num_instance=2).assign(Instances(priors=priors),
                                                     Instances(bboxes=gt, labels=torch.tensor([0, 0, 0])))
    assert r.gt_inds.shape == (1 + 3, 2) and r.num_gts == 3
    # row 0 (P): A (1.0) then B (0.5 >= pos_iou_thr .5) -> both foreground, 0-based GT indices 0 and 1
    assert r.gt_inds[0].tolist() == [0, 1] and r.max_overlaps[0].tolist() == [1.0, 0.5]
    assert r.labels[0].tolist() == [1, 1]
    # row 3 is GT C as a proposal: itself (1.0, fg), then a zero-IoU GT (background, label 0)
    assert r.gt_inds[3, 0].item() == 2 and r.labels[3].tolist() == [1, 0] and r.max_overlaps[3, 1].item() == 0


def test_ignore_box_takes_slot():
    # proposal [0,0,10,10] inside ignore box [-1,-1,11,11] (iof 1) and IoU .25 with GT [0,0,5,5] (< .5):
    # slot 0 becomes the ignore box (index 1 in cat(gt, ignore)), label -1.
    priors = torch.tensor([[0.0, 0, 10, 10]])
    r = MultiInstanceAssigner(num_instance=1).assign(
        Instances(priors=priors), Instances(bboxes=torch.tensor([[0.0, 0, 5, 5]]), labels=torch.tensor([2])),
        Instances(bboxes=torch.tensor([[-1.0, -1, 11, 11]])))
    assert r.gt_inds[0].tolist() == [1] and r.labels[0].tolist() == [-1] and r.max_overlaps[0].item() == 1.0
    assert r.num_gts == 2


@pytest.mark.oracle
@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_mmdet(k):
    mm = oracles.mmdet()
    cfg = dict(CROWDDET, num_instance=k)
    ours, ref = build_assigner(cfg), mm.task_utils.build(cfg)
    for seed in range(30):  # N in [0, 24] (includes no proposals), M in [2, 6], 0-2 ignore boxes
        priors, gt, labels, ignore = random_case(seed, M=k + seed % (7 - k))
        ign_ours = Instances(bboxes=ignore) if len(ignore) else None
        ign_ref = mm.InstanceData(bboxes=ignore) if len(ignore) else None
        got = ours.assign(Instances(priors=priors), Instances(bboxes=gt, labels=labels), ign_ours)
        want = ref.assign(mm.InstanceData(priors=priors), mm.InstanceData(bboxes=gt, labels=labels), ign_ref)
        assert got.num_gts == want.num_gts
        assert torch.equal(got.gt_inds, want.gt_inds), seed
        assert torch.equal(got.max_overlaps, want.max_overlaps), seed
        assert torch.equal(got.labels, want.labels.long()), seed


@pytest.mark.oracle
def test_matches_mmdet_other_thresholds_labelled_ignore_and_ties():
    mm = oracles.mmdet()
    cfg = dict(type="MultiInstanceAssigner", num_instance=2, pos_iou_thr=0.6, neg_iou_thr=0.3)
    ours, ref = build_assigner(cfg), mm.task_utils.build(cfg)
    for seed in range(12):
        priors, gt, labels, ignore = random_case(seed, N=10, M=4, I=2)
        gt[1], labels[1] = gt[0], labels[0]  # duplicate GT: tied IoUs
        ign_labels = torch.tensor([-1, 1])  # labelled ignore boxes act as GTs in mmdet (only -1 ignores)
        got = ours.assign(Instances(priors=priors), Instances(bboxes=gt, labels=labels),
                          Instances(bboxes=ignore, labels=ign_labels))
        want = ref.assign(mm.InstanceData(priors=priors), mm.InstanceData(bboxes=gt, labels=labels),
                          mm.InstanceData(bboxes=ignore, labels=ign_labels))
        assert torch.equal(got.gt_inds, want.gt_inds)
        assert torch.equal(got.max_overlaps, want.max_overlaps)
        assert torch.equal(got.labels, want.labels.long())


def test_fewer_boxes_than_instances_fills_background():
    """mmdet breaks here (misaligned reshape); we fill missing slots with gt 0, overlap 0, label 0."""
    assigner = MultiInstanceAssigner(num_instance=3)
    priors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    r = assigner.assign(Instances(priors=priors), Instances(bboxes=torch.tensor([[0.0, 0, 10, 10]]),
                                                            labels=torch.tensor([4])))
    assert r.gt_inds.shape == (3, 3)
    assert r.labels.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert r.max_overlaps[:, 1:].eq(0).all()
    empty = assigner.assign(Instances(priors=priors), Instances(bboxes=torch.zeros(0, 4),
                                                                labels=torch.zeros(0, dtype=torch.long)))
    assert empty.gt_inds.shape == (2, 3) and empty.labels.eq(0).all() and empty.num_gts == 0


@given(N=st.integers(0, 12), M=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_layout_and_label_rules(N, M, seed):
    priors, gt, labels, _ = random_case(seed, N=N, M=M, I=0)
    r = MultiInstanceAssigner(num_instance=2, pos_iou_thr=0.5, neg_iou_thr=0.4).assign(
        Instances(priors=priors), Instances(bboxes=gt, labels=labels))
    assert r.gt_inds.shape == r.labels.shape == r.max_overlaps.shape == (N + M, 2)
    assert (r.max_overlaps[:, 0] >= r.max_overlaps[:, 1]).all()          # best GT first
    assert (r.labels[r.max_overlaps >= 0.5] == 1).all()
    assert (r.labels[r.max_overlaps < 0.4] == 0).all()
    mid = (r.max_overlaps >= 0.4) & (r.max_overlaps < 0.5)                 # between thresholds: raw label + 1
    assert torch.equal(r.labels[mid], labels[r.gt_inds[mid]] + 1)
    assert (r.max_overlaps[N:, 0] == 1).all()                             # each GT row matches itself


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_instance"):
        MultiInstanceAssigner(num_instance=0)
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MultiInstanceAssigner(neg_iou_thr=(0.1, 0.5))
    with pytest.raises(ValueError, match="priors"):
        MultiInstanceAssigner().assign(Instances(bboxes=torch.zeros(2, 4)),
                                       Instances(bboxes=torch.zeros(1, 4), labels=torch.zeros(1, dtype=torch.long)))
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        MultiInstanceAssigner().assign(Instances(priors=torch.zeros(2, 4)),
                                       Instances(bboxes=torch.tensor([[5.0, 5, 0, 0]]), labels=torch.zeros(1).long()))
