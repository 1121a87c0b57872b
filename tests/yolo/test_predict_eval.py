"""Inference (decode, greedy NMS) and COCO evaluation."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign.boxes import pairwise_iou
from detassign.yolo import evaluate as E
from detassign.yolo.evaluate import coco_evaluate, to_coco_json
from detassign.yolo.predict import batched_greedy_nms, decode, greedy_nms, make_anchor_points, nms
from tests.oracles import ultralytics


def brute_force_nms(boxes, scores, iou_thres):
    """Sequential greedy NMS, one box at a time (the textbook definition)."""
    iou = pairwise_iou(boxes, boxes).tolist()
    score = scores.tolist()
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    keep = []
    for i in order:
        if all(iou[i][j] <= iou_thres for j in keep):
            keep.append(i)
    return keep


def clustered_boxes(seed, n=60, clusters=6):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, 2, generator=g) * 200
    pick = torch.randint(0, clusters, (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * 6
    wh = torch.rand(n, 2, generator=g) * 30 + 5
    boxes = torch.cat((xy - wh / 2, xy + wh / 2), 1)
    scores = torch.rand(n, generator=g)
    scores[: n // 6] = scores[n // 6: 2 * (n // 6)]  # ties
    return boxes, scores


# ----------------------------------------------------------------------------- NMS
@pytest.mark.parametrize("seed", range(20))
def test_greedy_nms_equals_brute_force(seed):
    boxes, scores = clustered_boxes(seed)
    thr = (0.3, 0.5, 0.7)[seed % 3]
    assert greedy_nms(boxes, scores, thr).tolist() == brute_force_nms(boxes, scores, thr)


@pytest.mark.parametrize("seed", range(6))
def test_blocked_nms_equals_brute_force(seed):
    # blocks of 7 / 16 sorted boxes: kept boxes of earlier blocks suppress later ones, ties cross blocks
    boxes, scores = clustered_boxes(50 + seed, n=90, clusters=4)
    expected = brute_force_nms(boxes, scores, 0.45)
    for block in (7, 16):
        assert greedy_nms(boxes, scores, 0.45, block_size=block).tolist() == expected
        # stopping after k kept boxes is exact: lower-ranked boxes never change earlier decisions
        assert greedy_nms(boxes, scores, 0.45, max_keep=5, block_size=block).tolist() == expected[:5]


@pytest.mark.parametrize("seed", range(8))
def test_class_aware_nms_equals_per_class_brute_force(seed):
    boxes, scores = clustered_boxes(100 + seed)
    classes = torch.randint(0, 3, (len(scores),), generator=torch.Generator().manual_seed(seed))
    kept = set(batched_greedy_nms(boxes, scores, classes, 0.5).tolist())
    expected = set()
    for c in range(3):
        idx = torch.nonzero(classes == c)[:, 0]
        expected |= {int(idx[k]) for k in brute_force_nms(boxes[idx], scores[idx], 0.5)}
    assert kept == expected


@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), thr=st.floats(0.1, 0.9))
def test_nms_properties(seed, n, thr):
    # Greedy NMS is characterised by: kept boxes overlap each other by <= thr, and every dropped box
    # overlaps a kept box of higher rank by > thr. The result is invariant to the input order.
    boxes, scores = clustered_boxes(seed, n=n, clusters=3)
    scores = scores + torch.arange(n) * 1e-4  # distinct scores, so the ranking is order-free
    keep = greedy_nms(boxes, scores, thr)
    iou = pairwise_iou(boxes, boxes)
    kept = keep.tolist()
    assert all(iou[i, j] <= thr for a, i in enumerate(kept) for j in kept[a + 1:])
    for d in set(range(n)) - set(kept):
        assert any(iou[k, d] > thr and scores[k] > scores[d] for k in kept)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert sorted(perm[greedy_nms(boxes[perm], scores[perm], thr)].tolist()) == sorted(kept)


def test_nms_hand_case_and_empty():
    # Boxes 0 and 1 overlap with IoU 81 / 119 = 0.68 (9x9 intersection of two 10x10 boxes);
    # box 2 is far away. thr 0.5 -> box 1 (lower score) suppressed; thr 0.7 -> all kept.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert greedy_nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert greedy_nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert greedy_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


def _predictions(seed, B=2, nc=3, A=80):
    """Decoded-layout predictions [B, 4 + nc, A] with clustered boxes."""
    out = []
    for b in range(B):
        boxes, scores = clustered_boxes(seed * 10 + b, n=A)
        cls = torch.rand(A, nc, generator=torch.Generator().manual_seed(seed * 10 + b)) * scores[:, None]
        xywh = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)
        out.append(torch.cat((xywh, cls), 1).T)
    return torch.stack(out)


def test_nms_output_format_and_options():
    preds = _predictions(0)
    out = nms(preds, conf_thres=0.2, iou_thres=0.6)
    assert len(out) == 2
    for det in out:
        assert det.shape[1] == 6
        assert torch.all(det[:, 4] > 0.2)
        assert torch.all(det[:-1, 4] >= det[1:, 4])  # by descending score
        assert torch.all(det[:, 5] == det[:, 5].round())
    assert all(len(d) <= 3 for d in nms(preds, conf_thres=0.0, max_det=3))
    multi = nms(preds, conf_thres=0.2, multi_label=True)
    assert all(len(m) >= len(o) for m, o in zip(multi, out))
    agnostic = nms(preds, conf_thres=0.2, iou_thres=0.6, agnostic=True)
    assert all(len(a) <= len(o) for a, o in zip(agnostic, out))
    assert all(len(d) == 0 for d in nms(preds, conf_thres=0.999))
    with pytest.raises(ValueError, match="iou_thres"):
        nms(preds, iou_thres=1.5)
    with pytest.raises(ValueError, match="predictions"):
        nms(preds[:, :4])


@pytest.mark.oracle
@pytest.mark.parametrize("multi_label", [False, True])
def test_nms_matches_ultralytics(multi_label):
    ultra = ultralytics()
    from ultralytics.utils.nms import non_max_suppression

    assert ultra is not None
    for seed in range(5):
        preds = _predictions(seed)
        ours = nms(preds, conf_thres=0.1, iou_thres=0.5, multi_label=multi_label)
        ref = non_max_suppression(preds.clone(), conf_thres=0.1, iou_thres=0.5, multi_label=multi_label)
        for a, b in zip(ours, ref):
            key = lambda d: sorted(map(tuple, d.round(decimals=4).tolist()))  # noqa: E731
            assert key(a) == key(b)


# ----------------------------------------------------------------------------- decode
def test_decode_hand_case():
    # One 1x1 level, stride 8, K = 1. Every side's distribution peaks at bin 2 -> distances 2 cells from the
    # anchor (0.5, 0.5): box (-1.5, -1.5, 2.5, 2.5) cells -> centre (0.5, 0.5) * 8 = 4 px, size 4 * 8 = 32 px.
    logits = torch.full((1, 4, 16), -30.0)
    logits[..., 2] = 30.0
    raw = torch.cat((logits.view(1, 64, 1, 1), torch.zeros(1, 1, 1, 1)), 1)
    out = decode([raw], [8.0], reg_max=16)
    torch.testing.assert_close(out, torch.tensor([[[4.0], [4.0], [32.0], [32.0], [0.5]]]))
    points, strides = make_anchor_points([torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 1)], [8, 16])
    assert points.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5], [0.5, 0.5]]
    assert strides[:, 0].tolist() == [8.0] * 6 + [16.0]


# ----------------------------------------------------------------------------- evaluation
def _gts():
    return [dict(boxes=torch.tensor([[10.0, 10, 50, 50], [60, 60, 100, 120], [5, 70, 25, 90]]),
                 labels=torch.tensor([0, 1, 0])),
            dict(boxes=torch.tensor([[5.0, 5, 40, 30]]), labels=torch.tensor([1])),
            dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]


def _as_predictions(gts, shift=0.0):
    return [torch.cat((g["boxes"] + shift, torch.linspace(0.9, 0.5, len(g["labels"]))[:, None],
                       g["labels"][:, None].float()), 1) for g in gts]


def test_perfect_shifted_and_empty_predictions():
    gts = _gts()
    perfect = coco_evaluate(_as_predictions(gts), gts)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in perfect["ap_per_iou"].values())
    assert perfect["mar_300"] == pytest.approx(1.0)
    shifted = coco_evaluate(_as_predictions(gts, shift=3.0), gts)
    assert 0 < shifted["map"] < 1.0 and shifted["map50"] == pytest.approx(1.0)
    assert shifted["ap_per_iou"][0.95] < shifted["ap_per_iou"][0.5]
    empty = coco_evaluate([torch.zeros(0, 6)] * 3, gts)
    assert empty["map"] == 0.0 and empty["map50"] == 0.0
    assert set(perfect["ap_per_class"]) == {0, 1}


def test_readout_equals_the_evaluators_own_summary():
    # our reading of the accumulated arrays == faster-coco-eval's summarize() (maxDets [1, 10, 300])
    pytest.importorskip("faster_coco_eval")
    from faster_coco_eval import COCOeval_faster

    gts = _gts()
    g = torch.Generator().manual_seed(0)
    preds = [p + torch.cat((torch.randn(len(p), 4, generator=g) * 3, torch.zeros(len(p), 2)), 1)
             for p in _as_predictions(gts)]
    ours = coco_evaluate(preds, gts, max_dets=300)
    coco_cls = E._backend()[0]
    gt_ds = E.coco_ground_truth(gts)
    ev = COCOeval_faster(E._coco_from_dict(coco_cls, gt_ds),
                         E._coco_from_dict(coco_cls, E._detections_dataset(gt_ds, preds)), iouType="bbox")
    ev.params.maxDets = [1, 10, 300]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    ref = ev.stats_as_dict
    for ours_key, ref_key in (("map", "AP_all"), ("map50", "AP_50"), ("map75", "AP_75"), ("map_small", "AP_small"),
                              ("mar_1", "AR_1"), ("mar_10", "AR_10"), ("mar_300", "AR_300"), ("mar_small", "AR_small")):
        assert ours[ours_key] == pytest.approx(ref[ref_key]), ours_key


def test_pycocotools_fallback_gives_the_same_numbers(monkeypatch):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts = _gts()
    preds = _as_predictions(gts, shift=2.0)
    fast = coco_evaluate(preds, gts)
    monkeypatch.setattr(E, "_backend", lambda: (COCO, COCOeval, "pycocotools"))
    slow = coco_evaluate(preds, gts)
    assert slow["backend"] == "pycocotools"
    for key in ("map", "map50", "map75", "mar_300"):
        assert slow[key] == pytest.approx(fast[key]), key
    assert coco_evaluate([torch.zeros(0, 6)] * 3, gts)["map"] == 0.0


def test_dense_scene_needs_max_dets_above_100():
    # 150 GT boxes in one image, all predicted perfectly: with maxDets 100 only the 100 best count.
    xs = torch.arange(150, dtype=torch.float32) % 15 * 40
    ys = torch.div(torch.arange(150), 15, rounding_mode="floor").float() * 40
    boxes = torch.stack((xs, ys, xs + 30, ys + 30), 1)
    gts = [dict(boxes=boxes, labels=torch.zeros(150, dtype=torch.long))]
    preds = [torch.cat((boxes, torch.linspace(1, 0.1, 150)[:, None], torch.zeros(150, 1)), 1)]
    assert coco_evaluate(preds, gts, max_dets=300)["map"] == pytest.approx(1.0)
    assert coco_evaluate(preds, gts, max_dets=100)["map"] < 0.7


def test_to_coco_json(tmp_path):
    preds = [torch.tensor([[10.0, 20, 40, 60, 0.9, 2]]), torch.zeros(0, 6)]
    path = tmp_path / "dets.json"
    res = to_coco_json(preds, image_ids=[7, 8], class_ids=[1, 2, 3], path=str(path))
    assert res == [{"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9}]
    assert json.loads(path.read_text()) == res
    with pytest.raises(ValueError, match="image_ids"):
        to_coco_json(preds, image_ids=[1])


def test_evaluate_bad_inputs():
    with pytest.raises(ValueError, match="one entry per image"):
        coco_evaluate([torch.zeros(0, 6)], _gts())
    with pytest.raises(ValueError, match="max_dets"):
        coco_evaluate([torch.zeros(0, 6)] * 3, _gts(), max_dets=5)
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        coco_evaluate([torch.zeros(2, 4)] * 3, _gts())
    assert math.isclose(coco_evaluate([torch.zeros(0, 6)], [dict(boxes=torch.zeros(0, 4),
                                                                 labels=torch.zeros(0))])["map"], -1.0)


# ----------------------------------------------------------------------------- the report of `detassign val`
def test_tied_ious_match_the_last_gt_as_cocoeval():
    # GTs g0 = [0, 10], g1 = [2, 12] (x; all boxes 10 high). Detection A = [1, 11] (0.9) has IoU 90 / 110 with
    # both; B = [-3, 7] (0.8) has IoU 70 / 130 = 0.54 with g0 and 50 / 150 = 0.33 with g1. COCOeval gives A the
    # last of the tied GTs (g1), so B matches g0: 2 TPs, AP50 = 1 (A taking g0 would leave B a false positive).
    gts = [dict(boxes=torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10]]), labels=torch.tensor([0, 0]))]
    preds = [torch.tensor([[1.0, 0, 11, 10, 0.9, 0], [-3, 0, 7, 10, 0.8, 0]])]
    assert coco_evaluate(preds, gts)["map50"] == pytest.approx(1.0)
    assert E.precision_recall_curves(preds, gts, 1)["ap"][0] == pytest.approx(1.0)


def test_class_counts_by_hand():
    # _gts(): image 0 holds classes 0, 1, 0; image 1 class 1; image 2 nothing
    images, instances = E.class_counts(_gts(), 3)
    assert images.tolist() == [1, 2, 0] and instances.tolist() == [2, 2, 0]


def test_detection_report_rows_and_json():
    gts = _gts()
    report = E.evaluate_detections(_as_predictions(gts, shift=3.0), gts, ["cat", "dog", "bird"])
    rows = report.rows()
    assert [r["class"] for r in rows] == ["all", "cat", "dog"]  # bird has no GT: no row, as ultralytics
    assert (rows[0]["images"], rows[0]["instances"]) == (3, 4)
    for row, c in zip(rows[1:], (0, 1)):
        assert row["map"] == pytest.approx(report.metrics["ap_per_class"][c])
        assert row["map50"] == pytest.approx(report.metrics["ap50_per_class"][c])
        assert row["map50"] == pytest.approx(report.curves["ap"][c])  # COCOeval's matching, both ways
    assert rows[0]["precision"] == pytest.approx(np.mean([r["precision"] for r in rows[1:]]))
    written = json.loads(json.dumps(report.to_dict()))
    assert set(written["ap_per_class"]) == {"cat", "dog", "bird"} and written["ap_per_class"]["bird"] == -1.0
    assert written["map"] == pytest.approx(report.metrics["map"]) and "0.5" in written["ap_per_iou"]
    table = report.table().splitlines()
    assert table[0].split() == ["class", "images", "instances", "P", "R", "mAP50", "mAP50-95"] and len(table) == 4
    perfect = E.evaluate_detections(_as_predictions(gts), gts, ["cat", "dog", "bird"]).rows()[0]
    assert perfect["precision"] == perfect["recall"] == perfect["map"] == pytest.approx(1.0)


def test_predict_loader_maps_boxes_back_and_times_each_stage():
    from detassign.data import DetectionDataset, collate
    from detassign.data.readers import DetectionRecord, DetectionSet
    from detassign.data.transforms import EvalTransform
    from detassign.yolo.predict import predict_loader

    class Fixed(torch.nn.Module):
        """One box (cx, cy, w, h) = (32, 32, 16, 16) in the network input, score 0.8 for class 0."""

        def forward(self, x):
            return torch.tensor([32.0, 32, 16, 16, 0.8]).view(1, 5, 1).expand(x.shape[0], 5, 1)

    records = [DetectionRecord(np.zeros((h, w, 3), np.uint8), [[1, 2, 9, 9]], [0], w, h, name=f"r{i}", image_id=7 + i)
               for i, (h, w) in enumerate(((128, 128), (64, 128)))]
    loader = torch.utils.data.DataLoader(DetectionDataset(DetectionSet(records, ["a"]), EvalTransform(64)),
                                         batch_size=2, collate_fn=collate)
    preds, gts, speed = predict_loader(Fixed(), loader, "cpu", conf_thres=0.5)
    # letterbox to 64: image 0 is scaled by 0.5 (no padding), image 1 by 0.5 with 16 px padding on top
    assert preds[0]["boxes"].tolist() == [[48.0, 48.0, 80.0, 80.0]]
    assert preds[1]["boxes"].tolist() == [[48.0, 16.0, 80.0, 48.0]]
    assert [p["image_id"] for p in preds] == [7, 8] and preds[0]["scores"].tolist() == [pytest.approx(0.8)]
    assert gts[1]["boxes"].tolist() == [[1.0, 2.0, 9.0, 9.0]] and gts[1]["labels"].tolist() == [0]
    assert set(speed) == {"preprocess", "inference", "nms"} and all(v >= 0 for v in speed.values())
