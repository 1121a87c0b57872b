"""PointAssigner: hand-worked case, mmdet 3.3.0 parity, properties, bad inputs."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.point import PointAssigner
from tests.oracles import mmdet
from tests.fixtures import make_gts

# Level 3 (stride 8): points 0-3 at x = 4, 12, 20, 28 (y 4); level 4 (stride 16): points 4-5 at x = 8, 24 (y 8).
POINTS = torch.tensor([[4.0, 4, 8], [12, 4, 8], [20, 4, 8], [28, 4, 8], [8, 8, 16], [24, 8, 16]])


def make_points(img=128, strides=(8, 16, 32, 64), offset=0.5):
    pts = []
    for s in strides:
        n = math.ceil(img / s)
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        xy = (torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() + offset) * s
        pts.append(torch.cat([xy, torch.full((n * n, 1), float(s))], 1))
    return torch.cat(pts)


def assign(assigner, points, gt, labels):
    return assigner.assign(Instances(priors=points), Instances(bboxes=gt, labels=labels))


# ----------------------------------------------------------------------------- hand-worked
def test_hand_worked_levels_and_nearest():
    # scale 4, pos_num 2.
    # GT1 [0,0,16,8]: level int((log2(16/4) + log2(8/4)) / 2) = int(1.5) = 1 -> clamped to [3, 4] -> 3.
    #   centre (8,4), size (16,8): distances |(p - c) / size| to points 0-3: 4/16=0.25, 0.25, 0.75, 1.25 -> 0, 1.
    # GT2 [8,0,72,64]: level log2(64/4) = 4. centre (40,32), size 64: point 4 |(-0.5, -0.375)| = 0.625,
    #   point 5 |(-0.25, -0.375)| = 0.4507 -> both (only 2 points on level 4).
    # GT3 [10,0,26,8]: level 3, centre (18,4): 14/16=0.875, 6/16=0.375, 2/16=0.125, 10/16=0.625 -> 2, 1.
    # Point 1 is chosen by GT1 (0.25) and GT3 (0.375): the nearer GT1 keeps it.
    gt = torch.tensor([[0.0, 0, 16, 8], [8, 0, 72, 64], [10, 0, 26, 8]])
    res = assign(PointAssigner(scale=4, pos_num=2), POINTS, gt, torch.tensor([5, 6, 7]))
    assert res.gt_inds.tolist() == [1, 1, 3, 0, 2, 2]
    assert res.labels.tolist() == [5, 5, 7, -1, 6, 6]
    assert res.max_overlaps is None
    torch.testing.assert_close(res.assigned_dist,
                               torch.tensor([0.25, 0.25, 0.125, math.inf, 0.625, math.hypot(0.25, 0.375)]))


def test_equal_distance_goes_to_first_gt():
    # Two identical GTs choose the same points at equal distance: mmdet overwrites only on "<", GT 1 keeps them.
    gt = torch.tensor([[0.0, 0, 16, 8], [0, 0, 16, 8]])
    res = assign(PointAssigner(pos_num=2), POINTS, gt, torch.tensor([0, 1]))
    assert res.gt_inds.tolist() == [1, 1, 0, 0, 0, 0]


def test_level_smaller_than_pos_num_takes_all():
    # pos_num 5 > 2 points on level 4: the GT takes both (mmdet's topk would raise).
    res = assign(PointAssigner(pos_num=5), POINTS, torch.tensor([[8.0, 0, 72, 64]]), torch.tensor([0]))
    assert res.gt_inds.tolist() == [0, 0, 0, 0, 1, 1]


def test_empty_gt_and_empty_points():
    a = PointAssigner()
    none = assign(a, POINTS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert none.gt_inds.tolist() == [0] * 6 and none.labels.tolist() == [-1] * 6 and none.max_overlaps is None
    empty = assign(a, torch.zeros(0, 3), torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([0]))
    assert empty.gt_inds.shape == (0,) and empty.num_gts == 1


def test_build_from_config():
    a = build_assigner(dict(type="PointAssigner", scale=4, pos_num=1))
    assert isinstance(a, PointAssigner) and a.pos_num == 1


# ----------------------------------------------------------------------------- oracle parity
def _case(seed):
    g = torch.Generator().manual_seed(seed)
    points = make_points(offset=0.5 if seed % 2 else 0.0)
    m = [0, 1, 3, 6, 10, 16][seed % 6]
    kind = seed % 4
    if kind == 0:
        gt = make_gts(g, m, lo=0.5, hi=6.0)                 # tiny: clamped to the lowest level
    elif kind == 1:
        gt = make_gts(g, m, lo=2.0, hi=200.0, off=0.6)                        # off-image
    else:
        gt = make_gts(g, m, lo=2.0, hi=200.0)
    if m > 2 and seed % 3 == 0:
        gt[2] = gt[0]
    return points, gt, torch.randint(0, 5, (m,), generator=g)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(36))
def test_matches_mmdet(seed):
    O = mmdet()
    points, gt, labels = _case(seed)
    kw = dict(scale=[4, 2, 8][seed % 3], pos_num=[3, 1, 5][seed % 3])
    ref = O.assigners.PointAssigner(**kw).assign(O.InstanceData(priors=points),
                                                 O.InstanceData(bboxes=gt, labels=labels))
    ours = assign(PointAssigner(**kw), points, gt, labels)
    assert torch.equal(ours.gt_inds, ref.gt_inds) and torch.equal(ours.labels, ref.labels)
    assert ours.max_overlaps is None and ref.max_overlaps is None


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_fp16_points_match_mmdet_on_float32_copy(seed):
    O = mmdet()
    points, gt, labels = _case(seed + 40)
    points16 = points.half()
    ref = O.assigners.PointAssigner().assign(O.InstanceData(priors=points16.float()),
                                             O.InstanceData(bboxes=gt, labels=labels))
    assert torch.equal(assign(PointAssigner(), points16, gt, labels).gt_inds, ref.gt_inds)


# ----------------------------------------------------------------------------- properties
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 10), pos_num=st.integers(1, 4))
def test_gt_permutation_equivariance(seed, m, pos_num):
    g = torch.Generator().manual_seed(seed)
    points = make_points(img=64)
    gt, labels = make_gts(g, m, img=64, lo=2.0, hi=200.0), torch.randint(0, 3, (m,), generator=g)
    a = PointAssigner(pos_num=pos_num)
    perm = torch.randperm(m, generator=g)
    base, permuted = assign(a, points, gt, labels), assign(a, points, gt[perm], labels[perm])
    mapped = torch.where(permuted.gt_inds > 0, perm[(permuted.gt_inds - 1).clamp(min=0)] + 1, permuted.gt_inds)
    assert torch.equal(mapped, base.gt_inds)
    assert torch.equal(permuted.assigned_dist, base.assigned_dist)
    # at most pos_num positives per GT, all on the GT's level
    counts = torch.bincount(base.gt_inds[base.gt_inds > 0], minlength=m + 1)[1:]
    assert (counts <= pos_num).all()


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    with pytest.raises(ValueError, match="pos_num"):
        PointAssigner(pos_num=0)
    with pytest.raises(ValueError, match="scale"):
        PointAssigner(scale=0)
    a = PointAssigner()
    gt, labels = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0])
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assign(a, torch.zeros(4, 4), gt, labels)
    with pytest.raises(ValueError, match="stride"):
        assign(a, torch.tensor([[1.0, 1, 0]]), gt, labels)
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assign(a, torch.tensor([[1.0, float("nan"), 8]]), gt, labels)
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        assign(a, POINTS, torch.tensor([[10.0, 0, 0, 10]]), labels)
    with pytest.raises(ValueError, match="gt_instances.labels"):
        assign(a, POINTS, gt, torch.tensor([0, 1]))
