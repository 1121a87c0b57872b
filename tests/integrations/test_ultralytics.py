"""detassign.integrations.ultralytics: the one-line TaskAlignedAssigner / RotatedTaskAlignedAssigner swaps
and ``use()``.

Hand-worked cases for the conventions and the tie reproduction, the tie reproduction against the
batched ``torch.topk`` it stands for, oracle parity with ultralytics 8.4.190 (the 5-tuple bit for bit on
seeded and crowded batches, horizontal and oriented; ``v8DetectionLoss`` and ``v8OBBLoss`` items and
gradients with the swap), ``use()`` with ATSS / SimOTA / DSL against detassign's own loss and with OBB
criteria, and real ``YOLO("yolo11n.yaml")`` / ``YOLO("yolo11n-obb.yaml")`` ``train()`` runs from the
README's snippets.
"""
import functools
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign.assigners import _pairs as ops
from detassign.assigners.dynamic_soft_label import DynamicSoftLabelAssigner
from detassign.assigners.task_aligned import TaskAlignedAssigner as CoreTAL
from detassign.integrations import ultralytics as integ
from detassign.integrations.ultralytics import (AssignerAdapter, RotatedTaskAlignedAssigner, TaskAlignedAssigner,
                                                ultralytics_targets, use)
from detassign.yolo.loss import DetectionLoss
from tests import oracles
from tests.fixtures import make_anchors
from tests.tolerances import assert_close_across_paths

README = Path(__file__).resolve().parents[2] / "README.md"
R = 16  # DFL bins


# ----------------------------------------------------------------------------- data
def scene(seed, B=2, M=12, C=4, size=128, crowded=False, oriented=False):
    """Padded batch in ultralytics' call format. crowded: hundreds of 2-16 px GTs and small predicted
    boxes, so many GTs have fewer than k positive metrics and zero-metric candidates (ties).
    oriented: xywhr px boxes at any angle (crowded: 2-14 px GTs, 1-4 px predictions scattered 10 px
    around the anchors, so many candidates have ProbIoU 0)."""
    g = torch.Generator().manual_seed(seed)
    points = make_anchors(size)
    A = len(points)
    centre = torch.rand(B, M, 2, generator=g) * size
    spread = torch.rand(B, M, 2, generator=g)
    side = spread * (12 if oriented else 14) + 2 if crowded else torch.exp(spread * 3) * 4
    angle = (torch.rand(B, M, 1, generator=g) - 0.5) * math.pi if oriented else None
    n = torch.randint(M // 2, M + 1, (B,), generator=g)
    if seed % 4 == 1:
        n[-1] = 0  # an image without GT
    mask = torch.arange(M)[None] < n[:, None]
    gt = torch.cat((centre, side, angle) if oriented else (centre - side / 2, centre + side / 2), -1) * mask[..., None]
    labels = torch.randint(0, C, (B, M), generator=g) * mask
    spread = torch.rand(B, A, 2, generator=g)
    if oriented:
        pred_side = spread * 3 + 1 if crowded else torch.exp(spread * 3) * 4
        pred = torch.cat((points[None] + torch.randn(B, A, 2, generator=g) * (10 if crowded else 6), pred_side,
                          (torch.rand(B, A, 1, generator=g) - 0.5) * math.pi), -1)
    else:
        pred_side = spread * 6 + 1 if crowded else torch.exp(spread * 3) * 4
        pred_centre = points[None] + torch.randn(B, A, 2, generator=g) * 6
        pred = torch.cat((pred_centre - pred_side / 2, pred_centre + pred_side / 2), -1)
    scores = torch.rand(B, A, C, generator=g) ** 3
    return scores, pred, points, labels[..., None].float(), gt, mask[..., None].float()


# kind -> (our swap, ultralytics' class in utils.tal, the batch generator)
SWAPS = {"detect": (TaskAlignedAssigner, "TaskAlignedAssigner", scene),
         "obb": (RotatedTaskAlignedAssigner, "RotatedTaskAlignedAssigner", functools.partial(scene, oriented=True))}


def reference(topk, C, alpha, beta, topk2=None, kind="detect"):
    return getattr(oracles.ultralytics().tal, SWAPS[kind][1])(topk=topk, num_classes=C, alpha=alpha, beta=beta,
                                                              topk2=topk2)


def assert_same_tuple(ours, ref):
    names = ("target_labels", "target_bboxes", "target_scores", "fg_mask", "target_gt_idx")
    for name, a, b in zip(names, ours, ref):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        assert torch.equal(a, b), f"{name} differs at {int((a != b).sum())} entries"


# ----------------------------------------------------------------------------- hand-worked cases
def test_conventions_of_the_5_tuple_by_hand():
    # 2 images x 3 anchors, M = 2. Image 0: anchor 1 -> GT 1 (label 4), anchor 2 -> GT 0 (label 7);
    # anchor 0 negative -> GT 0's label 7 and box. Image 1 has only padding (label 0, zero box).
    gt_inds = torch.tensor([[0, 2, 1], [0, 0, 0]])
    labels = torch.tensor([[[7.0], [4.0]], [[0.0], [0.0]]])
    boxes = torch.tensor([[[0.0, 0, 4, 4], [2, 2, 6, 6]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    scores = torch.zeros(2, 3, 8)
    t_labels, t_boxes, t_scores, fg, idx = ultralytics_targets(gt_inds, scores, labels, boxes)
    assert t_labels.tolist() == [[7, 4, 7], [0, 0, 0]] and t_labels.dtype == torch.long
    assert idx.tolist() == [[0, 1, 0], [0, 0, 0]] and fg.tolist() == [[False, True, True], [False] * 3]
    assert t_boxes[0].tolist() == [[0, 0, 4, 4], [2, 2, 6, 6], [0, 0, 4, 4]] and (t_boxes[1] == 0).all()
    assert t_scores is scores
    # the same conversion serves the oriented swap: 5 box columns, the same rules
    rboxes = torch.cat((boxes, torch.tensor([[[0.5], [-0.3]], [[0.0], [0.0]]])), -1)
    _, t_rboxes, _, _, _ = ultralytics_targets(gt_inds, scores, labels, rboxes)
    assert t_rboxes.shape == (2, 3, 5) and t_rboxes[0, :, 4].tolist() == pytest.approx([0.5, -0.3, 0.5])


def test_reference_topk_by_hand():
    # k = 2. Row 0: entries 0.5 (col 1), 0.5 (col 3), 0.5 (col 4): the k-th value 0.5 is shared by three
    # entries for two slots -> tied, ranked by torch.topk itself. Row 1: one entry 0.9 and one zero
    # entry (col 2): the 2nd slot goes to one of the row's zeros -> tied. Row 2: 0.9 and 0.1 -> unique.
    segment = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    column = torch.tensor([1, 3, 4, 0, 2, 5, 6])
    values = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.0, 0.9, 0.1])
    dense = torch.zeros(3, 8)
    dense[segment, column] = values
    top = torch.topk(dense, 2, dim=1).indices
    expected = torch.zeros(3, 8, dtype=torch.bool).scatter_(1, top, True)[segment, column]
    got = ops.reference_topk(segment, column, values, 3, 8, 2, max_elems=8)
    assert torch.equal(got, expected)
    assert got[3] and got[5] and got[6]  # positive metrics inside the top-2 are always kept
    assert int(got[:3].sum()) == 2


@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.sampled_from([3, 17, 90, 700]), st.integers(1, 12))
def test_reference_topk_equals_one_batched_topk(seed, rows, columns, k):
    # per-row rebuilding of only the tied rows == torch.topk over the whole dense matrix in one call
    # (what ultralytics runs); 700 columns with k <= 10 takes torch's partial-sort branch, else nth_element
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(rows, columns)
    entry = torch.rand(rows, columns, generator=g) < 0.3
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0])  # few distinct values: ties everywhere
    dense[entry] = levels[torch.randint(0, 4, (int(entry.sum()),), generator=g)]
    segment, column = torch.nonzero(entry, as_tuple=True)
    kk = min(k, columns)
    expected = torch.zeros_like(entry).scatter_(1, torch.topk(dense, kk, dim=1).indices, True)[segment, column]
    for budget in (columns, 10**6):  # one row per block, all rows in one block
        got = ops.reference_topk(segment, column, dense[segment, column], rows, columns, k, max_elems=budget)
        assert torch.equal(got, expected)


def test_reference_topk_empty_and_k_above_columns():
    empty = torch.zeros(0, dtype=torch.long)
    assert ops.reference_topk(empty, empty, torch.zeros(0), 3, 5, 2, 100).shape == (0,)
    segment, column = torch.tensor([0, 0]), torch.tensor([0, 1])
    assert ops.reference_topk(segment, column, torch.tensor([0.0, 0.0]), 1, 2, 5, 100).all()


# ----------------------------------------------------------------------------- oracle parity: the 5-tuple
@pytest.mark.oracle
@pytest.mark.parametrize("kind", sorted(SWAPS))
@pytest.mark.parametrize("topk, alpha, beta, topk2", [(10, 0.5, 6.0, None), (13, 1.0, 6.0, None), (7, 0.5, 6.0, 1),
                                                      (10, 0.5, 6.0, 3)])
def test_5_tuple_equals_ultralytics_on_seeded_batches(topk, alpha, beta, topk2, kind):
    ours_cls, _, make = SWAPS[kind]
    for seed in range(6):
        data = make(seed, B=3, M=12, C=4)
        ours = ours_cls(topk=topk, num_classes=4, alpha=alpha, beta=beta, topk2=topk2)(*data)
        assert ours[1].shape == data[1].shape   # [B, A, 4] or [B, A, 5]
        assert_same_tuple(ours, reference(topk, 4, alpha, beta, topk2, kind)(*data))


@pytest.mark.oracle
@pytest.mark.parametrize("kind", sorted(SWAPS))
@pytest.mark.parametrize("topk, topk2", [(10, None), (7, 1)])
def test_5_tuple_equals_ultralytics_on_crowded_batches_with_ties(topk, topk2, kind):
    ours_cls, _, make = SWAPS[kind]
    for seed in range(3):
        data = make(seed, B=2, M=300, C=3, size=160, crowded=True)
        ref = reference(topk, 3, 0.5, 6.0, topk2, kind)(*data)
        assert_same_tuple(ours_cls(topk=topk, num_classes=3, alpha=0.5, topk2=topk2)(*data), ref)
        # the case is not trivial: the lowest-index tie-break moves anchors here (detect: dozens to hundreds;
        # obb: 78-181 per batch at top-10, 10+ at top-7 / topk2 1)
        stable = ours_cls(topk=topk, num_classes=3, alpha=0.5, topk2=topk2, tie_break="index")(*data)
        assert int((stable[3] != ref[3]).sum()) > (20 if kind == "detect" or topk2 is None else 5)


@pytest.mark.oracle
@pytest.mark.parametrize("kind", sorted(SWAPS))
def test_m_zero_and_all_padding_match_ultralytics(kind):
    ours_cls, _, make = SWAPS[kind]
    scores, pred, points, labels, gt, mask = make(0, B=2, M=5, C=4)
    empty = (scores, pred, points, labels[:, :0], gt[:, :0], mask[:, :0])
    assert_same_tuple(ours_cls(num_classes=4)(*empty), reference(13, 4, 1.0, 6.0, kind=kind)(*empty))
    padded = (scores, pred, points, labels * 0, gt * 0, mask * 0)
    assert_same_tuple(ours_cls(num_classes=4)(*padded), reference(13, 4, 1.0, 6.0, kind=kind)(*padded))


def test_constructor_defaults_attributes_and_bad_input():
    tal = TaskAlignedAssigner()
    assert (tal.topk, tal.topk2, tal.num_classes, tal.alpha, tal.beta, tal.stride, tal.eps, tal.stride_val) == (
        13, 13, 80, 1.0, 6.0, [8, 16, 32], 1e-9, 16)
    assert isinstance(tal, torch.nn.Module)
    with pytest.raises(ValueError, match="topk"):
        TaskAlignedAssigner(topk=0)
    with pytest.raises(ValueError, match="tie_break"):
        TaskAlignedAssigner(tie_break="random")
    data = scene(2, C=4)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        TaskAlignedAssigner(num_classes=4)(*data, pred_masks=torch.zeros(1))
    with pytest.raises(ValueError, match="num_classes=80"):
        TaskAlignedAssigner()(*data)  # 4 score columns for 80 classes
    # attributes set after construction (ultralytics' TVP loss sets num_classes) are read at the call
    tal.num_classes = 4
    assert tal(*data)[2].shape[-1] == 4


# ----------------------------------------------------------------------------- oracle parity: v8DetectionLoss
def stand_in_model(nc):
    return oracles.ultralytics().stand_in_model(nc, R)


def loss_case(seed, B=2, nc=3, size=160, n=240, oriented=False):
    """Raw maps and a crowded ultralytics batch (2-16 px boxes, normalised cxcywh). oriented: xywhr boxes
    (angles in radians) and an angle map, as ``v8OBBLoss`` reads them. -> (leaves, preds, batch)"""
    g = torch.Generator().manual_seed(seed)
    feats = [(torch.randn(B, 4 * R + nc, size // s, size // s, generator=g) * 2).requires_grad_() for s in (8, 16, 32)]
    batch_idx = torch.randint(0, B, (n,), generator=g).sort().values.float()
    wh = (torch.rand(n, 2, generator=g) * 14 + 2) / size
    centre = torch.rand(n, 2, generator=g) * 0.9 + 0.05
    batch = dict(batch_idx=batch_idx, cls=torch.randint(0, nc, (n, 1), generator=g).float(),
                 bboxes=torch.cat((centre, wh), 1))
    preds = dict(boxes=torch.cat([f[:, :4 * R].reshape(B, 4 * R, -1) for f in feats], 2),
                 scores=torch.cat([f[:, 4 * R:].reshape(B, nc, -1) for f in feats], 2), feats=feats)
    if not oriented:
        return feats, preds, batch
    angle = [(torch.randn(B, 1, size // s, size // s, generator=g) * 0.5).requires_grad_() for s in (8, 16, 32)]
    theta = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    batch["bboxes"] = torch.cat((batch["bboxes"], theta), 1)
    preds["angle"] = torch.cat([a.reshape(B, 1, -1) for a in angle], 2)
    return feats + angle, preds, batch


def obb_model(nc):
    model = stand_in_model(nc)
    model.args.angle = 1.0  # v8OBBLoss' angle gain (ultralytics' default.yaml)
    return model


# kind -> (ultralytics' loss, the module-level assigner name it builds, our swap, the case, the stand-in model)
LOSSES = {"detect": ("v8DetectionLoss", "TaskAlignedAssigner", TaskAlignedAssigner, loss_case, stand_in_model),
          "obb": ("v8OBBLoss", "RotatedTaskAlignedAssigner", RotatedTaskAlignedAssigner,
                  functools.partial(loss_case, n=120, oriented=True), obb_model)}


def run_loss(crit, feats, preds, batch):
    loss, items = crit(preds, batch)
    return torch.stack(list(items.values())), torch.autograd.grad(loss.sum(), feats)


@pytest.mark.oracle
@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_items_and_gradients_equal_with_the_one_line_swap(monkeypatch, kind):
    # v8DetectionLoss / v8OBBLoss built after `ultralytics.utils.loss.<Assigner> = ours`: same items, same gradients
    ultra = oracles.ultralytics()
    loss_name, assigner_name, ours, make_case, make_model = LOSSES[kind]
    for seed in range(2):
        leaves, preds, batch = make_case(seed)
        ref_items, ref_grads = run_loss(getattr(ultra.loss, loss_name)(make_model(3)), leaves, preds, batch)
        with monkeypatch.context() as patch:
            patch.setattr(ultra.loss, assigner_name, ours)
            swapped = getattr(ultra.loss, loss_name)(make_model(3))
        assert type(swapped.assigner) is ours
        assert (swapped.assigner.topk, swapped.assigner.alpha, swapped.assigner.stride) == (10, 0.5, [8.0, 16.0, 32.0])
        items, grads = run_loss(swapped, leaves, preds, batch)
        assert items[0] > 0  # box loss: the GTs got positives
        assert torch.equal(items, ref_items)
        for grad, ref_grad in zip(grads, ref_grads):
            assert torch.equal(grad, ref_grad)


@pytest.mark.oracle
def test_use_swaps_the_exact_tal_into_a_criterion_and_an_end_to_end_one():
    ultra = oracles.ultralytics()
    feats, preds, batch = loss_case(3)
    stock = ultra.loss.v8DetectionLoss(stand_in_model(3), tal_topk=7, tal_topk2=1)
    ref_items, _ = run_loss(stock, feats, preds, batch)
    swapped = use(ultra.loss.v8DetectionLoss(stand_in_model(3), tal_topk=7, tal_topk2=1))
    assert (swapped.assigner.topk, swapped.assigner.topk2) == (7, 1)
    assert torch.equal(run_loss(swapped, feats, preds, batch)[0], ref_items)
    # YOLO26's end-to-end loss: the one-to-many branch takes the given assigner, the one-to-one branch the exact TAL
    e2e = ultra.loss.E2ELoss(stand_in_model(3))
    use(e2e, assigner=dict(type="SimOTAAssigner"))
    assert isinstance(e2e.one2many.assigner, AssignerAdapter)
    assert isinstance(e2e.one2one.assigner, TaskAlignedAssigner) and e2e.one2one.assigner.topk2 == 1
    with pytest.raises(TypeError, match="detection criterion"):
        use(object())
    # an OBB criterion takes the rotated swap (tested below), never a detection one
    obb = types.SimpleNamespace(assigner=ultra.tal.RotatedTaskAlignedAssigner(), nc=3, stride=torch.tensor([8.0]))
    with pytest.raises(TypeError, match="RotatedTaskAlignedAssigner"):
        use(obb, assigner=dict(type="SimOTAAssigner"))
    with pytest.raises(TypeError, match="detection criterion"):
        use(ultra.loss.v8DetectionLoss(stand_in_model(3)), assigner=RotatedTaskAlignedAssigner(num_classes=3))


@pytest.mark.oracle
@pytest.mark.parametrize("cfg", [dict(type="DynamicSoftLabelAssigner", topk=13), dict(type="SimOTAAssigner"),
                                 dict(type="ATSSAssigner", topk=9),
                                 dict(type="TaskAlignedAssigner", preset="mmdet", topk=13)],
                         ids=lambda c: c.get("preset", c["type"]))
def test_use_with_other_assigners_gives_detassign_losses(cfg):
    # the swapped ultralytics loss == detassign's own DetectionLoss with the same assigner (same targets;
    # the loss arithmetic agrees to float rounding, tests/yolo/test_yolo_loss.py)
    ultra = oracles.ultralytics()
    feats, preds, batch = loss_case(5, B=2, nc=3, size=128, n=40)
    crit = use(ultra.loss.v8DetectionLoss(stand_in_model(3)), assigner=cfg)
    items, grads = run_loss(crit, feats, preds, batch)
    total, own_items = DetectionLoss(3, assigner=cfg)(feats, batch)
    own_grads = torch.autograd.grad(total, feats)
    torch.testing.assert_close(items, own_items, rtol=1e-5, atol=1e-6)
    for grad, own in zip(grads, own_grads):
        torch.testing.assert_close(grad, own, rtol=1e-4, atol=1e-6)
    assert items[0] > 0  # foreground anchors were assigned


# ----------------------------------------------------------------------------- the oriented (OBB) swap
def test_rotated_swap_constructor_and_bad_input():
    tal = RotatedTaskAlignedAssigner()
    assert (tal.topk, tal.topk2, tal.num_classes, tal.alpha, tal.beta, tal.stride, tal.eps, tal.stride_val) == (
        13, 13, 80, 1.0, 6.0, [8, 16, 32], 1e-9, 16)
    assert tal.core().tie_break == "torch" and tal.core().min_candidate_size == 16
    with pytest.raises(ValueError, match="topk"):
        RotatedTaskAlignedAssigner(topk=0)
    with pytest.raises(TypeError, match="method"):
        RotatedTaskAlignedAssigner(method="blocked")  # the rotated core has one computation
    data = scene(2, C=4, oriented=True)
    with pytest.raises(ValueError, match=r"gt_bboxes must have shape \[B, M, 5\]"):
        RotatedTaskAlignedAssigner(num_classes=4)(*data[:4], data[4][..., :4], data[5])
    with pytest.raises(ValueError, match="pred_bboxes"):
        RotatedTaskAlignedAssigner(num_classes=4)(data[0], data[1][..., :4], *data[2:])
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        RotatedTaskAlignedAssigner(num_classes=4)(*data, pred_masks=torch.zeros(1))
    bad = data[4].clone()
    bad[0, 0, 3] = -2.0
    with pytest.raises(ValueError, match="non-negative w and h"):
        RotatedTaskAlignedAssigner(num_classes=4)(*data[:4], bad, data[5])


@pytest.mark.oracle
def test_use_swaps_the_rotated_tal_into_obb_criteria():
    ultra = oracles.ultralytics()
    leaves, preds, batch = loss_case(3, n=120, oriented=True)
    ref_items, _ = run_loss(ultra.loss.v8OBBLoss(obb_model(3), tal_topk=7, tal_topk2=1), leaves, preds, batch)
    swapped = use(ultra.loss.v8OBBLoss(obb_model(3), tal_topk=7, tal_topk2=1))
    assert isinstance(swapped.assigner, RotatedTaskAlignedAssigner) and (swapped.assigner.topk,
                                                                         swapped.assigner.topk2) == (7, 1)
    assert torch.equal(run_loss(swapped, leaves, preds, batch)[0], ref_items)
    # YOLO26-OBB's end-to-end loss: both branches take the rotated swap with their own settings
    model = obb_model(3)
    model.args.epochs = 10
    e2e = use(ultra.loss.E2ELoss(model, ultra.loss.v8OBBLoss))
    assert all(isinstance(b.assigner, RotatedTaskAlignedAssigner) for b in (e2e.one2many, e2e.one2one))
    assert (e2e.one2many.assigner.topk, e2e.one2one.assigner.topk, e2e.one2one.assigner.topk2) == (10, 7, 1)
    given = RotatedTaskAlignedAssigner(topk=5, num_classes=3, tie_break="index")
    assert use(ultra.loss.v8OBBLoss(obb_model(3)), assigner=given).assigner is given


def test_recovered_logits_and_anchor_strides():
    # float32 probabilities resolve 1 - p in steps of 2**-24 near 1: the error grows like 6e-8 * e**x for x > 0
    logits = torch.tensor([-80.0, -8.0, -0.5, 0.0, 3.0, 10.0, 15.0, 40.0])
    back = integ.recovered_logits(logits.sigmoid())
    torch.testing.assert_close(back[:5], logits[:5], rtol=2e-6, atol=2e-6)
    assert abs(back[5] - 10) < 3e-3 and abs(back[6] - 15) < 0.3
    assert 16.0 < back[7] < 16.7  # sigmoid(40) rounds to 1: the largest finite logit comes back
    strides, sizes = integ.anchor_strides(make_anchors(64), [8, 16, 32])
    assert sizes == [64, 16, 4] and strides.tolist() == [8.0] * 64 + [16.0] * 16 + [32.0] * 4
    with pytest.raises(ValueError, match="row-major anchor grids"):
        integ.anchor_strides(make_anchors(64).flip(0), [8, 16, 32])


def test_adapter_on_an_empty_batch_and_bad_assigner():
    scores, pred, points, labels, gt, mask = scene(0, C=4)
    adapter = AssignerAdapter(dict(type="SimOTAAssigner"), num_classes=4, stride=[8, 16, 32])
    out = adapter(scores, pred, points, labels[:, :0], gt[:, :0], mask[:, :0])
    assert not out[3].any() and (out[0] == 4).all()
    with pytest.raises(TypeError, match="assign_batch"):
        AssignerAdapter(object(), num_classes=4, stride=[8])


# ----------------------------------------------------------------------------- a real ultralytics training run
def readme_snippet(name):
    """The python block after ``<!-- snippet: name -->`` in README.md."""
    text = README.read_text()
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no python block after <!-- snippet: {name} -->"
    return match.group(1)


DETECT_LABELS = "0 0.5 0.5 0.4 0.4\n1 0.25 0.3 0.2 0.2\n"                   # class, cx, cy, w, h
OBB_LABELS = ("0 0.30 0.20 0.70 0.30 0.65 0.50 0.25 0.40\n"                   # class, 4 corners (DOTA-style)
              "1 0.20 0.60 0.40 0.60 0.40 0.90 0.20 0.90\n")


def tiny_yolo_dataset(root, labels=DETECT_LABELS):
    """Four 64 px images with two boxes each, YOLO txt labels (``OBB_LABELS``: ultralytics' OBB format);
    the same images for train and val."""
    from PIL import Image

    g = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(4):
        Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.jpg")
        (root / "labels" / f"im{i}.txt").write_text(labels)
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images\nval: images\nnames:\n  0: a\n  1: b\n")
    return yaml


@pytest.fixture
def isolated_training(monkeypatch):
    """ultralytics' trainer sets global torch state (threads, deterministic mode, seeds): restore it."""
    ultra = oracles.ultralytics()
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    for name in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED"):  # set by its init_seeds
        monkeypatch.delenv(name, raising=False)
    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
             torch.get_rng_state())
    with ultra.training_standins():
        yield ultra
    torch.set_num_threads(state[0])
    torch.use_deterministic_algorithms(state[1], warn_only=state[2])
    torch.utils.deterministic.fill_uninitialized_memory = state[3]
    torch.set_rng_state(state[4])


TRAIN_CALL = 'model.train(data="coco8.yaml", epochs=100, imgsz=640)'


def run_swap_snippet(ultra, name, attribute, data_yaml, project, epochs, call=TRAIN_CALL):
    """A snippet that sets ``ultralytics.utils.loss.<attribute>`` (for the whole process), run, then undone."""
    stock = getattr(ultra.loss, attribute)
    try:
        return run_snippet(name, data_yaml, project, epochs, call)
    finally:
        setattr(ultra.loss, attribute, stock)


def run_snippet(name, data_yaml, project, epochs, call=TRAIN_CALL):
    code = readme_snippet(name)
    assert call in code
    args = (f'data="{data_yaml}", epochs={epochs}, imgsz=64, batch=2, workers=0, device="cpu", plots=False, '
            f'val=False, amp=False, project="{project}", name="{name}", exist_ok=True, verbose=False')
    namespace = {}
    exec(code.replace(call, f"model.train({args})"), namespace)
    return namespace["model"]


@pytest.mark.slow
@pytest.mark.oracle
def test_readme_snippets_train_yolo11n_with_the_swap(isolated_training, tmp_path):
    ultra = isolated_training
    data_yaml = tiny_yolo_dataset(tmp_path / "data")
    model = run_swap_snippet(ultra, "ultralytics-swap", "TaskAlignedAssigner", data_yaml, tmp_path / "runs", epochs=2)
    trainer = model.trainer
    assert isinstance(trainer.model.criterion.assigner, TaskAlignedAssigner)
    assert (trainer.model.criterion.assigner.topk, trainer.model.criterion.assigner.alpha) == (10, 0.5)
    assert trainer.epoch == 1 and (Path(trainer.save_dir) / "weights" / "last.pt").exists()
    losses = np.loadtxt(Path(trainer.save_dir) / "results.csv", delimiter=",", skiprows=1)[:, 2:5]
    assert losses.shape == (2, 3) and np.isfinite(losses).all() and (losses > 0).all()

    model = run_snippet("ultralytics-use", data_yaml, tmp_path / "runs", epochs=1)
    for swapped in (model.trainer.model, model.trainer.ema.ema):  # the EMA copy's loss is what validation reports
        adapter = swapped.criterion.assigner
        assert isinstance(adapter, AssignerAdapter) and isinstance(adapter.assigner, DynamicSoftLabelAssigner)
        assert adapter.assigner.topk == 13
    assert (Path(model.trainer.save_dir) / "weights" / "last.pt").exists()


@pytest.mark.slow
@pytest.mark.oracle
def test_readme_obb_snippet_trains_yolo11n_obb_with_the_swap(isolated_training, tmp_path):
    ultra = isolated_training
    data_yaml = tiny_yolo_dataset(tmp_path / "data", OBB_LABELS)
    model = run_swap_snippet(ultra, "ultralytics-obb-swap", "RotatedTaskAlignedAssigner", data_yaml, tmp_path / "runs",
                             epochs=1, call='model.train(data="dota8.yaml", epochs=100, imgsz=640)')
    assigner = model.trainer.model.criterion.assigner
    assert isinstance(assigner, RotatedTaskAlignedAssigner) and (assigner.topk, assigner.alpha) == (10, 0.5)
    assert model.trainer.epoch == 0 and (Path(model.trainer.save_dir) / "weights" / "last.pt").exists()
    losses = np.loadtxt(Path(model.trainer.save_dir) / "results.csv", delimiter=",", skiprows=1, ndmin=2)[:, 2:6]
    assert losses.shape == (1, 4) and np.isfinite(losses).all() and (losses[:, :2] > 0).all()  # box, cls > 0


def test_readme_snippet_is_the_documented_swap():
    assert "ultralytics.utils.loss.TaskAlignedAssigner = TaskAlignedAssigner" in readme_snippet("ultralytics-swap")
    assert ("ultralytics.utils.loss.RotatedTaskAlignedAssigner = RotatedTaskAlignedAssigner"
            in readme_snippet("ultralytics-obb-swap"))
    assert "use(model, assigner=" in readme_snippet("ultralytics-use")


def test_core_torch_tie_break_takes_the_sparse_path():
    # tie_break="torch" needs no dense [B, M, A] rows: the sparse path rebuilds only the tied GT rows and
    # gives what torch.topk over every dense row gives (the blocked path runs exactly that)
    data = scene(7, B=2, M=120, C=3, size=160, crowded=True)
    scores, pred, points, labels, gt, mask = data
    args = (scores, pred, points, labels[..., 0].long(), gt, mask[..., 0].bool())
    sparse = CoreTAL(preset="ultralytics_loss", tie_break="torch").assign_batch_probs(*args)
    dense = CoreTAL(preset="ultralytics_loss", tie_break="torch", method="blocked").assign_batch_probs(*args)
    assert torch.equal(sparse.gt_inds, dense.gt_inds)
    assert_close_across_paths(sparse.target_scores, dense.target_scores)
