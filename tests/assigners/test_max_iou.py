"""MaxIoUAssigner: hand-worked cases, mmdet 3.3.0 parity per knob combination, properties, errors."""
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.max_iou import MaxIoUAssigner, assign_wrt_overlaps, last_gt_wins, overlap_matrix
from detassign.boxes import pairwise_iof, pairwise_iou
from tests.oracles import mmdet

IMG = 100.0


# ----------------------------------------------------------------------------- shared helpers
def random_boxes(n, g, scale=IMG, tiny=False, grid=False):
    """n xyxy boxes; ``grid``: small integer coordinates, so IoUs tie often; ``tiny``: sides < 2."""
    if grid:
        xy = torch.randint(0, 6, (n, 2), generator=g).float() * 4
        wh = torch.randint(1, 4, (n, 2), generator=g).float() * 4
    else:
        xy = torch.rand(n, 2, generator=g) * scale
        wh = torch.rand(n, 2, generator=g) * (2.0 if tiny else scale / 3)
    return torch.cat([xy, xy + wh], 1)


def random_case(seed, max_priors=40, max_gts=6):
    """One image's (priors, gt boxes, gt labels, ignore boxes); the seed picks a corner case.

    seed % 10: 0 no GT, 1 no prior, 2 integer grid (ties), 3 tiny GTs, 4 off-image GTs,
    5 duplicated GT, 6 fp16 priors, 7 no prior and no GT, others plain random.
    """
    g = torch.Generator().manual_seed(seed)
    kind = seed % 10
    A = 0 if kind in (1, 7) else int(torch.randint(1, max_priors, (1,), generator=g))
    M = 0 if kind in (0, 7) else int(torch.randint(1, max_gts, (1,), generator=g))
    priors = random_boxes(A, g, grid=kind == 2)
    gts = random_boxes(M, g, grid=kind == 2, tiny=kind == 3)
    if kind == 4:  # partly or wholly outside a 100 x 100 image
        gts = gts + torch.tensor([-60.0, -60.0, 20.0, 20.0]) * torch.rand(M, 1, generator=g)
        gts[::2] += 150.0
    if kind == 5 and M > 1:
        gts[-1] = gts[0]
    if kind == 6:
        priors = priors.half()
    labels = torch.randint(0, 5, (M,), generator=g)
    ignore = random_boxes(int(torch.randint(0, 4, (1,), generator=g)), g, grid=kind == 2)
    return priors, gts, labels, ignore


def assert_same(ref, ours, what=""):
    """Exact equality of gt_inds, labels and max_overlaps with an mmdet AssignResult."""
    assert ref.num_gts == ours.num_gts, what
    assert torch.equal(ref.gt_inds, ours.gt_inds), f"{what}\nmmdet {ref.gt_inds}\nours  {ours.gt_inds}"
    assert torch.equal(ref.labels, ours.labels), f"{what}\nmmdet {ref.labels}\nours  {ours.labels}"
    assert ref.max_overlaps.dtype == ours.max_overlaps.dtype, what
    assert torch.equal(ref.max_overlaps, ours.max_overlaps), f"{what}\n{ref.max_overlaps}\n{ours.max_overlaps}"


def run_pair(ours_cls, ref_cls, kw, priors, gts, labels, ignore, **pred_fields):
    ours = ours_cls(**kw).assign(Instances(priors=priors, **pred_fields), Instances(bboxes=gts, labels=labels),
                                 Instances(bboxes=ignore))
    mm = mmdet()
    # fp16 priors: mmdet runs on the float32 copy (detassign computes half boxes in float32)
    ref_pred = mm.InstanceData(priors=priors.float(), **{k: v.float() if v.is_floating_point() else v
                                                          for k, v in pred_fields.items()})
    ref = ref_cls(**kw).assign(ref_pred, mm.InstanceData(bboxes=gts, labels=labels), mm.InstanceData(bboxes=ignore))
    return ref, ours


KNOBS = [
    dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
    dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3),                      # RPN
    dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False),  # RCNN
    dict(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.4), gt_max_assign_all=False),
    dict(pos_iou_thr=0.4, neg_iou_thr=0.4, min_pos_iou=0.0, ignore_iof_thr=0.3),
    dict(pos_iou_thr=0.4, neg_iou_thr=(0.0, 0.3), ignore_iof_thr=0.5, ignore_wrt_candidates=False),
    dict(pos_iou_thr=0.6, neg_iou_thr=0.2, min_pos_iou=0.1, gt_max_assign_all=False, ignore_iof_thr=0.2),
    dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.0, gpu_assign_thr=2),   # iof 0 disables ignoring
]


# ----------------------------------------------------------------------------- hand-worked cases
def test_hand_worked_thresholds():
    # GT [0,0,10,9] vs prior [0,0,10,10]: overlap 90, union 100 + 90 - 90 = 100 -> IoU 0.9 >= 0.5 positive;
    # prior [10,10,20,20] touches nothing -> IoU 0 < 0.5 negative.
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5)
    res = assigner.assign(Instances(priors=torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20]])),
                          Instances(bboxes=torch.tensor([[0.0, 0, 10, 9]]), labels=torch.tensor([3])))
    assert res.gt_inds.tolist() == [1, 0]
    assert res.labels.tolist() == [3, -1]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([0.9, 0.0]))


def test_hand_worked_low_quality_overwrite_order():
    # prior0 = GT0 exactly (IoU 1.0); GT1 [0,0,10,8] inside prior0: 80 / 100 = 0.8; prior1 far away (IoU 0).
    # Step 3: prior0 -> GT0 (1.0 >= 0.5). Step 4: GT0's best is prior0 (-> 1), then GT1's best is also
    # prior0 (0.8) -> overwritten to 2: mmdet's last GT wins. "argmax" keeps prior0's own best GT (GT0).
    priors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    gts = Instances(bboxes=torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8]]), labels=torch.tensor([7, 8]))
    mm = MaxIoUAssigner(0.5, 0.4).assign(Instances(priors=priors), gts)
    assert mm.gt_inds.tolist() == [2, 0] and mm.labels.tolist() == [8, -1]
    torch.testing.assert_close(mm.max_overlaps, torch.tensor([1.0, 0.0]))  # max IoU, not the assigned GT's
    am = MaxIoUAssigner(0.5, 0.4, low_quality_mode="argmax").assign(Instances(priors=priors), gts)
    assert am.gt_inds.tolist() == [1, 0] and am.labels.tolist() == [7, -1]


def test_hand_worked_zero_iou_gt_quirk_8289():
    # GT0 = prior0 (IoU 1); GT1 [100,100,110,110] overlaps no prior: its best IoU is 0 >= min_pos_iou 0, so
    # in mmdet every prior with IoU 0 to GT1 -- both priors -- is claimed by GT1 (and GT1 comes last).
    priors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    gts = Instances(bboxes=torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]]), labels=torch.tensor([0, 1]))
    assert MaxIoUAssigner(0.5, 0.4).assign(Instances(priors=priors), gts).gt_inds.tolist() == [2, 2]
    for mode in ("nonzero", "argmax"):   # fixed: GT1 claims nothing, prior1 stays negative
        res = MaxIoUAssigner(0.5, 0.4, low_quality_mode=mode).assign(Instances(priors=priors), gts)
        assert res.gt_inds.tolist() == [1, 0], mode


@pytest.mark.oracle
def test_zero_iou_gt_quirk_matches_mmdet():
    priors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    gts, labels = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]]), torch.tensor([0, 1])
    ref, ours = run_pair(MaxIoUAssigner, mmdet().assigners.MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
                         priors, gts, labels, torch.zeros(0, 4))
    assert_same(ref, ours)
    assert ref.gt_inds.tolist() == [2, 2]


def test_hand_worked_ignore_both_ways():
    # prior [0,0,10,10] (area 100), ignore box [0,0,20,20] (area 400): intersection 100.
    # wrt candidates: IoF = 100 / 100 = 1.0 > 0.3 -> ignored (-1, max_overlaps -1);
    # wrt ignore box: IoF = 100 / 400 = 0.25 <= 0.3 -> kept, IoU with the far GT is 0 -> negative.
    priors = Instances(priors=torch.tensor([[0.0, 0, 10, 10]]))
    gts = Instances(bboxes=torch.tensor([[80.0, 80, 90, 90]]), labels=torch.tensor([0]))
    ignore = Instances(bboxes=torch.tensor([[0.0, 0, 20, 20]]))
    kw = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.3, match_low_quality=False)
    res = MaxIoUAssigner(**kw).assign(priors, gts, ignore)
    assert res.gt_inds.tolist() == [-1] and res.max_overlaps.tolist() == [-1.0]
    res = MaxIoUAssigner(**kw, ignore_wrt_candidates=False).assign(priors, gts, ignore)
    assert res.gt_inds.tolist() == [0] and res.max_overlaps.tolist() == [0.0]


def test_assign_wrt_overlaps_hand_worked():
    # prior 0: best 0.6 (GT0) >= 0.5 positive; prior 1: 0.45 in [0.4, 0.5) -> stays ignored (-1);
    # prior 2: 0.1 < 0.4 negative; prior 3: 0.3 -> negative, but it is GT1's best (0.3) -> positive of GT1.
    overlaps = torch.tensor([[0.6, 0.45, 0.1, 0.0],
                             [0.2, 0.0, 0.05, 0.3]])
    res = assign_wrt_overlaps(overlaps, torch.tensor([4, 9]), pos_iou_thr=0.5, neg_iou_thr=0.4)
    assert res.gt_inds.tolist() == [1, -1, 0, 2]
    assert res.labels.tolist() == [4, -1, -1, 9]
    # min_pos_iou 0.35 > 0.3: GT1 gets no low-quality match
    res = assign_wrt_overlaps(overlaps, None, pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.35)
    assert res.gt_inds.tolist() == [1, -1, 0, 0] and res.labels is None


def test_last_gt_wins_is_the_loop():
    g = torch.Generator().manual_seed(0)
    hits = torch.rand(5, 30, generator=g) < 0.2
    expected = torch.zeros(30, dtype=torch.long)
    for i in range(5):
        expected[hits[i]] = i + 1
    assert torch.equal(last_gt_wins(hits), expected)


@pytest.mark.oracle
def test_overlap_matrix_bit_identical_to_bbox_overlaps():
    """The memory-lean IoU / IoF equals mmdet's bbox_overlaps bit for bit (ties depend on it), batched too."""
    bbox_overlaps = mmdet().bbox_overlaps
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        a, b = random_boxes(7, g, tiny=seed % 3 == 0), random_boxes(11, g, grid=seed % 3 == 1)
        a[::4, 2] = a[::4, 0]                                           # zero-width boxes
        for mode in ("iou", "iof"):
            assert torch.equal(overlap_matrix(a, b, mode), bbox_overlaps(a, b, mode))
            assert torch.equal(overlap_matrix(b.double(), a.double(), mode), bbox_overlaps(b.double(), a.double(), mode))
        batch1, batch2 = torch.stack([a, a.flip(0)]), torch.stack([b, b * 0.5])
        assert torch.equal(overlap_matrix(batch1, batch2), pairwise_iou(batch1, batch2))
        assert torch.equal(overlap_matrix(batch1, b, "iof"), pairwise_iof(batch1, b))
        assert torch.equal(overlap_matrix(a.half(), b), pairwise_iou(a.half(), b))


# ----------------------------------------------------------------------------- oracle parity
@pytest.mark.oracle
@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_parity_with_mmdet(knobs):
    ref_cls = mmdet().assigners.MaxIoUAssigner
    for seed in range(30):
        priors, gts, labels, ignore = random_case(seed)
        ref, ours = run_pair(MaxIoUAssigner, ref_cls, knobs, priors, gts, labels, ignore)
        assert_same(ref, ours, f"seed {seed}")


@pytest.mark.oracle
def test_assign_wrt_overlaps_matches_mmdet_method():
    ref = mmdet().assigners.MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0.1)
    ours = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0.1)
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        overlaps = (torch.rand(seed % 5, 25, generator=g) * 4).round() / 4  # quarter steps: many ties
        labels = torch.arange(seed % 5)
        expected = ref.assign_wrt_overlaps(overlaps, labels)
        assert_same(expected, assign_wrt_overlaps(overlaps, labels, pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0.1))
        assert_same(expected, ours.assign_wrt_overlaps(overlaps, labels))


@pytest.mark.oracle
def test_config_spellings_match_mmdet():
    """mmdet iou_calculator dict, 5-column priors and the seed catalogue's RPN config."""
    cfg = dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True,
               ignore_iof_thr=-1, iou_calculator=dict(type="mmdet.BboxOverlaps2D"))
    ours, ref = build_assigner(cfg), mmdet().task_utils.build(cfg)
    for seed in range(5):
        priors, gts, labels, _ = random_case(seed + 10)
        scored = torch.cat([priors.float(), torch.rand(len(priors), 1)], 1)
        a = ours.assign(Instances(priors=scored), Instances(bboxes=gts, labels=labels))
        b = ref.assign(mmdet().InstanceData(priors=scored), mmdet().InstanceData(bboxes=gts, labels=labels))
        assert_same(b, a)


@pytest.mark.oracle
@pytest.mark.parametrize("perm_cfg", [dict(iou_thr=0.7, perm_range=0.01), dict(iou_thr=0.999, perm_range=0.05)])
def test_perm_repeat_gt_cfg_matches_mmdet_with_same_seed(perm_cfg):
    """V3Det's jitter of repeated GTs draws from torch's global generator: same seed, same boxes, same result.
    iou_thr 0.999 forces mmdet's retries (a 5% jitter rarely keeps IoU >= 0.999)."""
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, perm_repeat_gt_cfg=perm_cfg)
    ref_assigner, ours_assigner = mmdet().assigners.MaxIoUAssigner(**knobs), MaxIoUAssigner(**knobs)
    for seed in range(20):
        priors, gts, labels, _ = random_case(seed * 10 + 2)          # integer grid: repeated boxes are common
        if len(gts) > 1:
            gts[1::2] = gts[0]                                        # and at least one repeated group
        torch.manual_seed(seed)
        ref = ref_assigner.assign(mmdet().InstanceData(priors=priors), mmdet().InstanceData(bboxes=gts, labels=labels))
        ref_next = torch.rand(1)
        torch.manual_seed(seed)
        ours = ours_assigner.assign(Instances(priors=priors), Instances(bboxes=gts, labels=labels))
        assert_same(ref, ours, f"seed {seed}")
        assert torch.equal(ref_next, torch.rand(1)), "the generator must be consumed as mmdet does"


def test_fp16_calculator_option_runs():
    # boxes on a 4-px grid are exact in float16, so quantising changes nothing
    priors, gts, labels, _ = random_case(2)
    base = MaxIoUAssigner(0.5, 0.4).assign(Instances(priors=priors), Instances(bboxes=gts, labels=labels))
    half = MaxIoUAssigner(0.5, 0.4, iou_calculator=dict(type="BboxOverlaps2D", scale=4.0, dtype="fp16")).assign(
        Instances(priors=priors), Instances(bboxes=gts, labels=labels))
    assert torch.equal(base.gt_inds, half.gt_inds)


# ----------------------------------------------------------------------------- low-quality modes
def loop_reference(overlaps, pos, neg, min_pos, assign_all, mode):
    """Plain loop: mmdet's steps, with the "nonzero" / "argmax" low-quality variants."""
    M, A = overlaps.shape
    max_ov, argmax = overlaps.max(0)
    gt_inds = torch.full((A,), -1, dtype=torch.long)
    gt_inds[(max_ov >= 0) & (max_ov < neg)] = 0
    gt_inds[max_ov >= pos] = argmax[max_ov >= pos] + 1
    low_quality = torch.zeros(A, dtype=torch.bool)
    for i in range(M):
        best = overlaps[i].max()
        if best < min_pos or (mode != "mmdet" and best <= 0):
            continue
        claimed = overlaps[i] == best if assign_all else torch.arange(A) == overlaps[i].argmax()
        if mode == "argmax":
            low_quality |= claimed
        else:
            gt_inds[claimed] = i + 1
    if mode == "argmax":
        gt_inds[low_quality] = argmax[low_quality] + 1
    return gt_inds


@pytest.mark.parametrize("mode", ["mmdet", "nonzero", "argmax"])
@pytest.mark.parametrize("assign_all", [True, False])
def test_low_quality_modes_against_loop(mode, assign_all):
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        M, A = 1 + seed % 5, 20
        overlaps = (torch.rand(M, A, generator=g) * 5).floor() / 5 * (torch.rand(M, A, generator=g) < 0.5)
        if seed % 3 == 0:
            overlaps[-1] = 0.0  # a GT overlapping nothing
        res = assign_wrt_overlaps(overlaps, None, pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0.0,
                                  gt_max_assign_all=assign_all, low_quality_mode=mode)
        assert torch.equal(res.gt_inds, loop_reference(overlaps, 0.5, 0.3, 0.0, assign_all, mode)), seed


# ----------------------------------------------------------------------------- properties
@st.composite
def images(draw):
    seed = draw(st.integers(0, 10 ** 6))
    g = torch.Generator().manual_seed(seed)
    A, M = draw(st.integers(1, 30)), draw(st.integers(1, 6))
    return random_boxes(A, g), random_boxes(M, g), torch.randint(0, 5, (M,), generator=g), seed


@given(images(), st.sampled_from(["mmdet", "argmax"]))
def test_gt_permutation_equivariance(image, mode):
    priors, gts, labels, seed = image
    # float IoUs of random boxes do not tie, except at 0: keep images where every GT overlaps some prior
    from detassign.boxes import pairwise_iou
    overlaps = pairwise_iou(gts, priors)
    assume(bool((overlaps.max(1).values > 0).all()))
    if mode == "mmdet":  # the overwrite order depends on GT order when two GTs share their best prior
        assume(len(set(overlaps.argmax(1).tolist())) == len(gts))
    perm = torch.randperm(len(gts), generator=torch.Generator().manual_seed(seed))
    assigner = MaxIoUAssigner(0.5, 0.4, low_quality_mode=mode)
    a = assigner.assign(Instances(priors=priors), Instances(bboxes=gts, labels=labels))
    b = assigner.assign(Instances(priors=priors), Instances(bboxes=gts[perm], labels=labels[perm]))
    # GT j of the permuted list is GT perm[j] of the original
    mapped = torch.where(b.gt_inds > 0, perm[(b.gt_inds - 1).clamp(min=0)] + 1, b.gt_inds)
    assert torch.equal(a.gt_inds, mapped)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.max_overlaps, b.max_overlaps)


# ----------------------------------------------------------------------------- corner cases and errors
def test_empty_inputs():
    assigner = MaxIoUAssigner(0.5, 0.4)
    priors = random_boxes(5, torch.Generator().manual_seed(0))
    res = assigner.assign(Instances(priors=priors), Instances(bboxes=torch.zeros(0, 4),
                                                              labels=torch.zeros(0, dtype=torch.long)))
    assert res.gt_inds.tolist() == [0] * 5 and res.max_overlaps.tolist() == [0.0] * 5 and res.num_gts == 0
    res = assigner.assign(Instances(priors=torch.zeros(0, 4)), Instances(bboxes=torch.tensor([[0.0, 0, 1, 1]]),
                                                                         labels=torch.tensor([1])))
    assert res.gt_inds.shape == (0,) and res.labels.shape == (0,)


def test_bad_inputs():
    gts = Instances(bboxes=torch.tensor([[0.0, 0, 1, 1]]), labels=torch.tensor([1]))
    assigner = MaxIoUAssigner(0.5, 0.4)
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assigner.assign(Instances(priors=torch.zeros(3, 3)), gts)
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assigner.assign(Instances(bboxes=torch.zeros(3, 4)), gts)
    with pytest.raises(ValueError, match="pred_instances.priors"):
        assigner.assign(Instances(priors=torch.tensor([[0.0, 0, float("nan"), 1]])), gts)
    with pytest.raises(ValueError, match="gt_instances.bboxes"):
        assigner.assign(Instances(priors=torch.zeros(3, 4)), Instances(bboxes=torch.tensor([[2.0, 0, 1, 1]])))
    with pytest.raises(ValueError, match="gt_instances.labels"):
        assigner.assign(Instances(priors=torch.zeros(3, 4)),
                        Instances(bboxes=torch.zeros(2, 4), labels=torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="gt_instances_ignore.bboxes"):
        assigner.assign(Instances(priors=torch.zeros(3, 4)), gts, Instances(bboxes=torch.zeros(2)))
    with pytest.raises(TypeError, match="neg_iou_thr"):
        MaxIoUAssigner(0.5, (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="low_quality_mode"):
        MaxIoUAssigner(0.5, 0.4, low_quality_mode="detectron")
    with pytest.raises(ValueError, match="iou_calculator"):
        MaxIoUAssigner(0.5, 0.4, iou_calculator=dict(type="BboxOverlaps3D"))
    with pytest.raises(ValueError, match="overlaps"):
        assign_wrt_overlaps(torch.zeros(3), None, pos_iou_thr=0.5, neg_iou_thr=0.4)


def test_int_and_list_neg_thresholds_are_floats_and_tuples():
    priors, gts, labels, _ = random_case(12)
    inputs = (Instances(priors=priors), Instances(bboxes=gts, labels=labels))
    assert torch.equal(MaxIoUAssigner(1, 0).assign(*inputs).gt_inds, MaxIoUAssigner(1.0, 0.0).assign(*inputs).gt_inds)
    assert torch.equal(MaxIoUAssigner(0.5, [0.1, 0.4]).assign(*inputs).gt_inds,
                       MaxIoUAssigner(0.5, (0.1, 0.4)).assign(*inputs).gt_inds)


def test_build_and_repr():
    a = build_assigner(dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                            match_low_quality=False, ignore_iof_thr=-1))
    assert isinstance(a, MaxIoUAssigner) and "low_quality_mode='mmdet'" in repr(a)
