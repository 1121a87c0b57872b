"""Dense-scene time and peak memory of every assigner, per image and batched, one child process each.

    python benchmarks/dense_memory.py                        # M = 20,000 GTs, A = 8,400 priors (the README table)
    python benchmarks/dense_memory.py --M 2000 --only dsl    # a smaller scene, cases whose name contains "dsl"

Scene: one 640 x 640 image, priors on strides 8 / 16 / 32 (A = 8,400), M GTs with sides log-uniform in
4..64 px and centres uniform over the image (about 7 GTs cover each pixel, so nearly every prior is a
candidate), C classes (default 1: a crowd / tree-crown scene), predicted boxes around each prior,
logits ~ N(-4, 2). "batched" is ``assign_batch`` on a padded batch of that one image. MultiInstance
takes N = 2,000 proposals (its output has a row per proposal *and* per GT); the Hungarian assigners
take the A priors' predicted boxes as queries.

Each case runs in its own Python process (``torch.set_num_threads(--threads)``), once, without a warm-up;
its peak memory is the child's peak resident set size (``ru_maxrss``), interpreter and torch included.
Prints a markdown table (assigner, path, time s, peak GiB, a summary of the result).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = 640
STRIDES = (8, 16, 32)

# (case, assigner, path)
CASES = [
    ("max_iou:image", "MaxIoU", "per image"),
    ("max_iou:batch", "MaxIoU (BatchMaxIoU)", "batched"),
    ("approx_max_iou:image", "ApproxMaxIoU (9 approxs / square)", "per image"),
    ("atss:image", "ATSS", "per image"),
    ("atss:batch", "ATSS", "batched"),
    ("task_aligned:image", "TaskAligned (mmdet preset)", "per image"),
    ("task_aligned:batch", "TaskAligned (ultralytics preset)", "batched"),
    ("sim_ota:image", "SimOTA", "per image"),
    ("sim_ota:batch", "SimOTA", "batched"),
    ("dsl:image", "DynamicSoftLabel", "per image"),
    ("dsl:batch", "DynamicSoftLabel", "batched"),
    ("hungarian:image", "Hungarian", "per image"),
    ("hungarian:batch", "Hungarian", "batched"),
    ("topk_hungarian:image", "TopkHungarian", "per image"),
    ("multi_instance:image", "MultiInstance (N = 2,000)", "per image"),
    ("region:image", "Region", "per image"),
    ("uniform:image", "Uniform", "per image"),
    ("point:image", "Point", "per image"),
    ("grid:image", "Grid", "per image"),
    ("center_region:image", "CenterRegion", "per image"),
]


# ----------------------------------------------------------------------------- scene
def scene(torch, M: int, C: int, seed: int = 0) -> dict:
    """One dense image: GTs [M, 4] / [M], points [A, 2], strides [A], predictions [A, 4] / [A, C] logits."""
    g = torch.Generator().manual_seed(seed)
    pts, strd = [], []
    for s in STRIDES:
        n = IMG // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        pts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s))
        strd.append(torch.full((n * n,), float(s)))
    points, strides = torch.cat(pts), torch.cat(strd)
    A = len(points)
    side = torch.exp(torch.empty(M, 2).uniform_(math.log(4), math.log(64), generator=g))
    centre = torch.rand(M, 2, generator=g) * IMG
    gt_bboxes = torch.cat([centre - side / 2, centre + side / 2], 1).clamp(0, IMG)
    gt_bboxes[:, 2:] = torch.maximum(gt_bboxes[:, 2:], gt_bboxes[:, :2] + 1)
    gt_labels = torch.randint(0, C, (M,), generator=g)
    half = torch.rand(A, 2, generator=g) * strides[:, None] * 2 + 1
    shift = (torch.rand(A, 2, generator=g) - 0.5) * strides[:, None]
    pred_bboxes = torch.cat([points + shift - half, points + shift + half], -1)
    logits = torch.randn(A, C, generator=g) * 2 - 4
    return dict(gt_bboxes=gt_bboxes, gt_labels=gt_labels, points=points, strides=strides,
                pred_bboxes=pred_bboxes, logits=logits, num_level=[(IMG // s) ** 2 for s in STRIDES])


def anchors(torch, d, scale: float = 4.0):
    """Square anchors of side scale * stride on the points: [A, 4] xyxy."""
    half = d["strides"][:, None] * scale / 2
    return torch.cat([d["points"] - half, d["points"] + half], 1)


def build(case: str, torch, M: int, C: int, N: int):
    """-> a function running the case once and returning a short summary of its result."""
    from detassign.structures import Instances, Priors
    d = scene(torch, M, C)
    name, _, path = case.partition(":")
    gt = Instances(bboxes=d["gt_bboxes"], labels=d["gt_labels"])
    pts4 = torch.cat([d["points"], d["strides"][:, None], d["strides"][:, None]], 1)   # (cx, cy, sw, sh)
    batch = dict(gt_bboxes=d["gt_bboxes"][None], gt_labels=d["gt_labels"][None],
                 gt_mask=torch.ones(1, M, dtype=torch.bool))

    def positives(result):
        return f"{int((result.gt_inds > 0).sum())} positives"

    if name == "max_iou":
        from detassign.assigners.batch_max_iou import BatchMaxIoUAssigner
        from detassign.assigners.max_iou import MaxIoUAssigner
        cfg = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)
        priors = anchors(torch, d)
        if path == "image":
            return lambda: positives(MaxIoUAssigner(**cfg).assign(Instances(priors=priors), gt))
        return lambda: positives(BatchMaxIoUAssigner(**cfg).assign_batch(
            None, None, priors, batch["gt_labels"], batch["gt_bboxes"], batch["gt_mask"]))
    if name == "approx_max_iou":
        from detassign.assigners.approx_max_iou import ApproxMaxIoUAssigner
        squares = anchors(torch, d)
        scales = torch.tensor([2.0, 4.0, 8.0]).repeat_interleave(3)                     # 3 scales x 3 ratios
        ratios = torch.tensor([0.5, 1.0, 2.0]).repeat(3).sqrt()
        w = d["strides"][:, None] * scales * ratios / 2                                  # [A, 9] half sides
        h = d["strides"][:, None] * scales / ratios / 2
        cx, cy = d["points"][:, :1], d["points"][:, 1:]
        approxs = torch.stack([cx - w, cy - h, cx + w, cy + h], -1)                       # [A, 9, 4]
        pred = Instances(priors=squares, approxs=approxs)
        return lambda: positives(ApproxMaxIoUAssigner(0.5, 0.4).assign(pred, gt))
    if name == "atss":
        from detassign.assigners.atss import ATSSAssigner
        priors = anchors(torch, d, 8.0)
        if path == "image":
            return lambda: positives(ATSSAssigner(topk=9).assign(Instances(priors=priors), d["num_level"], gt))
        return lambda: positives(ATSSAssigner(topk=9).assign_batch(
            None, None, Priors.from_boxes(priors, d["num_level"]), batch["gt_labels"], batch["gt_bboxes"],
            batch["gt_mask"]))
    if name == "task_aligned":
        from detassign.assigners.task_aligned import TaskAlignedAssigner
        scores = d["logits"].sigmoid()
        if path == "image":
            pred = Instances(priors=anchors(torch, d, 8.0), bboxes=d["pred_bboxes"], scores=scores)
            return lambda: positives(TaskAlignedAssigner(preset="mmdet", num_classes=C).assign(pred, gt))
        tal = TaskAlignedAssigner(preset="ultralytics_loss", num_classes=C)    # assign_batch takes logits
        run = lambda: tal.assign_batch(d["logits"][None], d["pred_bboxes"][None], d["points"],  # noqa: E731
                                       batch["gt_labels"], batch["gt_bboxes"], batch["gt_mask"])
        return lambda: f"{int(run().fg_mask.sum())} positives"
    if name in ("sim_ota", "dsl"):
        if name == "sim_ota":
            from detassign.assigners.sim_ota import SimOTAAssigner as cls
            scores = d["logits"].sigmoid()
        else:
            from detassign.assigners.dynamic_soft_label import DynamicSoftLabelAssigner as cls
            scores = d["logits"]
        if path == "image":
            pred = Instances(priors=pts4, bboxes=d["pred_bboxes"], scores=scores)
            return lambda: positives(cls().assign(pred, gt))
        grid = Priors.from_points(d["points"], d["strides"], d["num_level"])     # both take logits batched
        return lambda: positives(cls().assign_batch(d["logits"][None], d["pred_bboxes"][None], grid,
                                                    batch["gt_labels"], batch["gt_bboxes"], batch["gt_mask"]))
    if name == "hungarian":
        from detassign.assigners.hungarian import HungarianAssigner
        costs = [dict(type="FocalLossCost", weight=2.0), dict(type="BBoxL1Cost", weight=5.0),
                 dict(type="IoUCost", iou_mode="giou", weight=2.0)]
        meta = dict(img_shape=(IMG, IMG))
        if path == "image":
            pred = Instances(scores=d["logits"], bboxes=d["pred_bboxes"])
            return lambda: positives(HungarianAssigner(costs).assign(pred, gt, img_meta=meta))
        return lambda: positives(HungarianAssigner(costs).assign_batch(
            d["logits"][None], d["pred_bboxes"][None], None, batch["gt_labels"], batch["gt_bboxes"], batch["gt_mask"],
            img_shapes=(IMG, IMG)))
    if name == "topk_hungarian":
        from detassign.assigners.topk_hungarian import TopkHungarianAssigner
        return lambda: positives(TopkHungarianAssigner(topk=4).assign(
            d["logits"].sigmoid(), d["pred_bboxes"], d["gt_bboxes"], d["gt_labels"], dict(img_shape=(IMG, IMG))))
    if name == "multi_instance":
        from detassign.assigners.multi_instance import MultiInstanceAssigner
        pick = torch.randperm(len(d["pred_bboxes"]), generator=torch.Generator().manual_seed(1))[:N]
        proposals = d["pred_bboxes"][pick]
        return lambda: f"{int((MultiInstanceAssigner().assign(Instances(priors=proposals), gt).labels == 1).sum())} " \
                       "fg slots"
    if name == "region":
        from detassign.assigners.region import RegionAssigner
        sizes = [(IMG // s, IMG // s) for s in STRIDES]
        pred = Instances(priors=anchors(torch, d, 8.0))
        return lambda: positives(RegionAssigner().assign(pred, gt, dict(img_shape=(IMG, IMG)), sizes, d["num_level"],
                                                         8.0, list(STRIDES)))
    if name == "uniform":
        from detassign.assigners.uniform import UniformAssigner
        pred = Instances(priors=anchors(torch, d), decoder_priors=d["pred_bboxes"])
        return lambda: positives(UniformAssigner().assign(pred, gt))
    if name == "point":
        from detassign.assigners.point import PointAssigner
        pred = Instances(priors=torch.cat([d["points"], d["strides"][:, None]], 1))
        return lambda: positives(PointAssigner().assign(pred, gt))
    if name == "grid":
        from detassign.assigners.grid import GridAssigner
        priors = anchors(torch, d)
        centre = (d["gt_bboxes"][:, :2] + d["gt_bboxes"][:, 2:]) / 2
        flags = torch.zeros(len(priors), dtype=torch.bool)
        first = 0
        for s in STRIDES:   # YOLOv3: on every level, the cell holding a GT centre is responsible
            n = IMG // s
            cells = (centre // s).long().clamp(0, n - 1)
            flags[first + cells[:, 1] * n + cells[:, 0]] = True
            first += n * n
        pred = Instances(priors=priors, responsible_flags=flags)
        return lambda: positives(GridAssigner(0.5, 0.4).assign(pred, gt))
    if name == "center_region":
        from detassign.assigners.center_region import CenterRegionAssigner
        return lambda: positives(CenterRegionAssigner(0.2, 0.5).assign(Instances(priors=anchors(torch, d)), gt))
    raise SystemExit(f"unknown case {case!r}")


# ----------------------------------------------------------------------------- child / parent
def child(args) -> None:
    import resource

    import torch
    torch.set_num_threads(args.threads)
    run = build(args.child, torch, args.M, args.C, args.N)
    start = time.perf_counter()
    summary = run()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20        # KiB -> GiB
    print("RESULT " + json.dumps(dict(time_s=elapsed, peak_gib=peak, summary=summary)))


def run_child(case: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--M", str(args.M), "--C", str(args.C), "--N", str(args.N),
           "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "src"))
                                                      if p))

    def limit():   # address-space cap, so that a runaway case fails alone instead of exhausting the machine
        if args.limit_gib:
            import resource
            cap = int(args.limit_gib * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {args.timeout} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return dict(error=tail[0][:160])
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--M", type=int, default=20_000, help="GTs in the image")
    parser.add_argument("--C", type=int, default=1, help="classes")
    parser.add_argument("--N", type=int, default=2_000, help="MultiInstance proposals")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="run the cases whose name contains this (comma-separated)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--limit-gib", type=float, default=0.0, help="address-space cap per child (0: none)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    wanted = [w for w in args.only.split(",") if w]
    # torch is not imported here: a forked child's ru_maxrss starts at the parent's resident size
    print(f"M = {args.M}, A = {sum((IMG // s) ** 2 for s in STRIDES)}, C = {args.C}, MultiInstance N = {args.N}; "
          f"{args.threads} thread(s), torch {importlib.metadata.version('torch')}, "
          f"{platform.processor() or platform.machine()}", flush=True)
    print("\n| assigner | path | time (s) | peak (GiB) | result |\n|---|---|---|---|---|", flush=True)
    for case, assigner, path in CASES:
        if wanted and not any(w in case for w in wanted):
            continue
        r = run_child(case, args)
        if "error" in r:
            print(f"| {assigner} | {path} | — | — | {r['error']} |", flush=True)
        else:
            print(f"| {assigner} | {path} | {r['time_s']:.1f} | {r['peak_gib']:.2f} | {r['summary']} |", flush=True)


if __name__ == "__main__":
    main()
