"""`make bench`: detassign against the reference implementations, same inputs, same run.

Each (case, implementation) pair runs in fresh Python processes (3 on CPU by default, alternating ours /
reference) so that its peak memory is measured cleanly; a process's time is the median of several repetitions
after a warm-up, and a row reports the median process (a fresh process's page faults vary from one process
to the next, on both sides). The script prints a markdown table (times, ratio ours / reference, peak memory)
and writes it, a JSON file and a PNG chart to ``--out``.

    python benchmarks/run.py --out results/bench                 # CPU, 2 threads
    python benchmarks/run.py --device cuda --out results/bench_gpu
    python benchmarks/run.py --only tal_ultra                    # cases whose name contains this

Standard case (shared/ORACLES.md): 640 x 640 input, strides 8/16/32 (A = 8400), C = 80, B = 16,
GT sides log-uniform in 8..256 px, padded batches (image 0 has M GTs, the others randint(M/2, M)).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.oracles (reference import helpers)

STRIDES = (8, 16, 32)
IMG = 640


# ----------------------------------------------------------------------------- inputs
def anchor_points(torch, device, img=IMG, strides=STRIDES):
    """[A, 2] cell centers and [A] strides, level by level (A = 8400 at 640)."""
    pts, strd = [], []
    for s in strides:
        n = img // s
        ys, xs = torch.meshgrid(torch.arange(n, device=device), torch.arange(n, device=device), indexing="ij")
        p = torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s)
        pts.append(p)
        strd.append(torch.full((n * n,), float(s), device=device))
    return torch.cat(pts), torch.cat(strd)


def make_batch(torch, B, M, C, device, seed=0, full=False):
    """Padded GTs and predictions. Returns dict of tensors on ``device``."""
    g = torch.Generator().manual_seed(seed)
    counts = [M] + [M if full else int(torch.randint(max(M // 2, 1), M + 1, (1,), generator=g)) for _ in range(B - 1)]
    gt_bboxes = torch.zeros(B, M, 4)
    gt_labels = torch.zeros(B, M, dtype=torch.long)
    gt_mask = torch.zeros(B, M, dtype=torch.bool)
    for b, n in enumerate(counts):
        side = torch.exp(torch.empty(n, 2).uniform_(math.log(8), math.log(256), generator=g))
        ctr = torch.rand(n, 2, generator=g) * IMG
        box = torch.cat([ctr - side / 2, ctr + side / 2], 1).clamp(0, IMG)
        box[:, 2:] = torch.maximum(box[:, 2:], box[:, :2] + 1)
        gt_bboxes[b, :n] = box
        gt_labels[b, :n] = torch.randint(0, C, (n,), generator=g)
        gt_mask[b, :n] = True
    pts, strd = anchor_points(torch, "cpu")
    A = len(pts)
    # predicted boxes: around each anchor, sides up to 8 strides, so they overlap nearby GTs
    half = torch.rand(B, A, 2, generator=g) * strd[None, :, None] * 4 + 2
    shift = (torch.rand(B, A, 2, generator=g) - 0.5) * strd[None, :, None]
    ctr = pts[None] + shift
    pred_bboxes = torch.cat([ctr - half, ctr + half], -1)
    logits = torch.randn(B, A, C, generator=g) * 2 - 4
    out = dict(gt_bboxes=gt_bboxes, gt_labels=gt_labels, gt_mask=gt_mask, pred_bboxes=pred_bboxes,
               pred_logits=logits, pred_scores=logits.sigmoid(), points=pts, strides=strd, counts=counts)
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in out.items()}


def prior_boxes(torch, points, strides, scale):
    """Square anchors of side scale * stride centered on the points: [A, 4] xyxy."""
    half = strides[:, None] * scale / 2
    return torch.cat([points - half, points + half], 1)


# ----------------------------------------------------------------------------- implementations
def _mm():
    from tests.oracles import _mmdet
    return _mmdet


def _ul():
    from tests.oracles import _ultra
    return _ultra


def _per_image(d, b):
    n = d["counts"][b]
    return d["gt_bboxes"][b, :n], d["gt_labels"][b, :n]


def build_case(name, torch, device):
    """Return (ours_fn, ref_fn, inputs description). Each fn runs one full batch."""
    family, _, arg = name.partition(":")
    params = dict(kv.split("=") for kv in arg.split(",") if kv) if arg else {}
    B = int(params.get("B", 16))
    M = int(params.get("M", 50))
    C = 80
    if family == "hungarian":
        return _hungarian_case(torch, device, B, M, int(params.get("Q", 300)), C)
    if family == "yolo":
        return _yolo_case(torch, device, int(params.get("B", 8)))
    if family == "ultra_swap":
        return _ultra_swap_case(torch, device, B, int(params.get("M", 200)), C)
    if family == "detr_match":
        return _detr_match_case(torch, device, B, int(params.get("Q", 300)), M, int(params.get("G", 1)),
                                int(params.get("C", 91)))
    if family == "rtal":
        return _rotated_tal_case(torch, device, B, M, int(params.get("size", 1024)), int(params.get("C", 15)))
    if family == "detr_layers":
        return _detr_layers_case(torch, device, int(params.get("L", 6)), B, int(params.get("Q", 300)), M,
                                 int(params.get("C", 91)))
    d = make_batch(torch, B, M, C, device, full=family == "tal_dense")
    ours, priors, ref = _dense_case(family, params, torch, d, C)

    # ultralytics' TAL returns target boxes and [B, A, C] target scores, which ours computes when read:
    # read them where the reference builds them (mmdet's assigners return assignments only)
    read_targets = family in ("tal_ultra", "tal_dense")

    def run_ours():   # every assigner through the one batched interface, on the head's logits
        result = ours.assign_batch(d["pred_logits"], d["pred_bboxes"], priors, d["gt_labels"], d["gt_bboxes"],
                                   d["gt_mask"])
        if read_targets:
            result.extras
        return result
    return run_ours, ref


def _dense_case(family, params, torch, d, C):
    """(ours, the Priors it reads, the reference's run or None) for a dense-prior case. The references take the
    probabilities as their callers give them: ``pred_scores = pred_logits.sigmoid()``, the op ours applies."""
    from detassign import Priors

    B = len(d["counts"])
    pts, strd = d["points"], d["strides"]
    grid = Priors.from_points(pts, strd, [(IMG // s) ** 2 for s in STRIDES])

    def mmdet_loop(cfg, priors, scores=None, extra=()):
        """mmdet's assigner image by image (``extra``: arguments between the instances, ATSS' level sizes)."""
        def run_ref():
            ref = _mm().task_utils.build(cfg)
            out = []
            for b in range(B):
                gb, gl = _per_image(d, b)
                pred = dict(priors=priors) if scores is None else dict(priors=priors, bboxes=d["pred_bboxes"][b],
                                                                        scores=scores[b])
                out.append(ref.assign(_mm().InstanceData(**pred), *extra, _mm().InstanceData(bboxes=gb, labels=gl)))
            return out
        return run_ref

    if family in ("tal_ultra", "tal_dense"):
        from detassign.assigners.task_aligned import TaskAlignedAssigner
        ours = TaskAlignedAssigner(preset="ultralytics_loss", num_classes=C, method=params.get("method", "auto"))

        def run_ref():
            ref = _ul().tal.TaskAlignedAssigner(topk=10, num_classes=C, alpha=0.5, beta=6.0)
            return ref(d["pred_scores"], d["pred_bboxes"], pts, d["gt_labels"][..., None], d["gt_bboxes"],
                       d["gt_mask"][..., None].float())
        return ours, grid, None if family == "tal_dense" else run_ref
    if family == "tal_mmdet":
        from detassign.assigners.task_aligned import TaskAlignedAssigner
        ours = TaskAlignedAssigner(preset="mmdet", num_classes=C, method=params.get("method", "auto"))
        # TOOD's head passes probabilities
        return ours, grid, mmdet_loop(dict(type="TaskAlignedAssigner", topk=13), prior_boxes(torch, pts, strd, 8),
                                      d["pred_scores"])
    if family == "simota":
        from detassign.assigners.sim_ota import SimOTAAssigner
        return SimOTAAssigner(), grid, mmdet_loop(dict(type="SimOTAAssigner"), grid.point_priors(), d["pred_scores"])
    if family == "dsl":
        from detassign.assigners.dynamic_soft_label import DynamicSoftLabelAssigner
        return (DynamicSoftLabelAssigner(), grid,
                mmdet_loop(dict(type="DynamicSoftLabelAssigner"), grid.point_priors(), d["pred_logits"]))
    if family == "atss":
        from detassign.assigners.atss import ATSSAssigner
        # no anchor boxes: ATSS derives its squares of octave_base_scale (8) strides, mmdet's ATSS anchors
        return ATSSAssigner(topk=9), grid, mmdet_loop(dict(type="ATSSAssigner", topk=9),
                                                     prior_boxes(torch, pts, strd, 8), extra=[list(grid.level_sizes)])
    if family == "maxiou":
        from detassign.assigners.batch_max_iou import BatchMaxIoUAssigner
        cfg = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, ignore_iof_thr=-1)
        return (BatchMaxIoUAssigner(**cfg), grid.with_square_boxes(4),
                mmdet_loop(dict(type="MaxIoUAssigner", **cfg), prior_boxes(torch, pts, strd, 4)))
    raise SystemExit(f"unknown case family {family!r}")


def _hungarian_case(torch, device, B, M, Q, C):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, Q, C, generator=g).to(device)
    pred = torch.cat([torch.rand(B, Q, 2, generator=g) * 0.8 + 0.1, torch.rand(B, Q, 2, generator=g) * 0.3 + 0.02],
                     -1).to(device)  # normalised cxcywh
    side = torch.exp(torch.empty(B, M, 2).uniform_(math.log(8), math.log(256), generator=g))
    ctr = torch.rand(B, M, 2, generator=g) * IMG
    gt = torch.cat([ctr - side / 2, ctr + side / 2], -1).clamp(0, IMG).to(device)
    labels = torch.randint(0, C, (B, M), generator=g).to(device)
    mask = torch.ones(B, M, dtype=torch.bool, device=device)
    shapes = torch.tensor([[IMG, IMG]] * B, device=device)
    costs = [dict(type="FocalLossCost", weight=2.0), dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
             dict(type="IoUCost", iou_mode="giou", weight=2.0)]
    from detassign.assigners.hungarian import HungarianAssigner
    from detassign.boxes import cxcywh_to_xyxy
    ours = HungarianAssigner(match_costs=costs)
    pred_px = cxcywh_to_xyxy(pred) * IMG                                            # DETRHead's conversion

    def run_ours():
        return ours.assign_batch(logits, pred_px, None, labels, gt, mask, img_shapes=shapes)

    def run_ref():
        ref = _mm().task_utils.build(dict(type="HungarianAssigner", match_costs=costs))
        out = []
        for b in range(B):
            p = _mm().InstanceData(scores=logits[b], bboxes=pred_px[b])
            out.append(ref.assign(p, _mm().InstanceData(bboxes=gt[b], labels=labels[b]),
                                  img_meta=dict(img_shape=(IMG, IMG))))
        return out
    return run_ours, run_ref


def _ultra_swap_case(torch, device, B, M, C):
    """One ultralytics assignment step on a crowded batch: its TaskAlignedAssigner as v8DetectionLoss
    builds it (topk 10, alpha 0.5, beta 6), with and without the one-line swap; same call, same inputs."""
    from detassign.integrations.ultralytics import TaskAlignedAssigner
    d = make_batch(torch, B, M, C, device)
    args = (d["pred_scores"], d["pred_bboxes"], d["points"], d["gt_labels"][..., None].float(), d["gt_bboxes"],
            d["gt_mask"][..., None].float())
    kw = dict(topk=10, num_classes=C, alpha=0.5, beta=6.0, stride=list(STRIDES))
    ours = TaskAlignedAssigner(**kw)
    ref = _ul().tal.TaskAlignedAssigner(**kw)
    return (lambda: ours(*args)), (lambda: ref(*args))


def _detr_match_case(torch, device, B, Q, M, G, C):
    """DINO-style matching (focal 2 / 5 / 2) of B images, Q queries in G groups, M GTs per image (M/2..M).
    Reference: the field's matcher (DETR, Deformable-DETR, DINO, RF-DETR): costs of the cross-image
    [B * Q, sum M] matrix, one copy to the host, scipy per image (and per group)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from detassign.boxes import cxcywh_to_xyxy, pairwise_giou
    from detassign.integrations.detr import HungarianMatcher
    g = torch.Generator().manual_seed(0)
    outputs = dict(pred_logits=torch.randn(B, Q, C, generator=g).to(device),
                   pred_boxes=torch.cat([torch.rand(B, Q, 2, generator=g) * 0.8 + 0.1,
                                         torch.rand(B, Q, 2, generator=g) * 0.3 + 0.02], -1).to(device))
    targets = []
    for _ in range(B):
        m = int(torch.randint(max(M // 2, 1), M + 1, (1,), generator=g))
        box = torch.cat([torch.rand(m, 2, generator=g) * 0.8 + 0.1, torch.rand(m, 2, generator=g) * 0.3 + 0.02], -1)
        targets.append(dict(labels=torch.randint(0, C, (m,), generator=g).to(device), boxes=box.to(device)))
    ours = HungarianMatcher.preset("dino", num_groups=G)

    def run_ref():
        prob = outputs["pred_logits"].flatten(0, 1).sigmoid()                       # [B * Q, C]
        boxes = outputs["pred_boxes"].flatten(0, 1)
        ids = torch.cat([t["labels"] for t in targets])
        gt = torch.cat([t["boxes"] for t in targets])                                # [sum M, 4]
        neg = 0.75 * prob ** 2 * -(1 - prob + 1e-8).log()
        pos = 0.25 * (1 - prob) ** 2 * -(prob + 1e-8).log()
        cost = (5 * torch.cdist(boxes, gt, p=1) + 2 * (pos[:, ids] - neg[:, ids])
                - 2 * pairwise_giou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt)))
        cost = cost.view(B, Q, -1).cpu()
        sizes = [len(t["boxes"]) for t in targets]
        out = []
        for i, c in enumerate(cost.split(sizes, -1)):
            parts = [linear_sum_assignment(part) for part in c[i].split(Q // G, 0)]
            out.append((np.concatenate([r + k * (Q // G) for k, (r, _) in enumerate(parts)]),
                        np.concatenate([col for _, col in parts])))
        return out
    return (lambda: ours(outputs, targets)), run_ref


def _rotated_tal_case(torch, device, B, M, size, C):
    """Oriented boxes in a crowded aerial scene (DOTA-like: C = 15, a size x size image, strides 8/16/32, M
    GTs of 6..40 px at any angle per image): ultralytics' RotatedTaskAlignedAssigner as v8OBBLoss builds it
    (topk 10, alpha 0.5, beta 6) against ours with the same settings."""
    from detassign.assigners.rotated_task_aligned import RotatedTaskAlignedAssigner
    g = torch.Generator().manual_seed(0)
    pts, _ = anchor_points(torch, "cpu", img=size)
    A = len(pts)
    gt = torch.cat([torch.rand(B, M, 2, generator=g) * size, torch.rand(B, M, 2, generator=g) * 34 + 6,
                    (torch.rand(B, M, 1, generator=g) - 0.5) * math.pi], -1)
    pred = torch.cat([pts[None] + torch.randn(B, A, 2, generator=g) * 3, torch.rand(B, A, 2, generator=g) * 34 + 6,
                      (torch.rand(B, A, 1, generator=g) - 0.5) * math.pi], -1)
    scores, labels = torch.rand(B, A, C, generator=g), torch.randint(0, C, (B, M), generator=g)
    scores, pred, pts, gt, labels = (t.to(device) for t in (scores, pred, pts, gt, labels))
    ours = RotatedTaskAlignedAssigner(preset="ultralytics_loss", num_classes=C)
    ref = _ul().tal.RotatedTaskAlignedAssigner(topk=10, num_classes=C, alpha=0.5, beta=6.0, stride=list(STRIDES))
    mask = torch.ones(B, M, 1, device=device)
    return ((lambda: ours.assign_batch_probs(scores, pred, pts, labels, gt)),
            (lambda: ref(scores, pred, pts, labels[..., None].float(), gt, mask)))


def _detr_layers_case(torch, device, L, B, Q, M, C):
    """Matching every decoder layer (L of them, DINO costs focal 2 / L1 5 / GIoU 2) for B images of M/2..M
    GTs: ours builds the [L, B, Q, M] costs in one call and solves them in one solver call; the reference
    runs the field's matcher (cross-image [B * Q, sum M] costs, one host copy, scipy per image) per layer."""
    from scipy.optimize import linear_sum_assignment

    from detassign.assigners.one_to_many import OneToManyHungarianAssigner
    from detassign.boxes import cxcywh_to_xyxy, pairwise_giou
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(L, B, Q, C, generator=g).to(device)
    boxes = torch.cat([torch.rand(L, B, Q, 2, generator=g) * 0.8 + 0.1, torch.rand(L, B, Q, 2, generator=g) * 0.3
                       + 0.02], -1).to(device)
    sizes = torch.randint(max(M // 2, 1), M + 1, (B,), generator=g)
    mask = (torch.arange(M)[None] < sizes[:, None]).to(device)
    gt_cxcywh = torch.cat([torch.rand(B, M, 2, generator=g) * 0.8 + 0.1, torch.rand(B, M, 2, generator=g) * 0.3
                           + 0.02], -1).to(device)
    labels = torch.randint(0, C, (B, M), generator=g).to(device)
    shape = (IMG, IMG)
    gt_px = cxcywh_to_xyxy(gt_cxcywh) * IMG
    ours = OneToManyHungarianAssigner([dict(type="FocalLossCost", weight=2.0),
                                       dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                                       dict(type="IoUCost", iou_mode="giou", weight=2.0)])

    def run_ref():
        ids = torch.cat([labels[b, :int(n)] for b, n in enumerate(sizes)])
        gt = torch.cat([gt_cxcywh[b, :int(n)] for b, n in enumerate(sizes)])              # [sum M, 4]
        out = []
        for layer in range(L):
            prob = logits[layer].flatten(0, 1).sigmoid()
            pred = boxes[layer].flatten(0, 1)
            neg = 0.75 * prob ** 2 * -(1 - prob + 1e-8).log()
            pos = 0.25 * (1 - prob) ** 2 * -(prob + 1e-8).log()
            cost = (5 * torch.cdist(pred, gt, p=1) + 2 * (pos[:, ids] - neg[:, ids])
                    - 2 * pairwise_giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt))).view(B, Q, -1).cpu()
            out.append([linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes.tolist(), -1))])
        return out
    return (lambda: ours.assign_batch(logits, boxes, labels, gt_px, mask, shape)), run_ref


def _yolo_case(torch, device, B):
    x = torch.randn(B, 3, IMG, IMG, device=device)

    def tensors(out):
        if isinstance(out, torch.Tensor):
            return [out]
        items = out.values() if isinstance(out, dict) else out
        return [t for item in items for t in tensors(item)]

    def step(model):
        # same scalar on both models (mean of every head output) so the backward passes are comparable
        loss = sum(t.float().mean() for t in tensors(model(x)))
        loss.backward()

    from detassign.yolo import YOLO11
    ours = YOLO11(scale="n", num_classes=80).to(device).train()

    def run_ours():
        ours.zero_grad(set_to_none=True)
        step(ours)

    def run_ref():
        if not hasattr(run_ref, "model"):
            run_ref.model = _ul().tasks.DetectionModel("yolo11n.yaml", nc=80, verbose=False).to(device).train()
        run_ref.model.zero_grad(set_to_none=True)
        step(run_ref.model)
    return run_ours, run_ref


# ----------------------------------------------------------------------------- measurement
def _rss_peak_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_share(device, reps, B=8, M=20):
    """Time one YOLO11n training step split into forward, assignment, rest of the loss, backward."""
    import torch

    from detassign.yolo import YOLO11, DetectionLoss
    model = YOLO11(scale="n", num_classes=80).to(device).train()
    crit = DetectionLoss(num_classes=80)
    d = make_batch(torch, B, M, 80, device, seed=1)
    targets = dict(labels=d["gt_labels"], bboxes=d["gt_bboxes"], mask=d["gt_mask"])
    x = torch.randn(B, 3, IMG, IMG, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    assigner = crit.assigner
    spent = {"assign": 0.0}
    inner = assigner.assign_batch

    def timed_assign(*a, **k):
        sync()
        t0 = time.perf_counter()
        out = inner(*a, **k)
        sync()
        spent["assign"] += time.perf_counter() - t0
        return out
    assigner.assign_batch = timed_assign
    parts = {"forward": [], "loss": [], "backward": [], "assign": []}
    for i in range(reps + 1):
        model.zero_grad(set_to_none=True)
        spent["assign"] = 0.0
        sync()
        t0 = time.perf_counter()
        feats = model(x)
        sync()
        t1 = time.perf_counter()
        loss, _ = crit(feats, targets)
        sync()
        t2 = time.perf_counter()
        loss.backward()
        sync()
        t3 = time.perf_counter()
        if i:  # first iteration is the warm-up
            for k, v in (("forward", t1 - t0), ("loss", t2 - t1), ("backward", t3 - t2), ("assign", spent["assign"])):
                parts[k].append(v)
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = med["forward"] + med["loss"] + med["backward"]
    return dict(median_s=total, min_s=total, peak_mib=0.0, **{f"{k}_s": v for k, v in med.items()},
                assign_share=med["assign"] / total, loss_share=med["loss"] / total)


def measure(case, impl, device, reps, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case.startswith("step_share"):
        return step_share(device, reps) if impl == "ours" else None
    ours, ref = build_case(case, torch, device)
    fn = ours if impl == "ours" else ref
    if fn is None:
        return None
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad() if not case.startswith("yolo") else _null():
        base = _rss_peak_mib()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base_gpu = torch.cuda.memory_allocated() / 2**20
        fn()  # warm-up
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    peak = _rss_peak_mib() - base
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20 - base_gpu
    return dict(median_s=statistics.median(times), min_s=min(times), peak_mib=peak)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


CPU_CASES = [
    ("tal_ultra:M=10", "TaskAligned (ultralytics preset) M=10", "ultralytics TAL"),
    ("tal_ultra:M=50", "TaskAligned (ultralytics preset) M=50", "ultralytics TAL"),
    ("tal_ultra:M=200", "TaskAligned (ultralytics preset) M=200", "ultralytics TAL"),
    ("tal_mmdet:M=10", "TaskAligned (mmdet preset) M=10", "mmdet TAL loop"),
    ("tal_mmdet:M=50", "TaskAligned (mmdet preset) M=50", "mmdet TAL loop"),
    ("tal_mmdet:M=200", "TaskAligned (mmdet preset) M=200", "mmdet TAL loop"),
    ("simota:M=50", "SimOTA M=50", "mmdet SimOTA loop"),
    ("dsl:M=50", "DynamicSoftLabel M=50", "mmdet DSL loop"),
    ("atss:M=50", "ATSS M=50", "mmdet ATSS loop"),
    ("maxiou:M=50", "MaxIoU (batched) M=50", "mmdet MaxIoU loop"),
    ("hungarian:Q=300,M=50", "Hungarian Q=300 M=50", "mmdet Hungarian loop"),
    ("tal_dense:B=2,M=5000", "TaskAligned dense B=2 M=5000", "(ultralytics needs GBs)"),
    ("yolo:B=8", "YOLO11n fwd+bwd B=8 @640", "ultralytics DetectionModel"),
    ("step_share:B=8", "YOLO11n training step B=8 @640 (share in assign + loss)", "-"),
    ("ultra_swap:B=16,M=200", "ultralytics assignment step, exact swap, B=16 M=200", "ultralytics TAL (stock)"),
    ("ultra_swap:B=2,M=5000", "ultralytics assignment step, exact swap, B=2 M=5000", "ultralytics TAL (stock)"),
    ("detr_match:B=16,Q=300,M=50", "DETR matcher (DINO costs) B=16 Q=300 M=50", "DETR-style cross-image matcher"),
    ("detr_match:B=16,Q=3900,M=50,G=13", "DETR matcher, 13 groups (RF-DETR-like) B=16 Q=13x300 M=50",
     "DETR-style cross-image matcher"),
    ("rtal:B=2,M=1500", "Rotated TaskAligned (OBB, ultralytics_loss), crowded 1024 px, B=2 M=1500",
     "ultralytics RotatedTAL"),
    ("detr_layers:L=6,B=16,Q=300,M=50", "Hungarian, 6 decoder layers in one call, B=16 Q=300 M=50",
     "DETR-style matcher per layer"),
]
CUDA_CASES = [
    ("tal_ultra:M=50", "TaskAligned (ultralytics preset) M=50", "ultralytics TAL"),
    ("tal_ultra:M=200", "TaskAligned (ultralytics preset) M=200", "ultralytics TAL"),
    ("tal_ultra:B=64,M=200", "TaskAligned (ultralytics preset) B=64 M=200", "ultralytics TAL"),
    ("tal_ultra:B=64,M=200,method=sparse", "TaskAligned (ultralytics preset, sparse path: syncs) B=64 M=200",
     "ultralytics TAL"),
    ("tal_dense:B=2,M=5000", "TaskAligned dense B=2 M=5000", "(ultralytics needs GBs)"),
    ("simota:M=50", "SimOTA M=50", "mmdet SimOTA loop"),
    ("dsl:M=50", "DynamicSoftLabel M=50", "mmdet DSL loop"),
    ("atss:M=50", "ATSS M=50", "mmdet ATSS loop"),
    ("hungarian:Q=300,M=50", "Hungarian Q=300 M=50", "mmdet Hungarian loop"),
    ("yolo:B=8", "YOLO11n fwd+bwd B=8 @640", "ultralytics DetectionModel"),
    ("step_share:B=8", "YOLO11n training step B=8 @640 (share in assign + loss)", "-"),
    ("ultra_swap:B=16,M=200", "ultralytics assignment step, exact swap, B=16 M=200", "ultralytics TAL (stock)"),
    ("detr_match:B=16,Q=300,M=50", "DETR matcher (DINO costs) B=16 Q=300 M=50", "DETR-style cross-image matcher"),
    ("rtal:B=2,M=1500", "Rotated TaskAligned (OBB, ultralytics_loss), crowded 1024 px, B=2 M=1500",
     "ultralytics RotatedTAL"),
    ("detr_layers:L=6,B=16,Q=300,M=50", "Hungarian, 6 decoder layers in one call, B=16 Q=300 M=50",
     "DETR-style matcher per layer"),
]


def run_child(case, impl, device, reps, threads, timeout):
    cmd = [sys.executable, __file__, "--child", case, "--impl", impl, "--device", device, "--reps", str(reps),
           "--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(error=" | ".join(tail))
    return json.loads(lines[-1][len("RESULT "):])


def combine_runs(results):
    """The processes of one (case, implementation) -> one result: the median process by time (its peak memory
    and breakdown with it), the best time of all; an error if any process failed."""
    if not results or any(r is None for r in results):
        return None
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    by_time = sorted(results, key=lambda r: r["median_s"])
    median = dict(by_time[(len(by_time) - 1) // 2])
    median["min_s"] = min(r["min_s"] for r in results)
    median["process_medians_s"] = [r["median_s"] for r in results]
    return median


def fmt_t(r):
    return "n/a" if not r or "error" in r else f"{r['median_s'] * 1000:.1f} ms"


def fmt_m(r):
    return "n/a" if not r or "error" in r else f"{r['peak_mib']:.0f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--processes", type=int, default=None,
                    help="fresh processes per (case, implementation), alternating ours / reference; the time is the "
                         "median process's (default 3 on CPU, 1 on CUDA)")
    ap.add_argument("--only", default="")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--child")
    ap.add_argument("--impl", default="ours")
    args = ap.parse_args()
    if args.child:
        res = measure(args.child, args.impl, args.device, args.reps, args.threads)
        print("RESULT " + json.dumps(res))
        return
    cases = CUDA_CASES if args.device.startswith("cuda") else CPU_CASES
    cases = [c for c in cases if args.only in c[0]]
    rows, records = [], []
    header = ("| case | reference | ours | reference time | ratio (ours/ref) | ours peak | ref peak | memory ratio |\n"
              "|---|---|---|---|---|---|---|---|")
    print(header, flush=True)
    processes = args.processes if args.processes is not None else (1 if args.device.startswith("cuda") else 3)
    args.processes = processes
    for case, label, ref_label in cases:
        reps = args.reps if not case.startswith(("simota", "dsl")) or args.device != "cpu" else max(2, args.reps // 2)
        has_ref = not case.startswith(("tal_dense", "step_share"))
        runs = {"ours": [], "ref": []}
        for _ in range(processes):   # alternating, so that a slow spell of the machine hits both sides
            runs["ours"].append(run_child(case, "ours", args.device, reps, args.threads, args.timeout))
            if has_ref:
                runs["ref"].append(run_child(case, "ref", args.device, reps, args.threads, args.timeout))
        ours = combine_runs(runs["ours"])
        ref = combine_runs(runs["ref"]) if has_ref else None
        ratio = (f"{ours['median_s'] / ref['median_s']:.3f}"
                 if ours and ref and "error" not in ours and "error" not in ref else "n/a")
        mratio = (f"{max(ours['peak_mib'], 0.0) / max(ref['peak_mib'], 1.0):.2f}x"
                  if ours and ref and "error" not in ours and "error" not in ref else "n/a")
        row = f"| {label} | {ref_label} | {fmt_t(ours)} | {fmt_t(ref)} | {ratio} | {fmt_m(ours)} | {fmt_m(ref)} | {mratio} |"
        if ours and "assign_share" in ours:
            row += (f" forward {ours['forward_s'] * 1000:.0f} ms, loss {ours['loss_s'] * 1000:.0f} ms (of which "
                    f"assignment {ours['assign_s'] * 1000:.0f} ms), backward {ours['backward_s'] * 1000:.0f} ms: "
                    f"assignment {ours['assign_share']:.1%} and assignment + loss {ours['loss_share']:.1%} of the step |")
        for name, r in (("ours", ours), ("ref", ref)):
            if r and "error" in r:
                row += f" {name} error: {r['error'][:120]}"
        print(row, flush=True)
        rows.append(row)
        records.append(dict(case=case, label=label, reference=ref_label, ours=ours, ref=ref))
    _write(args, header, rows, records)


def _write(args, header, rows, records):
    import torch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = args.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev_name = torch.cuda.get_device_name(0)
    else:
        dev_name = f"{platform.processor() or platform.machine()}, {args.threads} threads"
    stamp = (f"{datetime.date.today().isoformat()}, {dev_name}, torch {torch.__version__}, median of "
             f"{args.processes} process(es) x {args.reps} repetitions")
    (out / "bench.md").write_text(f"Measured {stamp}\n\n{header}\n" + "\n".join(rows) + "\n")
    (out / "bench.json").write_text(json.dumps(dict(stamp=stamp, records=records), indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        pairs = [(r["label"], r["ours"]["median_s"] / r["ref"]["median_s"]) for r in records
                 if r["ours"] and r["ref"] and "error" not in r["ours"] and "error" not in r["ref"]]
        if pairs:
            fig, ax = plt.subplots(figsize=(8, 0.4 * len(pairs) + 1.2))
            ax.barh([p[0] for p in pairs], [p[1] for p in pairs], color="tab:blue")
            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("time ratio ours / reference (log; < 1 is faster)")
            ax.set_title(f"detassign vs references ({stamp})", fontsize=8)
            ax.invert_yaxis()
            fig.tight_layout()
            fig.savefig(out / "bench.png", dpi=120)
    except Exception as err:  # the table is the product; a missing chart must not lose it
        print(f"chart not written: {err}", file=sys.stderr)
    print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.png'}")


if __name__ == "__main__":
    main()
