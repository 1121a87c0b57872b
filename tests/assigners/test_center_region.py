import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.boxes import bbox_overlaps
from detassign.assigners.center_region import CenterRegionAssigner, gt_priorities, scale_boxes
from tests.oracles import mmdet


def grid_priors(n=5, cell=10.0):
    """n x n priors of side ``cell``, row-major: prior 5 * row + col = [cell*col, cell*row, ...]."""
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    x1, y1 = xs.flatten().float() * cell, ys.flatten().float() * cell
    return torch.stack([x1, y1, x1 + cell, y1 + cell], 1)


def gts(boxes, labels):
    return Instances(bboxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels))


# ------------------------------------------------------------------ hand-worked cases
# 25 priors of 10 x 10 px on a 50 x 50 image (centres 5, 15, ..., 45); GT a = whole image, GT b = [10, 10, 30, 30].
BIG, SMALL = [0.0, 0.0, 50.0, 50.0], [10.0, 10.0, 30.0, 30.0]
HAND = dict(pos_scale=0.2, neg_scale=0.6, min_pos_iof=0.01)
# a: core = centre 25 +- 25 * 0.2 = [20, 30]^2, shadow = 25 +- 15 = [10, 40]^2.
#    core: only prior (2, 2) = 12 overlaps [20, 30]^2 with positive area (iof 1); its centre is inside a.
#    shadow: priors rows/cols 1..3 (iof 1) minus the core prior 12 -> 6, 7, 8, 11, 13, 16, 17, 18.
# b: core = 20 +- 2 = [18, 22]^2: priors 6, 7, 11, 12 overlap it by 2 x 2 px -> iof 0.04 > 0.01, and their
#    centres (15 or 25) are strictly inside b. shadow = 20 +- 6 = [14, 26]^2: the same four priors (iof 0.36),
#    all in b's core -> none left.
# prior 12 lies in both cores: b is smaller (400 < 2500) and wins; (12, a) becomes a lost core pair.
SHADOW_A = [6, 7, 8, 11, 13, 16, 17, 18]


def test_hand_worked_core_shadow_and_smallest_wins():
    res = CenterRegionAssigner(**HAND).assign(Instances(priors=grid_priors()), gts([BIG, SMALL], [0, 1]))
    expected = torch.zeros(25, dtype=torch.long)
    expected[[6, 7, 11, 12]] = 2
    assert torch.equal(res.gt_inds, expected)
    assert torch.equal(res.labels, torch.where(expected > 0, 1, -1))
    # shadow pairs first (prior order), then the lost core pair; column 1 is a's class 0
    rows = [[p, 0] for p in SHADOW_A] + [[12, 0]]
    assert torch.equal(res.shadowed_labels, torch.tensor(rows))
    assert torch.equal(res.get_extra_property("shadowed_labels"), res.shadowed_labels)
    assert res.max_overlaps is None and res.num_gts == 2


def test_hand_worked_same_class_shadow_demotes_or_dominates():
    # both GTs class 0: b's positives 6, 7, 11 (a's shadow) and 12 (a's lost core) carry a's class 0,
    # equal to their own label. Default: demoted to negative (gt_inds 0, label -1), rows kept.
    res = CenterRegionAssigner(**HAND).assign(Instances(priors=grid_priors()), gts([BIG, SMALL], [0, 0]))
    assert (res.gt_inds == 0).all() and (res.labels == -1).all()
    assert res.shadowed_labels[:, 0].tolist() == SHADOW_A + [12]
    # foreground_dominate: they stay positive and their rows leave shadowed_labels
    res = CenterRegionAssigner(**HAND, foreground_dominate=True).assign(
        Instances(priors=grid_priors()), gts([BIG, SMALL], [0, 0]))
    assert torch.nonzero(res.gt_inds == 2).flatten().tolist() == [6, 7, 11, 12]
    assert res.shadowed_labels.tolist() == [[8, 0], [13, 0], [16, 0], [17, 0], [18, 0]]


def test_hand_worked_ignore_boxes():
    # ignore box [28, 28, 52, 52] scaled by 0.5 about (40, 40) -> [34, 46]^2: centres 35 and 45 are strictly
    # inside -> priors 18, 19, 23, 24 ignored; 18 stays in shadowed_labels (a's shadow).
    ignore = Instances(bboxes=torch.tensor([[28.0, 28.0, 52.0, 52.0]]))
    res = CenterRegionAssigner(**HAND).assign(Instances(priors=grid_priors()), gts([BIG, SMALL], [0, 1]), ignore)
    assert torch.nonzero(res.gt_inds == -1).flatten().tolist() == [18, 19, 23, 24]
    assert (res.labels[[18, 19, 23, 24]] == -1).all()
    assert res.shadowed_labels[:, 0].tolist() == SHADOW_A + [12]
    # with ignore_gt_scale = 0.4 the box is [35.2, 44.8]^2 and no centre is strictly inside
    res = CenterRegionAssigner(**HAND, ignore_gt_scale=0.4).assign(
        Instances(priors=grid_priors()), gts([BIG, SMALL], [0, 1]), ignore)
    assert (res.gt_inds >= 0).all()


def test_hand_worked_equal_areas_later_gt_wins():
    # two 20 x 20 GTs centred at 20 and 25: cores [18, 22]^2 and [23, 27]^2 (pos_scale 0.2). Prior 12 =
    # [20, 30]^2 overlaps both (iof 0.04 each) and its centre 25 is inside both -> equal areas: the later GT wins.
    boxes = [SMALL, [15.0, 15.0, 35.0, 35.0]]
    res = CenterRegionAssigner(**HAND).assign(Instances(priors=grid_priors()), gts(boxes, [0, 1]))
    assert res.gt_inds[12] == 2
    res = CenterRegionAssigner(**HAND).assign(Instances(priors=grid_priors()), gts(boxes[::-1], [1, 0]))
    assert res.gt_inds[12] == 2
    assert gt_priorities(torch.tensor([BIG, SMALL, SMALL, BIG])).tolist() == [0, 2, 3, 1]


def test_scale_boxes_and_min_pos_iof():
    # [0, 0, 10, 20] scaled 0.5 about (5, 10) -> [2.5, 5, 7.5, 15]
    assert scale_boxes(torch.tensor([[0.0, 0, 10, 20]]), 0.5).tolist() == [[2.5, 5.0, 7.5, 15.0]]
    # b's cores overlap priors 6, 7, 11, 12 by iof 0.04: a threshold of 0.05 removes them (a keeps prior 12)
    res = CenterRegionAssigner(0.2, 0.6, min_pos_iof=0.05).assign(Instances(priors=grid_priors()),
                                                                   gts([BIG, SMALL], [0, 1]))
    assert torch.nonzero(res.gt_inds).flatten().tolist() == [12] and res.gt_inds[12] == 1


def test_empty_gt_and_empty_priors():
    empty = gts([], []).bboxes.reshape(0, 4)
    res = CenterRegionAssigner(0.2, 0.5).assign(
        Instances(priors=grid_priors()), Instances(bboxes=empty, labels=torch.zeros(0, dtype=torch.long)))
    assert (res.gt_inds == 0).all() and (res.labels == -1).all() and res.shadowed_labels.shape == (0, 2)
    # ignore boxes still apply without GTs (as mmdet)
    ignore = Instances(bboxes=torch.tensor([[0.0, 0.0, 20.0, 20.0]]))  # scale 1: centres 5 and 15 strictly inside
    res = CenterRegionAssigner(0.2, 0.5, ignore_gt_scale=1.0).assign(
        Instances(priors=grid_priors()), Instances(bboxes=empty, labels=torch.zeros(0, dtype=torch.long)), ignore)
    assert torch.nonzero(res.gt_inds == -1).flatten().tolist() == [0, 1, 5, 6]
    res = CenterRegionAssigner(0.2, 0.5).assign(Instances(priors=torch.zeros(0, 4)), gts([BIG], [2]))
    assert res.gt_inds.shape == (0,) and res.shadowed_labels.shape == (0, 2) and res.num_gts == 1


def test_registry_and_iou_calculator_compat():
    cfg = dict(type="CenterRegionAssigner", pos_scale=0.2, neg_scale=0.2, min_pos_iof=0.01,
               iou_calculator=dict(type="BboxOverlaps2D"))
    a = build_assigner(cfg)
    b = CenterRegionAssigner(0.2, 0.2, iou_calculator=lambda x, y, mode: bbox_overlaps(x, y, mode=mode))
    args = (Instances(priors=grid_priors()), gts([BIG, SMALL], [0, 1]))
    ra, rb = a.assign(*args), b.assign(*args)
    assert torch.equal(ra.gt_inds, rb.gt_inds) and torch.equal(ra.shadowed_labels, rb.shadowed_labels)
    assert "pos_scale=0.2" in repr(a)


# ------------------------------------------------------------------ oracle parity
def parity_case(seed):
    gen = torch.Generator().manual_seed(seed)
    if seed % 3 == 0:  # FSAF-like multi-level point priors: boxes of side 4 * stride centred on the grid
        per_level = []
        for stride, n in ((8, 16), (16, 8), (32, 4)):
            ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            c = torch.stack([xs.flatten(), ys.flatten()], 1).float() * stride + stride / 2
            per_level.append(torch.cat([c - 2 * stride, c + 2 * stride], 1))
        priors = torch.cat(per_level)
    else:  # random proposals
        num = (0, 150, 300)[seed % 3] if seed % 7 else 0
        c = torch.rand(num, 2, generator=gen) * 128
        wh = torch.rand(num, 2, generator=gen) * 40 + 1
        priors = torch.cat([c - wh / 2, c + wh / 2], 1)
    num = (0, 1, 4, 9, 16, 30)[seed % 6]
    c = torch.rand(num, 2, generator=gen) * 168 - 20
    wh = torch.exp(torch.rand(num, 2, generator=gen) * math.log(140.0)) + 0.5
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    if 4 <= num <= 16:  # equal areas tie only where mmdet's sort is stable (M <= 16)
        boxes[1] = boxes[0]                                           # duplicate
        boxes[2] = boxes[3] + torch.tensor([6.0, 3.0, 6.0, 3.0])      # same area, overlapping
    if num >= 9:
        boxes[4] = torch.tensor([-80.0, -60.0, -20.0, -10.0])        # off the image
        boxes[5, 2:] = boxes[5, :2] + 1.5                             # tiny
        boxes[6] = boxes[7] * 0.5 + torch.tensor([20.0, 20.0, 20.0, 20.0])  # nested-ish
    labels = torch.randint(0, 3, (num,), generator=gen)               # few classes: same-class shadows occur
    num_ign = (0, 1, 3)[seed % 3]
    c = torch.rand(num_ign, 2, generator=gen) * 128
    wh = torch.rand(num_ign, 2, generator=gen) * 60
    ignore = torch.cat([c - wh / 2, c + wh / 2], 1) if seed % 4 else None
    kwargs = dict(pos_scale=(0.2, 0.5)[seed % 2], neg_scale=(0.2, 0.5, 0.8)[seed % 3],
                  min_pos_iof=(0.01, 0.1, 0.0)[seed % 5 % 3], ignore_gt_scale=(0.5, 1.0)[seed // 2 % 2],
                  foreground_dominate=seed % 4 >= 2)
    return priors, boxes, labels, ignore, kwargs


def run_both(priors, boxes, labels, ignore, kwargs, dtype=None):
    O = mmdet()
    cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    ours = CenterRegionAssigner(**kwargs).assign(
        Instances(priors=cast(priors)), Instances(bboxes=cast(boxes), labels=labels),
        None if ignore is None else Instances(bboxes=cast(ignore)))
    up = (lambda t: t) if dtype is None else (lambda t: t.to(dtype).float())
    ref = O.assigners.CenterRegionAssigner(**kwargs).assign(
        O.InstanceData(priors=up(priors)), O.InstanceData(bboxes=up(boxes), labels=labels),
        None if ignore is None else O.InstanceData(bboxes=up(ignore)))
    return ours, ref


def check_parity(ours, ref):
    assert torch.equal(ours.gt_inds, ref.gt_inds)
    assert torch.equal(ours.labels, ref.labels)
    assert torch.equal(ours.shadowed_labels, ref.get_extra_property("shadowed_labels"))  # rows in mmdet's order
    assert ours.max_overlaps is None and ref.max_overlaps is None and ours.num_gts == ref.num_gts


@pytest.mark.oracle
def test_parity_with_mmdet_random_cases():
    totals = torch.zeros(4, dtype=torch.long)
    for seed in range(48):
        ours, ref = run_both(*parity_case(seed))
        check_parity(ours, ref)
        priors, boxes, labels, ignore, kwargs = parity_case(seed)
        flipped = CenterRegionAssigner(**{**kwargs, "foreground_dominate": not kwargs["foreground_dominate"]}).assign(
            Instances(priors=priors), Instances(bboxes=boxes, labels=labels))
        same_class = abs(len(flipped.shadowed_labels) - len(ours.shadowed_labels)) if ignore is None else 0
        totals += torch.tensor([int((ours.gt_inds > 0).sum()), int((ours.gt_inds < 0).sum()),
                                len(ours.shadowed_labels), same_class])
    # positives, ignores, shadow rows and same-class shadows (where foreground_dominate matters) all occur
    assert (totals >= torch.tensor([300, 100, 1000, 5])).all(), totals


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_parity_with_mmdet_dtypes(dtype):
    # float64 runs in float64 on both sides; float16 runs in float32 here (mmdet gets the float32 copy)
    for seed in range(1, 12):
        priors, boxes, labels, ignore, kwargs = parity_case(seed)
        if dtype is torch.float64:
            cast = (lambda t: None if t is None else t.double())
            check_parity(*run_both(cast(priors), cast(boxes), labels, cast(ignore), kwargs))
        else:
            check_parity(*run_both(priors, boxes, labels, ignore, kwargs, dtype=dtype))


@pytest.mark.oracle
def test_parity_with_mmdet_iou_calculator_instance():
    O = mmdet()
    calc = O.task_utils.build(dict(type="BboxOverlaps2D"))
    priors, boxes, labels, ignore, kwargs = parity_case(9)
    ours = CenterRegionAssigner(**kwargs, iou_calculator=calc).assign(
        Instances(priors=priors), Instances(bboxes=boxes, labels=labels))
    ref = O.assigners.CenterRegionAssigner(**kwargs).assign(
        O.InstanceData(priors=priors), O.InstanceData(bboxes=boxes, labels=labels))
    check_parity(ours, ref)


# ------------------------------------------------------------------ properties
box_strategy = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(2, 45), st.integers(2, 45), st.integers(0, 2)),
    min_size=1, max_size=8)


@given(box_strategy, st.permutations(list(range(8))), st.booleans())
def test_equivariant_to_gt_permutation_with_distinct_areas(items, perm8, dominate):
    # with distinct areas the only order dependence left is the row order of shadowed_labels
    items = [(x, y, w + 0.01 * i, h, c) for i, (x, y, w, h, c) in enumerate(items)]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in items], dtype=torch.float32)
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    assume(len(set(areas)) == len(areas))
    labels = torch.tensor([c for *_, c in items])
    perm = torch.tensor([p for p in perm8 if p < len(items)])
    priors = grid_priors(8, 8.0)
    a = CenterRegionAssigner(0.3, 0.6, foreground_dominate=dominate)
    base = a.assign(Instances(priors=priors), Instances(bboxes=boxes, labels=labels))
    moved = a.assign(Instances(priors=priors), Instances(bboxes=boxes[perm], labels=labels[perm]))
    back = torch.where(moved.gt_inds > 0, perm[(moved.gt_inds - 1).clamp(min=0)] + 1, moved.gt_inds)
    assert torch.equal(back, base.gt_inds)
    assert torch.equal(moved.labels, base.labels)
    assert sorted(map(tuple, moved.shadowed_labels.tolist())) == sorted(map(tuple, base.shadowed_labels.tolist()))


@given(box_strategy)
def test_positives_have_centre_inside_their_gt(items):
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in items], dtype=torch.float32)
    priors = grid_priors(8, 8.0)
    res = CenterRegionAssigner(0.3, 0.6).assign(Instances(priors=priors),
                                                Instances(bboxes=boxes, labels=torch.zeros(len(items)).long()))
    pos = res.gt_inds > 0
    centres = (priors[pos, :2] + priors[pos, 2:]) / 2
    own = boxes[res.gt_inds[pos] - 1]
    assert ((centres > own[:, :2]) & (centres < own[:, 2:])).all()
    assert set(res.gt_inds.tolist()) <= set(range(0, len(items) + 1))


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs():
    a = CenterRegionAssigner(0.2, 0.5)
    pred, gt = Instances(priors=grid_priors()), gts([BIG, SMALL], [0, 1])
    with pytest.raises(ValueError, match="pred_instances.priors"):
        a.assign(Instances(priors=torch.zeros(25, 2)), gt)
    with pytest.raises(ValueError, match="gt_instances.labels is required"):
        a.assign(pred, Instances(bboxes=gt.bboxes))
    with pytest.raises(ValueError, match="gt_instances.labels"):
        a.assign(pred, Instances(bboxes=gt.bboxes, labels=torch.tensor([0])))
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        a.assign(pred, gts([[10.0, 10, 0, 20]], [0]))
    with pytest.raises(ValueError, match="gt_instances_ignore.bboxes"):
        a.assign(pred, gt, Instances(bboxes=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="pred_instances.priors must be finite"):
        a.assign(Instances(priors=torch.full((2, 4), float("inf"))), gt)
    for bad in (dict(pos_scale=-1.0), dict(neg_scale=float("nan")), dict(ignore_gt_scale=-0.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CenterRegionAssigner(**{"pos_scale": 0.2, "neg_scale": 0.5, **bad})
    with pytest.raises(ValueError, match="iou_calculator"):
        CenterRegionAssigner(0.2, 0.5, iou_calculator=dict(type="BboxOverlaps2D", dtype="fp32"))
    with pytest.raises(TypeError, match="iou_calculator"):
        CenterRegionAssigner(0.2, 0.5, iou_calculator="iof")


@pytest.mark.cuda
def test_cuda_matches_cpu():
    for seed in range(1, 6):
        priors, boxes, labels, ignore, kwargs = parity_case(seed)
        cpu = CenterRegionAssigner(**kwargs).assign(Instances(priors=priors), Instances(bboxes=boxes, labels=labels),
                                                    None if ignore is None else Instances(bboxes=ignore))
        gpu = CenterRegionAssigner(**kwargs).assign(
            Instances(priors=priors.cuda()), Instances(bboxes=boxes.cuda(), labels=labels.cuda()),
            None if ignore is None else Instances(bboxes=ignore.cuda()))
        assert torch.equal(gpu.gt_inds.cpu(), cpu.gt_inds) and torch.equal(gpu.labels.cpu(), cpu.labels)
        assert torch.equal(gpu.shadowed_labels.cpu(), cpu.shadowed_labels)


@pytest.mark.oracle
def test_signature_matches_mmdet():
    import inspect
    ref = mmdet().assigners.CenterRegionAssigner

    def names(fn):
        return [p.name for p in inspect.signature(fn).parameters.values()]

    assert names(CenterRegionAssigner.assign) == names(ref.assign)
    assert names(CenterRegionAssigner.__init__) == names(ref.__init__)
    defaults = {p.name: p.default for p in inspect.signature(ref.__init__).parameters.values()}
    ours = CenterRegionAssigner(0.2, 0.2)
    assert (ours.min_pos_iof, ours.ignore_gt_scale, ours.foreground_dominate, ours.iou_calculator) == (
        defaults["min_pos_iof"], defaults["ignore_gt_scale"], defaults["foreground_dominate"],
        defaults["iou_calculator"])
