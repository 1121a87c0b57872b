import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.region import RegionAssigner, target_levels
from tests.oracles import mmdet

STRIDES = [8, 16, 32]
SIZES = [(16, 16), (8, 8), (4, 4)]


def level_anchors(strides, sizes, anchor_scale, jitter=0.0, gen=None):
    """mmdet AnchorGenerator layout (centre offset 0, ratio 1): level l has h_l * w_l anchors of side
    anchor_scale * stride_l centred at (x * stride_l, y * stride_l), row-major. Optional jitter (px / stride)."""
    per_level = []
    for stride, (h, w) in zip(strides, sizes):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cx, cy = xs.flatten().float() * stride, ys.flatten().float() * stride
        half = anchor_scale * stride / 2
        a = torch.stack([cx - half, cy - half, cx + half, cy + half], 1)
        if jitter:
            a = a + torch.randn(a.shape, generator=gen) * stride * jitter
        per_level.append(a)
    return torch.cat(per_level), [len(a) for a in per_level]


def padded_valid_flags(strides, sizes, img_shape):
    """mmdet's valid flags: locations inside ceil(img / stride) of each (padded) feature map."""
    flags = []
    for stride, (h, w) in zip(strides, sizes):
        vh, vw = min(math.ceil(img_shape[0] / stride), h), min(math.ceil(img_shape[1] / stride), w)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        flags.append(((ys < vh) & (xs < vw)).flatten())
    return torch.cat(flags)


def random_gts(gen, num, lo=-20.0, hi=148.0, max_side=160.0):
    """GTs with log-uniform sides 1..max_side, centres in [lo, hi] (some off the 128 px image)."""
    c = torch.rand(num, 2, generator=gen) * (hi - lo) + lo
    wh = torch.exp(torch.rand(num, 2, generator=gen) * math.log(max_side))
    return torch.cat([c - wh / 2, c + wh / 2], 1)


def run_both(priors, valid, gts, labels, meta, sizes, counts, scale, strides, allowed_border, dtype=None):
    """(ours with mmdet_labels, ours default, mmdet). With ``dtype`` ours gets that dtype and mmdet float32 copies."""
    O = mmdet()
    if dtype is not None:
        priors, gts = priors.to(dtype), gts.to(dtype)
    args = (meta, sizes, counts, scale, strides)
    results = []
    for assigner in (RegionAssigner(mmdet_labels=True), RegionAssigner()):
        results.append(assigner.assign(Instances(priors=priors, valid_flags=valid),
                                       Instances(bboxes=gts, labels=labels), *args, allowed_border=allowed_border))
    ref_priors, ref_gts = (priors, gts) if dtype is None else (priors.float(), gts.float())
    ref = O.assigners.RegionAssigner().assign(
        O.InstanceData(priors=ref_priors, valid_flags=valid), O.InstanceData(bboxes=ref_gts, labels=labels), *args,
        allowed_border=allowed_border)
    return results[0], results[1], ref


# ------------------------------------------------------------------ hand-worked cases
HAND_STRIDES, HAND_SIZES, HAND_SCALE = [8, 16], [(8, 8), (4, 4)], 4
GT_A = [8.0, 8.0, 48.0, 32.0]


def hand_inputs(gts, labels, valid=None):
    anchors, counts = level_anchors(HAND_STRIDES, HAND_SIZES, HAND_SCALE)  # 64 + 16 anchors, sides 32 / 64 px
    valid = torch.ones(len(anchors), dtype=torch.bool) if valid is None else valid
    return (Instances(priors=anchors, valid_flags=valid),
            Instances(bboxes=torch.tensor(gts), labels=torch.tensor(labels)),
            dict(img_shape=(64, 64, 3)), HAND_SIZES, counts, HAND_SCALE, HAND_STRIDES)


def test_hand_worked_regions_and_adjacent_level():
    # GT A = [8, 8, 48, 32]: w 40, h 24, sqrt(960) = 30.98; level = floor(log2(30.98) - log2(4 * 8) + 0.5)
    #   = floor(-0.047 + 0.5) = 0 (stride 8). Anchor centres are integer grid points (x, y), index 8y + x.
    # Level 0, f = box / 8 = [1, 1, 6, 4]:
    #   centre r1 = 0.4: x1 = round(0.6*1 + 0.4*6 = 3.0) = 3, x2 = round(0.4*1 + 0.6*6 = 4.0) = 4,
    #                    y1 = round(0.6 + 1.6 = 2.2) = 2,   y2 = round(0.4 + 2.4 = 2.8) = 3
    #     -> x in [3, 4], y in [2, 3]: anchors 19, 20, 27, 28 positive (27 invalid -> -1)
    #   ignore r2 = 0.25: x1 = round(0.75 + 1.5 = 2.25) = 2, x2 = round(0.25 + 4.5 = 4.75) = 5,
    #                     y1 = round(0.75 + 1.0 = 1.75) = 2, y2 = round(0.25 + 3.0 = 3.25) = 3
    #     -> x in [2, 5], y in [2, 3]: the ring 18, 21, 26, 29 is ignored
    # Level 1 (adjacent), f = box / 16 = [0.5, 0.5, 3, 2]: ignore x1 = round(0.375 + 0.75) = 1,
    #   x2 = round(0.125 + 2.25) = 2, y1 = round(0.375 + 0.5) = 1, y2 = round(0.125 + 1.5) = 2
    #     -> level-1 anchors (1,1), (2,1), (1,2), (2,2) = 64 + {5, 6, 9, 10} ignored.
    valid = torch.ones(80, dtype=torch.bool)
    valid[27] = False
    args = hand_inputs([GT_A], [3], valid)
    res = RegionAssigner().assign(*args, allowed_border=-1)  # negative border: only valid_flags count
    expected = torch.zeros(80, dtype=torch.long)
    expected[[19, 20, 28]] = 1
    expected[[18, 21, 26, 29, 27, 69, 70, 73, 74]] = -1
    assert torch.equal(res.gt_inds, expected)
    assert torch.equal(res.labels, torch.where(expected > 0, 3, -1))
    assert res.max_overlaps is None and res.num_gts == 1
    mm = RegionAssigner(mmdet_labels=True).assign(*args, allowed_border=-1)
    assert torch.equal(mm.labels, torch.where(expected > 0, 3, 0))


def test_hand_worked_image_border():
    # allowed_border = 0 on a 64 x 64 image: a level-0 anchor (side 32) centred at 8x is inside iff
    # 8x - 16 >= 0 and 8x + 16 < 64, i.e. x in {2..5} (same for y); a level-1 anchor (side 64) never is.
    res = RegionAssigner().assign(*hand_inputs([GT_A], [3]), allowed_border=0)
    g = res.gt_inds
    lvl0 = g[:64].view(8, 8)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    assert (lvl0[~inside] == -1).all() and (g[64:] == -1).all()
    assert torch.equal(torch.nonzero(g == 1).flatten(), torch.tensor([19, 20, 27, 28]))
    # allowed_border = 16: 8x - 16 >= -16 and 8x + 16 < 80 hold for every x in 0..7, so level 0 is as
    # with no border test; level 1 keeps only x, y in {1, 2} (16x - 32 >= -16, 16x + 32 < 80), which are
    # exactly the anchors already ignored through the adjacent level: level 1 is all -1.
    res = RegionAssigner().assign(*hand_inputs([GT_A], [3]), allowed_border=16)
    no_border = RegionAssigner().assign(*hand_inputs([GT_A], [3]), allowed_border=-1)
    assert torch.equal(res.gt_inds[:64], no_border.gt_inds[:64])
    assert (res.gt_inds[64:] == -1).all() and (no_border.gt_inds[64:] == -1).sum() == 4


def test_hand_worked_later_gt_wins_on_shared_level():
    # GT B = A shifted 8 px right = [16, 8, 56, 32], also level 0; f = [2, 1, 7, 4]:
    #   centre x1 = round(1.2 + 2.8 = 4.0) = 4, x2 = round(0.8 + 4.2 = 5.0) = 5 -> x in [4, 5], y in [2, 3]
    #   ignore x1 = round(1.5 + 1.75 = 3.25) = 3, x2 = round(0.5 + 5.25 = 5.75) = 6 -> x in [3, 6]
    # mmdet writes GTs in index order, the last write wins:
    #   order (A, B): anchor 20 = (4, 2) is in both centres -> B (2); anchor 19 = (3, 2) is A's centre but
    #   B's ignore ring -> -1; anchor 21 = (5, 2) is B's centre -> 2.
    #   order (B, A): anchor 20 -> A (now 2); anchor 19 -> A (2); anchor 21 is in A's ignore ring -> -1.
    gt_b = [16.0, 8.0, 56.0, 32.0]
    ab = RegionAssigner().assign(*hand_inputs([GT_A, gt_b], [0, 1]), allowed_border=-1).gt_inds
    ba = RegionAssigner().assign(*hand_inputs([gt_b, GT_A], [1, 0]), allowed_border=-1).gt_inds
    assert ab[[19, 20, 21]].tolist() == [-1, 2, 2]
    assert ba[[19, 20, 21]].tolist() == [2, 2, -1]


def test_target_levels_formula():
    # anchor size 8 * 8 = 64: sqrt(area) 64 -> log2 ratio 0 -> floor(0.5) = 0; 91 -> 0.508 + 0.5 -> 1;
    # 90 -> 0.492 + 0.5 -> 0; 256 -> 2 + 0.5 -> 2; 1000 -> clamp 2; zero area -> -inf -> clamp 0.
    boxes = torch.tensor([[0.0, 0, 64, 64], [0, 0, 91, 91], [0, 0, 90, 90], [0, 0, 256, 256],
                          [0, 0, 1000, 1000], [5, 5, 5, 30]])
    assert target_levels(boxes, 8, 8, 3).tolist() == [0, 1, 0, 2, 2, 0]


def test_empty_gt_and_empty_priors():
    args = list(hand_inputs([GT_A], [3]))
    args[1] = Instances(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    for assigner in (RegionAssigner(), RegionAssigner(mmdet_labels=True)):
        # as mmdet: no GT -> every anchor negative, out-of-image ones included, labels -1
        res = assigner.assign(*args, allowed_border=0)
        assert torch.equal(res.gt_inds, torch.zeros(80, dtype=torch.long))
        assert torch.equal(res.labels, torch.full((80,), -1)) and res.max_overlaps is None
    pred = Instances(priors=torch.zeros(0, 4), valid_flags=torch.zeros(0, dtype=torch.bool))
    res = RegionAssigner().assign(pred, Instances(bboxes=torch.tensor([GT_A]), labels=torch.tensor([1])),
                                  dict(img_shape=(64, 64)), HAND_SIZES, [0, 0], HAND_SCALE, HAND_STRIDES)
    assert res.gt_inds.shape == (0,) and res.labels.shape == (0,) and res.num_gts == 1


def test_valid_flags_optional_and_registry():
    pred, gt, *rest = hand_inputs([GT_A], [3])
    with_flags = RegionAssigner().assign(pred, gt, *rest)
    without = build_assigner(dict(type="RegionAssigner", center_ratio=0.2, ignore_ratio=0.5)).assign(
        Instances(priors=pred.priors), gt, *rest)
    assert torch.equal(with_flags.gt_inds, without.gt_inds)
    # an empty ignore set is accepted (mmdet raises for any ignore instance)
    empty_ignore = Instances(bboxes=torch.zeros(0, 4))
    assert torch.equal(RegionAssigner().assign(pred, gt, *rest, gt_instances_ignore=empty_ignore).gt_inds,
                       with_flags.gt_inds)


# ------------------------------------------------------------------ oracle parity
def parity_case(seed):
    gen = torch.Generator().manual_seed(seed)
    scale = (4, 8)[seed % 2]
    img_shape = ((128, 128, 3), (100, 120, 3), (128, 90, 3))[seed % 3]
    priors, counts = level_anchors(STRIDES, SIZES, scale, jitter=(0.0, 0.3)[seed % 4 >= 2], gen=gen)
    if seed % 5 == 0:
        valid = torch.rand(len(priors), generator=gen) > 0.15
    else:
        valid = padded_valid_flags(STRIDES, SIZES, img_shape)
    num = (0, 1, 3, 6, 12, 20)[seed % 6]
    gts = random_gts(gen, num)
    if num >= 3:
        gts[1] = gts[0]                                # duplicate GT: same regions, later wins
        gts[2, 2:] = gts[2, :2] + torch.rand(2, generator=gen) * 3  # tiny GT (< 3 px)
    if num >= 6:
        gts[3] = torch.tensor([-60.0, -50.0, -10.0, -5.0])         # entirely off the image
        gts[4] = torch.tensor([100.0, 2.0, 140.0, 60.0])           # crossing the right border
        gts[5, 2] = gts[5, 0]                                      # zero width
    labels = torch.randint(0, 5, (num,), generator=gen)
    border = (0, 8, -1, 64, 1000)[seed % 5]
    return priors, valid, gts, labels, dict(img_shape=img_shape), SIZES, counts, scale, STRIDES, border


def check_parity(ours_mm, ours, ref):
    assert torch.equal(ours_mm.gt_inds, ref.gt_inds)
    assert torch.equal(ours_mm.labels, ref.labels)
    if ref.num_gts:
        assert ref.max_overlaps is None
        assert torch.equal(ours.labels, torch.where(ref.gt_inds > 0, ref.labels, -1))
    else:  # mmdet's early return: labels -1 (and max_overlaps zeros, ours None)
        assert torch.equal(ours.labels, ref.labels)
    assert ours.max_overlaps is None and ours_mm.max_overlaps is None
    assert torch.equal(ours.gt_inds, ours_mm.gt_inds) and ours.num_gts == ref.num_gts


@pytest.mark.oracle
def test_parity_with_mmdet_random_cases():
    totals = torch.zeros(3, dtype=torch.long)
    for seed in range(48):
        ours_mm, ours, ref = run_both(*parity_case(seed))
        check_parity(ours_mm, ours, ref)
        totals += torch.stack([(ref.gt_inds > 0).sum(), (ref.gt_inds == 0).sum(), (ref.gt_inds < 0).sum()])
    assert (totals > 100).all(), totals  # the cases exercise positives, negatives and ignores


@pytest.mark.oracle
@pytest.mark.parametrize("ratios", [(0.2, 0.5), (0.5, 0.2), (0.0, 1.0), (1.0, 0.0), (0.3, 0.3)])
def test_parity_with_mmdet_other_ratios(ratios):
    O = mmdet()
    for seed in range(6):
        priors, valid, gts, labels, meta, sizes, counts, scale, strides, border = parity_case(seed + 3)
        args = (meta, sizes, counts, scale, strides)
        ref = O.assigners.RegionAssigner(*ratios).assign(
            O.InstanceData(priors=priors, valid_flags=valid), O.InstanceData(bboxes=gts, labels=labels), *args,
            allowed_border=border)
        ours = RegionAssigner(*ratios, mmdet_labels=True).assign(
            Instances(priors=priors, valid_flags=valid), Instances(bboxes=gts, labels=labels), *args,
            allowed_border=border)
        assert torch.equal(ours.gt_inds, ref.gt_inds) and torch.equal(ours.labels, ref.labels)


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_parity_with_mmdet_dtypes(dtype):
    # float64 runs in float64 on both sides; float16 runs in float32 here (mmdet gets the float32 copy)
    for seed in range(8):
        case = list(parity_case(seed + 11))
        if dtype is torch.float64:
            case[0], case[2] = case[0].double(), case[2].double()
            check_parity(*run_both(*case))
        else:
            check_parity(*run_both(*case, dtype=torch.float16))


@pytest.mark.oracle
def test_parity_large_image_many_levels():
    # a 5-level pyramid (Cascade RPN: strides 4..64, anchor scale 8) on a 320 x 256 image, 24 GTs
    strides, sizes = [4, 8, 16, 32, 64], [(80, 64), (40, 32), (20, 16), (10, 8), (5, 4)]
    for seed in range(2):
        gen = torch.Generator().manual_seed(100 + seed)
        priors, counts = level_anchors(strides, sizes, 8)
        valid = torch.ones(len(priors), dtype=torch.bool)
        gts = random_gts(gen, 24, lo=0.0, hi=300.0, max_side=300.0)
        labels = torch.randint(0, 80, (24,), generator=gen)
        check_parity(*run_both(priors, valid, gts, labels, dict(img_shape=(320, 256, 3)), sizes, counts, 8, strides,
                               (0, 32)[seed]))


# ------------------------------------------------------------------ properties
GRID_ANCHORS = level_anchors(STRIDES, SIZES, 8)
gt_strategy = st.lists(
    st.tuples(st.integers(-10, 130), st.integers(-10, 130), st.integers(1, 150), st.integers(1, 150)),
    min_size=1, max_size=10)


@given(gt_strategy, st.randoms(use_true_random=False))
def test_equivariant_to_permutations_within_level_order(boxes, rnd):
    # mmdet's only order dependence: among GTs of one target level the later one wins. Any permutation that
    # keeps the relative order of same-level GTs must permute gt_inds accordingly.
    gts = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32)
    labels = torch.arange(len(boxes)) % 3
    priors, counts = GRID_ANCHORS
    args = (dict(img_shape=(128, 128)), SIZES, counts, 8, STRIDES)
    levels = target_levels(gts, 8, STRIDES[0], 3).tolist()
    perm = list(range(len(boxes)))
    rnd.shuffle(perm)
    for lvl in range(3):  # restore index order among the GTs of each level, in the slots they occupy
        slots = [k for k, p in enumerate(perm) if levels[p] == lvl]
        for k, p in zip(slots, sorted(perm[k] for k in slots)):
            perm[k] = p
    perm_t = torch.tensor(perm)
    pred = Instances(priors=priors)
    base = RegionAssigner().assign(pred, Instances(bboxes=gts, labels=labels), *args, allowed_border=-1)
    moved = RegionAssigner().assign(pred, Instances(bboxes=gts[perm_t], labels=labels[perm_t]), *args,
                                    allowed_border=-1)
    # moved GT j is original perm[j]: map moved gt_inds back to original indices
    back = torch.where(moved.gt_inds > 0, perm_t[(moved.gt_inds - 1).clamp(min=0)] + 1, moved.gt_inds)
    assert torch.equal(back, base.gt_inds)
    assert torch.equal(moved.labels, base.labels)


@given(gt_strategy)
def test_positives_sit_on_their_target_level(boxes):
    gts = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32)
    priors, counts = GRID_ANCHORS
    res = RegionAssigner().assign(Instances(priors=priors), Instances(bboxes=gts, labels=torch.zeros(len(gts))
                                                                      .long()),
                                  dict(img_shape=(128, 128)), SIZES, counts, 8, STRIDES, allowed_border=-1)
    anchor_level = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    levels = target_levels(gts, 8, STRIDES[0], 3)
    pos = res.gt_inds > 0
    assert torch.equal(anchor_level[pos], levels[res.gt_inds[pos] - 1])
    assert set(res.gt_inds.unique().tolist()) <= set(range(-1, len(gts) + 1))


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs():
    pred, gt, meta, sizes, counts, scale, strides = hand_inputs([GT_A], [3])
    a = RegionAssigner()
    with pytest.raises(ValueError, match="pred_instances.priors"):
        a.assign(Instances(priors=torch.zeros(80, 5)), gt, meta, sizes, counts, scale, strides)
    with pytest.raises(ValueError, match="priors is required"):
        a.assign(Instances(boxes=pred.priors), gt, meta, sizes, counts, scale, strides)
    with pytest.raises(ValueError, match="valid_flags"):
        a.assign(Instances(priors=pred.priors, valid_flags=torch.ones(3, dtype=torch.bool)), gt, meta, sizes,
                 counts, scale, strides)
    with pytest.raises(ValueError, match="num_level_anchors"):
        a.assign(pred, gt, meta, sizes, [64, 15], scale, strides)
    with pytest.raises(ValueError, match="one entry per level"):
        a.assign(pred, gt, meta, sizes, counts, scale, [8, 16, 32])
    with pytest.raises(ValueError, match="anchor_strides"):
        a.assign(pred, gt, meta, sizes, counts, scale, [8, 0])
    with pytest.raises(ValueError, match="anchor_scale"):
        a.assign(pred, gt, meta, sizes, counts, -1, strides)
    with pytest.raises(ValueError, match="img_shape"):
        a.assign(pred, gt, dict(shape=(64, 64)), sizes, counts, scale, strides)
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        a.assign(pred, Instances(bboxes=torch.tensor([[10.0, 10, 5, 20]]), labels=torch.tensor([0])), meta, sizes,
                 counts, scale, strides)
    with pytest.raises(ValueError, match="gt_instances.bboxes must be finite"):
        a.assign(pred, Instances(bboxes=torch.tensor([[0.0, 0, float("nan"), 20]]), labels=torch.tensor([0])),
                 meta, sizes, counts, scale, strides)
    with pytest.raises(ValueError, match="gt_instances.labels"):  # fractional labels are refused, never truncated
        a.assign(pred, Instances(bboxes=gt.bboxes, labels=torch.tensor([0.5])), meta, sizes, counts, scale, strides)
    with pytest.raises(ValueError, match="gt_instances_ignore"):
        a.assign(pred, gt, meta, sizes, counts, scale, strides, gt_instances_ignore=Instances(bboxes=gt.bboxes))
    for bad in (dict(center_ratio=1.5), dict(ignore_ratio=-0.1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RegionAssigner(**bad)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    for seed in range(4):
        priors, valid, gts, labels, meta, sizes, counts, scale, strides, border = parity_case(seed + 20)
        args = (meta, sizes, counts, scale, strides)
        cpu = RegionAssigner().assign(Instances(priors=priors, valid_flags=valid),
                                      Instances(bboxes=gts, labels=labels), *args, allowed_border=border)
        gpu = RegionAssigner().assign(Instances(priors=priors.cuda(), valid_flags=valid.cuda()),
                                      Instances(bboxes=gts.cuda(), labels=labels.cuda()), *args,
                                      allowed_border=border)
        assert torch.equal(gpu.gt_inds.cpu(), cpu.gt_inds) and torch.equal(gpu.labels.cpu(), cpu.labels)


@pytest.mark.oracle
def test_signature_matches_mmdet():
    import inspect
    ref = mmdet().assigners.RegionAssigner

    def params(fn):
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(RegionAssigner.assign) == params(ref.assign)
    # the constructor adds one keyword option after mmdet's
    assert params(RegionAssigner.__init__)[:-1] == params(ref.__init__)
