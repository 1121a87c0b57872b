"""detassign.integrations.detr: DETR's ``matcher(outputs, targets)`` call, batched.

Oracles: a plain per-image scipy loop over DETR's cost formulas written here (DETR / Deformable-DETR
conventions: softmax or focal with eps 1e-8 in the logs, L1 on cxcywh, GIoU without a floor) and the
project's mmdet-exact HungarianAssigner. ``transformers``' matchers do not import here with
``--no-deps`` (``transformers/utils`` needs ``regex``, ``huggingface_hub``, ...), so they are not used.
Plus hand-worked costs, properties (one-to-one per group, counts, order, batched == per image), groups,
GT repeats, the batched-solver glue with a scipy-backed stand-in of ``torch_linear_assignment``,
non-finite costs and bad input.
"""
import importlib.machinery
import importlib.util
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from detassign.assigners.hungarian import HungarianAssigner
from detassign.assigners.lsa_solvers import resolve_solver
from detassign.integrations import detr
from detassign.integrations.detr import MATCHER_PRESETS, HungarianMatcher
from detassign.structures import Instances

README = Path(__file__).resolve().parents[2] / "README.md"


# ----------------------------------------------------------------------------- data and the loop oracle
def detr_case(seed, sizes=(5, 0, 9), Q=20, C=6, dtype=torch.float32):
    """outputs / targets in DETR's format; image 1 has no GT by default."""
    g = torch.Generator().manual_seed(seed)
    B = len(sizes)
    logits = (torch.randn(B, Q, C, generator=g) * 2).to(dtype)
    boxes = torch.cat((torch.rand(B, Q, 2, generator=g) * 0.8 + 0.1, torch.rand(B, Q, 2, generator=g) * 0.4 + 0.02), -1)
    targets = []
    for m in sizes:
        centre, side = torch.rand(m, 2, generator=g) * 0.8 + 0.1, torch.rand(m, 2, generator=g) * 0.4 + 0.02
        targets.append(dict(labels=torch.randint(0, C, (m,), generator=g), boxes=torch.cat((centre, side), -1)))
    return dict(pred_logits=logits, pred_boxes=boxes.to(dtype)), targets


def corners(b):
    return torch.stack((b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2), -1)


def giou_loop(a, b):
    """GIoU of every pair by the textbook formula, double precision. [N, 4], [M, 4] xyxy -> [N, M]."""
    a, b = a.double(), b.double()
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i in range(len(a)):
        for j in range(len(b)):
            iw = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            ih = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = iw * ih
            union = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
            hull = (max(a[i, 2], b[j, 2]) - min(a[i, 0], b[j, 0])) * (max(a[i, 3], b[j, 3]) - min(a[i, 1], b[j, 1]))
            out[i, j] = inter / union - (hull - union) / hull
    return out


def loop_cost(logits, boxes, target, w_class, w_bbox, w_giou, focal, alpha=0.25, gamma=2.0):
    """One image's [Q, M] cost, written from the papers' formulas in float64."""
    logits, boxes = logits.double(), boxes.double()
    labels, gt = target["labels"], target["boxes"].double()
    if focal:
        p = logits.sigmoid()[:, labels]
        cls = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8) - (1 - alpha) * p ** gamma * -torch.log(1 - p + 1e-8)
    else:
        cls = -logits.softmax(-1)[:, labels]
    l1 = (boxes[:, None, :] - gt[None, :, :]).abs().sum(-1)
    return w_bbox * l1 + w_class * cls - w_giou * giou_loop(corners(boxes), corners(gt))


def loop_match(outputs, targets, **cfg):
    """DETR's algorithm, one image at a time: (rows, cols, matched total cost) per image."""
    out = []
    for b, target in enumerate(targets):
        cost = loop_cost(outputs["pred_logits"][b], outputs["pred_boxes"][b], target, **cfg).numpy()
        rows, cols = linear_sum_assignment(cost) if cost.shape[1] else (np.zeros(0, int), np.zeros(0, int))
        out.append((rows, cols, cost[rows, cols].sum(), cost))
    return out


def assert_optimal(indices, reference):
    """Same matching as the reference, or, where it differs (a near-tie), the same total cost."""
    for (q, g), (rows, cols, best, cost) in zip(indices, reference):
        assert q.dtype == torch.int64 and g.dtype == torch.int64
        assert torch.equal(q, torch.sort(q).values)
        if not (np.array_equal(q.numpy(), rows) and np.array_equal(g.numpy(), cols)):
            assert len(q) == len(rows) and math.isclose(cost[q.numpy(), g.numpy()].sum(), best, rel_tol=1e-6)


# ----------------------------------------------------------------------------- hand-worked
def test_hand_worked_detr_costs_and_matching():
    # 2 queries with equal class probability 0.5; query 0 sits on GT 1, query 1 on GT 0.
    # cost(q0, g0) = 5 * L1 1.0 + 1 * (-0.5) + 2 * (-GIoU = 0.5; disjoint halves, hull 1) = 5.5
    # cost(q0, g1) = 5 * 0 - 0.5 + 2 * (-1) = -2.5; symmetric for query 1 -> q0-g1, q1-g0
    outputs = dict(pred_logits=torch.zeros(1, 2, 2), pred_boxes=torch.tensor([[[0.25, 0.25, 0.5, 0.5],
                                                                                 [0.75, 0.75, 0.5, 0.5]]]))
    targets = [dict(labels=torch.tensor([0, 1]), boxes=torch.tensor([[0.75, 0.75, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]]))]
    matcher = HungarianMatcher.preset("detr")
    labels, boxes, _ = detr.pad_targets(targets, 1, 2, torch.device("cpu"))
    total = sum(matcher.cost_terms(outputs["pred_logits"], outputs["pred_boxes"], labels, boxes).values())
    torch.testing.assert_close(total[0], torch.tensor([[5.5, -2.5], [-2.5, 5.5]]))
    (q, g), = matcher(outputs, targets)
    assert q.tolist() == [0, 1] and g.tolist() == [1, 0]


def test_hand_worked_focal_cost():
    # p = sigmoid(0) = 0.5: pos = 0.25 * 0.5^2 * ln 2 = 0.0433217, neg = 0.75 * 0.5^2 * ln 2 = 0.1299651
    cost = detr.focal_class_cost(torch.zeros(1, 1, 3), torch.tensor([[2]]))
    torch.testing.assert_close(cost, torch.tensor([[[-0.0866434]]]), atol=1e-6, rtol=0)


def test_presets():
    assert MATCHER_PRESETS["detr"] == dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, focal=False)
    for name in ("deformable_detr", "dino", "rt_detr"):
        m = HungarianMatcher.preset(name)
        assert (m.cost_class, m.cost_bbox, m.cost_giou, m.focal, m.alpha, m.gamma) == (2.0, 5.0, 2.0, True, 0.25, 2.0)
    assert HungarianMatcher.preset("dino", cost_class=1.0).cost_class == 1.0
    with pytest.raises(ValueError, match="name"):
        HungarianMatcher.preset("yolo")


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("preset", ["detr", "dino"])
def test_matches_the_per_image_scipy_loop(preset):
    cfg = MATCHER_PRESETS[preset]
    loop_cfg = dict(w_class=cfg["cost_class"], w_bbox=cfg["cost_bbox"], w_giou=cfg["cost_giou"], focal=cfg["focal"])
    matcher = HungarianMatcher.preset(preset)
    exact = 0
    for seed in range(8):
        outputs, targets = detr_case(seed, sizes=(5, 0, 9, 30), Q=25)
        indices = matcher(outputs, targets)
        reference = loop_match(outputs, targets, **loop_cfg)
        assert_optimal(indices, reference)
        exact += all(np.array_equal(q.numpy(), r[0]) and np.array_equal(g.numpy(), r[1])
                     for (q, g), r in zip(indices, reference))
    assert exact >= 7  # random costs have no ties: the very same matching


@pytest.mark.parametrize("preset", ["detr", "deformable_detr"])
def test_matches_the_mmdet_exact_hungarian_assigner(preset):
    # mmdet's costs on pixel xyxy boxes: BBoxL1Cost normalises by the image size, so the costs are DETR's
    # up to rounding (and FocalLossCost's eps, set to Deformable-DETR's 1e-8)
    cfg = MATCHER_PRESETS[preset]
    cls = dict(type="FocalLossCost", weight=cfg["cost_class"], eps=1e-8) if cfg["focal"] else \
        dict(type="ClassificationCost", weight=cfg["cost_class"])
    assigner = HungarianAssigner([cls, dict(type="BBoxL1Cost", weight=cfg["cost_bbox"], box_format="xywh"),
                                  dict(type="IoUCost", iou_mode="giou", weight=cfg["cost_giou"])])
    matcher = HungarianMatcher.preset(preset)
    h, w = 480.0, 640.0
    scale = torch.tensor([w, h, w, h])
    for seed in range(4):
        outputs, targets = detr_case(100 + seed, sizes=(7, 12), Q=30)
        for b, (q, g) in enumerate(matcher(outputs, targets)):
            gt_px = corners(targets[b]["boxes"]) * scale
            pred_px = corners(outputs["pred_boxes"][b]) * scale
            ref = assigner.assign(Instances(scores=outputs["pred_logits"][b], bboxes=pred_px),
                                  Instances(labels=targets[b]["labels"], bboxes=gt_px), img_meta=dict(img_shape=(h, w)))
            rows = torch.nonzero(ref.gt_inds > 0).squeeze(1)
            assert torch.equal(q, rows) and torch.equal(g, ref.gt_inds[rows] - 1)


# ----------------------------------------------------------------------------- properties, groups, repeats
@given(st.integers(0, 2**31 - 1), st.lists(st.integers(0, 12), min_size=1, max_size=4), st.sampled_from([1, 2, 4]),
       st.integers(1, 3), st.booleans())
def test_one_to_one_per_group_counts_and_batched_equals_per_image(seed, sizes, groups, repeats, focal):
    Q = 8 * groups
    outputs, targets = detr_case(seed, sizes=sizes, Q=Q, C=5)
    matcher = HungarianMatcher(focal=focal, num_groups=groups, repeat_gts=repeats)
    indices = matcher(outputs, targets)
    assert len(indices) == len(sizes)
    for b, (q, g) in enumerate(indices):
        assert torch.equal(q, torch.sort(q).values) and len(q) == len(g)
        per_group = Q // groups
        assert len(q) == groups * min(per_group, repeats * sizes[b])
        for k in range(groups):
            in_group = (q >= k * per_group) & (q < (k + 1) * per_group)
            assert len(set(q[in_group].tolist())) == int(in_group.sum())  # each query once
            if bool(in_group.any()):
                assert int(torch.bincount(g[in_group]).max()) <= repeats  # each GT at most k times per group
        single = matcher(dict(pred_logits=outputs["pred_logits"][b:b + 1], pred_boxes=outputs["pred_boxes"][b:b + 1]),
                         targets[b:b + 1])[0]
        assert torch.equal(single[0], q) and torch.equal(single[1], g)


def test_groups_equal_separate_calls_per_group():
    # RF-DETR style: 13 groups of 10 queries, each matched on its own
    outputs, targets = detr_case(3, sizes=(4, 11), Q=130)
    grouped = HungarianMatcher.preset("dino")(outputs, targets, num_groups=13)
    plain = HungarianMatcher.preset("dino")
    for b, (q, g) in enumerate(grouped):
        parts = [plain(dict(pred_logits=outputs["pred_logits"][b:b + 1, k * 10:(k + 1) * 10],
                            pred_boxes=outputs["pred_boxes"][b:b + 1, k * 10:(k + 1) * 10]), targets[b:b + 1])[0]
                 for k in range(13)]
        assert torch.equal(q, torch.cat([p[0] + k * 10 for k, p in enumerate(parts)]))
        assert torch.equal(g, torch.cat([p[1] for p in parts]))


def test_repeats_equal_matching_repeated_targets():
    # H-DETR style: the GT list repeated k times, matched one-to-one, GT indices taken modulo M
    outputs, targets = detr_case(4, sizes=(3, 6), Q=24)
    k = 4
    repeated = [dict(labels=t["labels"].repeat(k), boxes=t["boxes"].repeat(k, 1)) for t in targets]
    ours = HungarianMatcher.preset("detr")(outputs, targets, repeat_gts=k)
    ref = HungarianMatcher.preset("detr")(outputs, repeated)
    for (q, g), (rq, rg), t in zip(ours, ref, targets):
        assert torch.equal(q, rq) and torch.equal(g, rg % len(t["labels"]))
        assert torch.equal(torch.bincount(g), torch.full((len(t["labels"]),), k))  # every GT matched k times


def test_empty_batch_queries_and_gts():
    matcher = HungarianMatcher()
    outputs, targets = detr_case(0, sizes=(0, 0))
    assert all(len(q) == 0 and len(g) == 0 for q, g in matcher(outputs, targets))
    outputs, targets = detr_case(0, sizes=(3,), Q=0)
    assert len(matcher(outputs, targets)[0][0]) == 0
    assert matcher(dict(pred_logits=torch.zeros(0, 5, 3), pred_boxes=torch.zeros(0, 5, 4)), []) == []


def test_half_precision_inputs_are_matched_in_float32():
    outputs, targets = detr_case(6, sizes=(6, 4), dtype=torch.float16)
    half = HungarianMatcher.preset("dino")(outputs, targets)
    full = HungarianMatcher.preset("dino")({k: v.float() for k, v in outputs.items()}, targets)
    for (q, g), (fq, fg) in zip(half, full):
        assert torch.equal(q, fq) and torch.equal(g, fg)


def test_hf_transformers_key_names_are_accepted():
    outputs, targets = detr_case(7, sizes=(3,))
    hf = HungarianMatcher()(dict(logits=outputs["pred_logits"], pred_boxes=outputs["pred_boxes"]),
                            [dict(class_labels=t["labels"], boxes=t["boxes"]) for t in targets])
    ref = HungarianMatcher()(outputs, targets)
    assert torch.equal(hf[0][0], ref[0][0]) and torch.equal(hf[0][1], ref[0][1])


# ----------------------------------------------------------------------------- solvers
def fake_torch_linear_assignment():
    """torch-linear-assignment's documented contract (cost [B, W, T] -> [B, W] task per worker, -1 none),
    solved by scipy: exercises the batching around the solver without its CUDA kernel."""
    def batch_linear_assignment(cost):
        out = torch.full(cost.shape[:2], -1, dtype=torch.long)
        for i, c in enumerate(cost.cpu().numpy()):
            rows, cols = linear_sum_assignment(c)
            out[i, torch.as_tensor(rows)] = torch.as_tensor(cols)
        return out.to(cost.device)

    module = types.ModuleType("torch_linear_assignment")
    module.__spec__ = importlib.machinery.ModuleSpec("torch_linear_assignment", None)
    module.batch_linear_assignment = batch_linear_assignment
    return module


def test_batched_solver_glue_equals_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_linear_assignment", fake_torch_linear_assignment())
    outputs, targets = detr_case(8, sizes=(5, 0, 5, 9), Q=24)
    for kw in (dict(), dict(num_groups=3), dict(repeat_gts=2), dict(num_groups=2, repeat_gts=3)):
        gpu = HungarianMatcher.preset("dino", solver="torch_linear_assignment")(outputs, targets, **kw)
        cpu = HungarianMatcher.preset("dino", solver="scipy")(outputs, targets, **kw)
        for (q, g), (cq, cg) in zip(gpu, cpu):
            assert torch.equal(q, cq) and torch.equal(g, cg)


def test_one_matching_call_per_matcher_call_on_float32_blocks(monkeypatch):
    # groups, repeats and the solver have one implementation (one_to_many.match_blocks): the matcher hands it
    # the per-image [B, Q, M] float32 costs and the GT mask once per call, whatever the options
    calls = []
    real = detr.match_blocks

    def spy(cost, gt_mask, **kwargs):
        calls.append((cost.dtype, tuple(cost.shape), gt_mask.tolist(), kwargs))
        return real(cost, gt_mask, **kwargs)

    monkeypatch.setattr(detr, "match_blocks", spy)
    outputs, targets = detr_case(12, sizes=(2, 0, 3), Q=12, dtype=torch.float16)
    HungarianMatcher.preset("dino")(outputs, targets, num_groups=3, repeat_gts=2)
    (dtype, shape, mask, kwargs), = calls
    assert dtype == torch.float32 and shape == (3, 12, 3)
    assert mask == [[True, True, False], [False] * 3, [True] * 3]
    assert kwargs == dict(repeat=2, groups=3, layout="tile", solver="scipy")   # H-DETR's column order


def test_auto_solver_is_scipy_on_cpu_and_missing_gpu_solver_is_named():
    assert resolve_solver("auto", torch.device("cpu")) == "scipy"
    if "torch_linear_assignment" not in sys.modules and importlib.util.find_spec("torch_linear_assignment") is None:
        with pytest.raises(ImportError, match="pip install torch-linear-assignment"):
            HungarianMatcher(solver="torch_linear_assignment")


# ----------------------------------------------------------------------------- errors
def test_non_finite_costs_name_the_image_and_the_term():
    outputs, targets = detr_case(9, sizes=(3, 4))
    outputs["pred_logits"][1, 2, 0] = float("nan")  # query 2's softmax is NaN for every class: 4 GT columns
    with pytest.raises(ValueError, match=r"image 1: class cost \(softmax\) has 4 NaN and 0 Inf"):
        HungarianMatcher()(outputs, targets)
    outputs, targets = detr_case(9, sizes=(3, 4))
    outputs["pred_boxes"][0, 5, 2] = float("inf")
    with pytest.raises(ValueError, match="image 0: L1 box cost has 0 NaN and 3 Inf.*GIoU box cost"):
        HungarianMatcher.preset("dino")(outputs, targets)
    # a NaN on a query of an image without GT, or in a padded column, is no error
    outputs, targets = detr_case(9, sizes=(3, 0))
    outputs["pred_logits"][1] = float("nan")
    HungarianMatcher()(outputs, targets)


@pytest.mark.parametrize("change, error, match", [
    (lambda o, t: t.pop(), ValueError, "list of 2 dicts"),
    (lambda o, t: t[0].update(labels=torch.tensor([0, 1, 99])), ValueError, "labels"),
    (lambda o, t: t[0].pop("boxes"), KeyError, "boxes"),
    (lambda o, t: t[0].update(boxes=-t[0]["boxes"]), ValueError, "w, h >= 0"),
    (lambda o, t: o.pop("pred_boxes"), KeyError, "pred_boxes"),
    (lambda o, t: o.update(pred_boxes=o["pred_boxes"][:, :, :2]), ValueError, "pred_boxes"),
])
def test_bad_input(change, error, match):
    outputs, targets = detr_case(10, sizes=(3, 2))
    change(outputs, targets)
    with pytest.raises(error, match=match):
        HungarianMatcher()(outputs, targets)


def test_bad_config():
    with pytest.raises(ValueError, match="must not all be 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    with pytest.raises(ValueError, match="solver"):
        HungarianMatcher(solver="lapx")
    with pytest.raises(ValueError, match="num_groups=7 must divide"):
        HungarianMatcher()(*detr_case(0, Q=20), num_groups=7)


# ----------------------------------------------------------------------------- README
def test_readme_snippet_runs():
    text = README.read_text()
    match = re.search(r"<!-- snippet: detr-matcher -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no python block after <!-- snippet: detr-matcher -->"
    outputs, targets = detr_case(11, sizes=(4, 2), Q=30)
    namespace = dict(outputs=outputs, targets=targets)
    exec(match.group(1), namespace)
    ref = HungarianMatcher.preset("dino")(outputs, targets)
    for (q, g), (rq, rg) in zip(namespace["indices"], ref):
        assert torch.equal(q, rq) and torch.equal(g, rg)
