"""BatchMaxIoUAssigner: one vectorised call == mmdet MaxIoUAssigner image by image, for every knob."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, Priors, build_assigner
from detassign.assigners._batch import pad_gts
from detassign.assigners.batch_max_iou import BatchMaxIoUAssigner
from detassign.assigners.max_iou import MaxIoUAssigner
from tests.oracles import mmdet
from tests.assigners.test_max_iou import KNOBS, assert_same, random_boxes, random_case


def random_batch(seed, B=4, A=30):
    """Shared priors [A, 4] (fp16 for some seeds) and per-image GT / label / ignore lists of varied sizes."""
    cases = [random_case(seed * 7 + i, max_priors=A) for i in range(B)]
    g = torch.Generator().manual_seed(seed)
    priors = random_boxes(A if seed % 9 else 0, g, grid=seed % 5 == 2)
    if seed % 6 == 1:
        priors = priors.half()
    return priors, [c[1] for c in cases], [c[2] for c in cases], [c[3] for c in cases]


def padded(gts, labels, ignores):
    gt_labels, gt_boxes, gt_mask = pad_gts(gts, labels)
    _, ignore_boxes, ignore_mask = pad_gts(ignores, [torch.zeros(len(b), dtype=torch.long) for b in ignores])
    return gt_boxes, gt_mask, gt_labels, ignore_boxes, ignore_mask


def batch(assigner, priors, gt_bboxes, gt_mask=None, gt_labels=None, gt_bboxes_ignore=None, ignore_mask=None):
    """The batched interface (no predictions) called with the arguments in the order :func:`padded` gives."""
    return assigner.assign_batch(None, None, priors, gt_labels, gt_bboxes, gt_mask, gt_bboxes_ignore=gt_bboxes_ignore,
                                 ignore_mask=ignore_mask)


# ----------------------------------------------------------------------------- hand-worked
def test_hand_worked_padded_batch():
    # image 0: GT [0,0,10,9] (label 5) vs prior0 [0,0,10,10]: IoU 90/100 = 0.9 -> positive; prior1 [10,10,20,20]
    #   IoU 0 -> negative. The padded row (mask False) must never match.
    # image 1: no valid GT -> everything negative, max_overlaps 0.
    priors = torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20]])
    gt_boxes = torch.tensor([[[0.0, 0, 10, 9], [10, 10, 20, 20]],
                             [[10.0, 10, 20, 20], [0, 0, 10, 10]]])
    gt_mask = torch.tensor([[True, False], [False, False]])
    gt_labels = torch.tensor([[5, 6], [7, 8]])
    res = batch(BatchMaxIoUAssigner(0.5, 0.5), priors, gt_boxes, gt_mask, gt_labels)
    assert res.gt_inds.tolist() == [[1, 0], [0, 0]]
    assert res.labels.tolist() == [[5, -1], [-1, -1]]
    assert res.num_gts.tolist() == [1, 0]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([[0.9, 0.0], [0.0, 0.0]]))


def test_hand_worked_low_quality_last_gt_wins_batched():
    # same as the per-image case: prior0 is the best prior of GT0 (IoU 1) and GT1 (0.8): GT1, the last, wins.
    priors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    gt_boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 8]]]).repeat(2, 1, 1)
    res = batch(BatchMaxIoUAssigner(0.5, 0.4), priors, gt_boxes, None, torch.tensor([[1, 2], [1, 2]]))
    assert res.gt_inds.tolist() == [[2, 0], [2, 0]]
    res = batch(BatchMaxIoUAssigner(0.5, 0.4, low_quality_mode="argmax"), priors, gt_boxes)
    assert res.gt_inds.tolist() == [[1, 0], [1, 0]] and res.labels is None


# ----------------------------------------------------------------------------- oracle parity
@pytest.mark.oracle
@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_parity_with_mmdet_per_image(knobs):
    mm = mmdet()
    ref = mm.assigners.MaxIoUAssigner(**knobs)
    ours = BatchMaxIoUAssigner(**knobs)
    for seed in range(30):
        priors, gts, labels, ignores = random_batch(seed)
        res = batch(ours, priors, *padded(gts, labels, ignores))
        assert res.gt_inds.shape == (len(gts), len(priors))
        for i in range(len(gts)):
            expected = ref.assign(mm.InstanceData(priors=priors.float()),
                                  mm.InstanceData(bboxes=gts[i], labels=labels[i]), mm.InstanceData(bboxes=ignores[i]))
            assert_same(expected, res[i], f"seed {seed} image {i}")


@pytest.mark.oracle
def test_parity_per_image_priors():
    """priors [B, A, 4]: every image has its own priors (e.g. proposals)."""
    mm = mmdet()
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, ignore_iof_thr=0.5)
    for seed in range(30):
        B, A = 3, 25
        g = torch.Generator().manual_seed(seed)
        priors = torch.stack([random_boxes(A, g) for _ in range(B)])
        _, gts, labels, ignores = random_batch(seed, B=B)
        res = batch(BatchMaxIoUAssigner(**knobs), priors, *padded(gts, labels, ignores))
        for i in range(B):
            expected = mm.assigners.MaxIoUAssigner(**knobs).assign(
                mm.InstanceData(priors=priors[i]), mm.InstanceData(bboxes=gts[i], labels=labels[i]),
                mm.InstanceData(bboxes=ignores[i]))
            assert_same(expected, res[i], f"seed {seed} image {i}")


# ----------------------------------------------------------------------------- properties
@given(st.integers(0, 10 ** 6), st.sampled_from(["mmdet", "nonzero", "argmax"]), st.booleans(), st.booleans())
def test_batched_equals_per_image_with_padding_holes(seed, mode, assign_all, wrt_candidates):
    """Padding anywhere in M (not only at the end): gt_inds index the padded dimension."""
    priors, gts, labels, ignores = random_batch(seed % 1000, B=3)
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, gt_max_assign_all=assign_all, ignore_iof_thr=0.4,
                 ignore_wrt_candidates=wrt_candidates, low_quality_mode=mode)
    gt_boxes, gt_mask, gt_labels, ignore_boxes, ignore_mask = padded(gts, labels, ignores)
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(gt_mask.shape, generator=g), dim=1)       # scatter padding into holes
    take = order[..., None].expand(-1, -1, 4)
    gt_boxes, gt_mask, gt_labels = gt_boxes.gather(1, take), gt_mask.gather(1, order), gt_labels.gather(1, order)
    res = batch(BatchMaxIoUAssigner(**knobs), priors, gt_boxes, gt_mask, gt_labels, ignore_boxes, ignore_mask)
    single = MaxIoUAssigner(**knobs)
    for i in range(3):
        valid = torch.nonzero(gt_mask[i]).squeeze(1)                              # padded index of each valid GT
        one = single.assign(Instances(priors=priors), Instances(bboxes=gt_boxes[i][valid], labels=gt_labels[i][valid]),
                            Instances(bboxes=ignores[i]))
        lookup = torch.cat([torch.tensor([-1, 0]), valid + 1])                   # gt_inds -1, 0, 1.. -> padded
        assert torch.equal(res.gt_inds[i], lookup[one.gt_inds + 1])
        assert torch.equal(res.labels[i], one.labels)
        assert torch.equal(res.max_overlaps[i], one.max_overlaps)


def test_chunking_and_cpu_switch_do_not_change_results():
    priors, gts, labels, ignores = random_batch(3, B=5)
    inputs = padded(gts, labels, ignores)
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.3)
    full = batch(BatchMaxIoUAssigner(**knobs), priors, *inputs)
    for other in (BatchMaxIoUAssigner(**knobs, chunk_elements=1), BatchMaxIoUAssigner(**knobs, chunk_elements=200),
                  BatchMaxIoUAssigner(**knobs, gpu_assign_thr=1)):
        res = batch(other, priors, *inputs)
        assert torch.equal(res.gt_inds, full.gt_inds) and torch.equal(res.max_overlaps, full.max_overlaps)


# ----------------------------------------------------------------------------- corner cases and errors
def test_empty_shapes():
    assigner = BatchMaxIoUAssigner(0.5, 0.4)
    priors = torch.tensor([[0.0, 0, 10, 10]])
    res = batch(assigner, priors, torch.zeros(2, 0, 4), None, torch.zeros(2, 0, dtype=torch.long))
    assert res.gt_inds.tolist() == [[0], [0]] and res.labels.tolist() == [[-1], [-1]]
    res = batch(assigner, torch.zeros(0, 4), torch.tensor([[[0.0, 0, 1, 1]]]))
    assert res.gt_inds.shape == (1, 0)
    res = batch(assigner, priors, torch.zeros(0, 3, 4))
    assert res.gt_inds.shape == (0, 1)


def test_assign_per_image_and_registry_alias():
    for name in ("BatchMaxIoUAssigner", "AscendMaxIoUAssigner"):
        assigner = build_assigner(dict(type=name, pos_iou_thr=0.5, neg_iou_thr=0.4))
        assert isinstance(assigner, BatchMaxIoUAssigner)
    priors, gts, labels, ignores = random_batch(4, B=1)
    one = assigner.assign(Instances(priors=priors), Instances(bboxes=gts[0], labels=labels[0]))
    res = batch(assigner, priors, *padded(gts, labels, ignores)[:3])
    assert torch.equal(one.gt_inds, res.gt_inds[0])


def test_bad_inputs():
    assigner = BatchMaxIoUAssigner(0.5, 0.4)
    priors, boxes = torch.zeros(3, 4), torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="gt_bboxes"):
        batch(assigner, priors, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="priors"):
        batch(assigner, torch.zeros(3, 2, 3, 4), boxes)
    with pytest.raises(ValueError, match="priors"):
        batch(assigner, torch.zeros(3, 3, 4), boxes)                  # B = 3 priors for 2 images
    with pytest.raises(ValueError, match="gt_mask"):
        batch(assigner, priors, boxes, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="gt_labels"):
        batch(assigner, priors, boxes, None, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_mask"):
        batch(assigner, priors, boxes, ignore_mask=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="gt_bboxes_ignore"):
        batch(assigner, priors, boxes, gt_bboxes_ignore=torch.zeros(3, 1, 4))
    with pytest.raises(ValueError, match="gt_bboxes"):
        batch(assigner, priors, torch.tensor([[[5.0, 0, 1, 1]]]))
    with pytest.raises(ValueError, match="BatchMaxIoUAssigner needs priors.boxes"):
        batch(assigner, Priors(priors[:, :2]), boxes)
    with pytest.raises(ValueError, match="no rotated batched form"):
        batch(BatchMaxIoUAssigner(0.5, 0.4, iou_calculator=dict(type="RBboxOverlaps2D")), priors, boxes)


def test_priors_object_equals_box_tensor():
    priors, gts, labels, ignores = random_batch(2)
    priors = priors.float()
    inputs = padded(gts, labels, ignores)[:3]
    a = BatchMaxIoUAssigner(0.5, 0.4)
    res, ref = batch(a, Priors.from_boxes(priors), *inputs), batch(a, priors, *inputs)
    assert torch.equal(res.gt_inds, ref.gt_inds) and torch.equal(res.max_overlaps, ref.max_overlaps)
    with pytest.raises(ValueError, match="chunk_elements"):
        BatchMaxIoUAssigner(0.5, 0.4, chunk_elements=0)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.3, gpu_assign_thr=3)
    for seed in range(10):
        priors, gts, labels, ignores = random_batch(seed)
        inputs = padded(gts, labels, ignores)
        cpu = batch(BatchMaxIoUAssigner(**knobs), priors, *inputs)
        gpu = batch(BatchMaxIoUAssigner(**knobs), priors.cuda(), *(t.cuda() for t in inputs))
        assert gpu.gt_inds.device.type == "cuda"
        assert torch.equal(cpu.gt_inds, gpu.gt_inds.cpu()) and torch.equal(cpu.labels, gpu.labels.cpu())
        torch.testing.assert_close(cpu.max_overlaps, gpu.max_overlaps.cpu(), rtol=0, atol=1e-6)
        ignore = Instances(bboxes=ignores[0].cuda()) if len(ignores[0]) else None  # the batch saw them too
        one = MaxIoUAssigner(**knobs).assign(Instances(priors=priors.cuda()),
                                             Instances(bboxes=gts[0].cuda(), labels=labels[0].cuda()), ignore)
        assert one.gt_inds.device.type == "cuda" and torch.equal(one.gt_inds.cpu(), cpu.gt_inds[0])


# ----------------------------------------------------------------------------- sparse (lattice) path
from detassign.assigners import batch_max_iou as bmi  # noqa: E402
from detassign.assigners._prior_lattice import detect_lattice, segment_ids  # noqa: E402


def anchor_grid(img=64, strides=(8, 16, 32), ratios=(1.0,), scale=4.0, dtype=torch.float32):
    """mmdet AnchorGenerator layout: per level, row-major cells, ``len(ratios)`` anchors per cell."""
    levels = []
    for s in strides:
        n = -(-img // s)
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        c = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).double().add(0.5).mul(s)      # [n * n, 2]
        per_ratio = []
        for r in ratios:
            half = torch.tensor([scale * s / r ** 0.5, scale * s * r ** 0.5], dtype=torch.float64) / 2
            per_ratio.append(torch.cat([c - half, c + half], -1))
        levels.append(torch.stack(per_ratio, 1).reshape(-1, 4))
    return torch.cat(levels).to(dtype)


def lattice_gts(g, n, img=64):
    """n GTs mixing the tie-prone cases: grid-aligned integer boxes (IoU ties between priors and between
    GTs), copies of one box, tiny and zero-width boxes, boxes partly or wholly off the image."""
    kinds = torch.randint(0, 6, (n,), generator=g)
    out = []
    for k in kinds.tolist():
        if k == 0:   # aligned to the 4-px lattice: many exact ties
            xy = torch.randint(-2, img // 4, (2,), generator=g).float() * 4
            wh = torch.randint(1, 9, (2,), generator=g).float() * 4
        elif k == 1:  # tiny, or zero width
            xy = torch.rand(2, generator=g) * img
            wh = torch.rand(2, generator=g) * 2 * torch.randint(0, 2, (2,), generator=g)
        elif k == 2:  # off the image
            xy = torch.rand(2, generator=g) * img * 2 - img / 2
            wh = torch.rand(2, generator=g) * img / 2 + 1
        else:
            xy = torch.rand(2, generator=g) * img
            wh = torch.exp(torch.empty(2).uniform_(0.0, 4.5, generator=g))
        out.append(torch.cat([xy, xy + wh]))
    boxes = torch.stack(out) if out else torch.zeros(0, 4)
    if n > 2 and bool(torch.rand(1, generator=g) < 0.5):
        boxes[-1] = boxes[0]          # duplicate GT: every IoU ties between the two
    return boxes


def lattice_batch(seed, B=3, max_gts=9):
    g = torch.Generator().manual_seed(seed)
    ratios = [(1.0,), (0.5, 1.0, 2.0)][seed % 2]
    priors = anchor_grid(ratios=ratios, scale=[2.0, 4.0, 8.0][seed % 3])
    counts = torch.randint(0, max_gts + 1, (B,), generator=g).tolist()
    counts[0] = max(counts[0], 1)
    gts = [lattice_gts(g, n) for n in counts]
    labels = [torch.randint(0, 5, (n,), generator=g) for n in counts]
    ignores = [lattice_gts(g, int(torch.randint(0, 3, (1,), generator=g))) for _ in range(B)]
    return priors, gts, labels, ignores


@pytest.fixture
def no_dense(monkeypatch):
    """Fail if the dense computation runs: the test is meant to exercise the sparse path (the small test
    images have many candidate pairs per prior, so the cost rule would otherwise pick the dense path)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the dense path ran")
    monkeypatch.setattr(BatchMaxIoUAssigner, "_assign_chunk", refuse)
    monkeypatch.setattr(bmi, "SPARSE_MAX_FRACTION", 1.0)


def test_detect_lattice_on_anchor_layouts():
    priors = anchor_grid(ratios=(0.5, 1.0, 2.0))
    slots = detect_lattice(priors)
    assert [(s.base, s.R, s.r, s.H, s.W) for s in slots] == [
        (0, 3, 0, 8, 8), (0, 3, 1, 8, 8), (0, 3, 2, 8, 8), (192, 3, 0, 4, 4), (192, 3, 1, 4, 4),
        (192, 3, 2, 4, 4), (240, 3, 0, 2, 2), (240, 3, 1, 2, 2), (240, 3, 2, 2, 2)]
    # every slot describes its priors exactly
    for s in slots:
        cells = priors[s.base + s.r:s.base + s.H * s.W * s.R:s.R].view(s.H, s.W, 4)
        assert torch.equal(cells[..., 0], s.x1.expand(s.H, -1))
        assert torch.equal(cells[..., 3], s.y2[:, None].expand(-1, s.W))
    g = torch.Generator().manual_seed(0)
    assert detect_lattice(random_boxes(200, g)) is None                        # proposals
    assert detect_lattice(priors[torch.randperm(len(priors), generator=g)]) is None   # shuffled anchors
    assert len(detect_lattice(priors[:10])) >= 1                               # a partial row is still exact


def test_segment_ids_is_repeat_interleave():
    counts = torch.tensor([0, 3, 0, 0, 1, 2, 0])
    starts = torch.cumsum(counts, 0) - counts
    assert segment_ids(counts, starts, 6).tolist() == torch.repeat_interleave(torch.arange(7), counts).tolist()


@pytest.mark.oracle
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_parity_with_mmdet_on_anchor_grids(knobs, sparse, request):
    if sparse:
        request.getfixturevalue("no_dense")
    mm = mmdet()
    ref = mm.assigners.MaxIoUAssigner(**knobs)
    ours = BatchMaxIoUAssigner(**knobs, sparse=sparse)
    for seed in range(12):
        priors, gts, labels, ignores = lattice_batch(seed)
        res = batch(ours, priors, *padded(gts, labels, ignores))
        for i in range(len(gts)):
            expected = ref.assign(mm.InstanceData(priors=priors), mm.InstanceData(bboxes=gts[i], labels=labels[i]),
                                  mm.InstanceData(bboxes=ignores[i]))
            assert_same(expected, res[i], f"seed {seed} image {i}")


@pytest.mark.oracle
def test_sparse_parity_zero_iou_quirk_and_threshold_edges(no_dense):
    """min_pos_iou 0 (mmdet #8289: a GT overlapping nothing claims every prior), pos_iou_thr 0 (priors with
    best IoU 0 become positives of the first valid GT), a GT far away, all with ignore regions."""
    mm = mmdet()
    priors = anchor_grid()
    gts = [torch.tensor([[4.0, 4, 20, 20], [500, 500, 510, 510], [0, 0, 8, 8]]), torch.tensor([[300.0, 300, 310, 310]])]
    labels = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    ignores = [torch.tensor([[32.0, 32, 64, 64]]), torch.zeros(0, 4)]
    for knobs in (dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0),
                  dict(pos_iou_thr=0.0, neg_iou_thr=(0.0, 0.0), min_pos_iou=0.0),
                  dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, gt_max_assign_all=False),
                  dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=-1.0, ignore_iof_thr=0.5),
                  dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, ignore_iof_thr=0.5,
                       gt_max_assign_all=False)):
        res = batch(BatchMaxIoUAssigner(**knobs, sparse=True), priors, *padded(gts, labels, ignores))
        for i in range(2):
            expected = mm.assigners.MaxIoUAssigner(**knobs).assign(
                mm.InstanceData(priors=priors), mm.InstanceData(bboxes=gts[i], labels=labels[i]),
                mm.InstanceData(bboxes=ignores[i]))
            assert_same(expected, res[i], f"{knobs} image {i}")


@given(st.integers(0, 10 ** 6), st.sampled_from(["mmdet", "nonzero", "argmax"]), st.booleans(), st.booleans(),
       st.sampled_from([torch.float32, torch.float64, "fp16"]))
def test_sparse_equals_dense(seed, mode, assign_all, ignore, dtype):
    """Bit-identical to the dense path: padding holes, every low-quality mode, ignore regions, dtypes."""
    priors, gts, labels, ignores = lattice_batch(seed, B=3)
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=[0.0, 0.3][seed % 2], gt_max_assign_all=assign_all,
                 ignore_iof_thr=0.4 if ignore else -1, low_quality_mode=mode)
    if dtype == "fp16":
        knobs["iou_calculator"] = dict(type="BboxOverlaps2D", scale=2.0, dtype="fp16")
    else:
        priors, gts = priors.to(dtype), [b.to(dtype) for b in gts]
    gt_boxes, gt_mask, gt_labels, ignore_boxes, ignore_mask = padded(gts, labels, ignores)
    order = torch.argsort(torch.rand(gt_mask.shape, generator=torch.Generator().manual_seed(seed)), dim=1)
    gt_boxes, gt_mask, gt_labels = gt_boxes.gather(1, order[..., None].expand(-1, -1, 4)), gt_mask.gather(1, order), \
        gt_labels.gather(1, order)
    args = (priors, gt_boxes, gt_mask, gt_labels, ignore_boxes, ignore_mask)
    dense = batch(BatchMaxIoUAssigner(**knobs, sparse=False), *args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bmi, "SPARSE_MAX_FRACTION", 1.0)
        sparse = batch(BatchMaxIoUAssigner(**knobs, sparse=True), *args)
    assert torch.equal(sparse.gt_inds, dense.gt_inds) and torch.equal(sparse.labels, dense.labels)
    assert sparse.max_overlaps.dtype == dense.max_overlaps.dtype
    assert torch.equal(sparse.max_overlaps, dense.max_overlaps)


def test_sparse_chunks_and_fallbacks_do_not_change_results(monkeypatch):
    priors, gts, labels, ignores = lattice_batch(5, B=6)
    inputs = padded(gts, labels, ignores)
    knobs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.3)
    dense = batch(BatchMaxIoUAssigner(**knobs, sparse=False), priors, *inputs)
    monkeypatch.setattr(bmi, "SPARSE_MAX_FRACTION", 1.0)
    auto = batch(BatchMaxIoUAssigner(**knobs), priors, *inputs)            # CPU: sparse
    monkeypatch.setattr(bmi, "SPARSE_CPU_CHUNK", 1)                              # one image per chunk
    one = batch(BatchMaxIoUAssigner(**knobs), priors, *inputs)
    monkeypatch.setattr(bmi, "SPARSE_MAX_FRACTION", 0.0)                         # every chunk falls back
    fallback = batch(BatchMaxIoUAssigner(**knobs), priors, *inputs)
    for res in (auto, one, fallback):
        assert torch.equal(res.gt_inds, dense.gt_inds) and torch.equal(res.max_overlaps, dense.max_overlaps)
        assert torch.equal(res.labels, dense.labels)
    with pytest.raises(ValueError, match="sparse"):
        BatchMaxIoUAssigner(0.5, 0.4, sparse="yes")
