"""detassign show: a default image with GTs, panels on the image's own scale, per-GT counts, dashed and listed
zero-positive GTs, ignored priors and soft targets drawn, several assigners side by side, arguments, --json,
one-line errors; every assigner family run on grid priors through the one batched interface."""
import json
import re

import numpy as np
import pytest
import torch

from detassign.cli import main
from detassign.compare import EXAMPLE_ARGUMENTS, parse_assigners
from detassign.structures import Priors
from detassign.viz import (assignment_summary, check_on_grid, compute_assignment, draw_assignments, drawable_assigners,
                           per_gt_counts)

# Every assigner that runs on YOLO grid priors through assign_batch (the loss' call), and why the others cannot.
ON_GRID = ["ATSSAssigner", "ApproxMaxIoUAssigner", "AscendMaxIoUAssigner", "BatchMaxIoUAssigner",
           "CenterRegionAssigner", "DynamicSoftLabelAssigner", "GridAssigner", "HungarianAssigner", "MaxIoUAssigner",
           "PointAssigner", "RegionAssigner", "SimOTAAssigner", "TaskAlignedAssigner", "TopkHungarianAssigner",
           "UniformAssigner"]
NOT_ON_GRID = {"MaskHungarianAssigner": "CrossEntropyLossCost needs pred_instances.masks",
               "MultiInstanceAssigner": "not one GT per prior, so it has no batched form",
               "RotatedATSSAssigner": "[A, 5] xywhr", "RotatedTaskAlignedAssigner": "[B, A, 5]"}


def _voc(root, boxes_per_image, size=64):
    """A VOC folder: image i holds the boxes ``boxes_per_image[i]`` (bright squares on a dark image)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, boxes in enumerate(boxes_per_image):
        img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        objects = ""
        for x1, y1, x2, y2 in boxes:
            img[y1:y2, x1:x2] = 220
            objects += (f"<object><name>square</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                        f"<ymax>{y2}</ymax></bndbox></object>")
        Image.fromarray(img).save(root / f"im{i}.png")
        (root / f"im{i}.xml").write_text(f"<annotation><filename>im{i}.png</filename><size><width>{size}</width>"
                                         f"<height>{size}</height></size>{objects}</annotation>")
    return str(root)


def _dataset(tmp_path):
    # image 0 is empty, image 1 has one GT, image 2 two: the default is a typical image that has GTs
    return _voc(tmp_path / "voc", [[], [(20, 10, 44, 30)], [(4, 4, 28, 28), (36, 30, 60, 58)]])


def test_default_image_has_gts_and_several_assigners_side_by_side(tmp_path, capsys):
    out, js = tmp_path / "show.png", tmp_path / "show.json"
    assert main(["show", "--data", _dataset(tmp_path), "--format", "voc", "--scale", "p", "--assigner",
                 "tal,atss:topk=3,MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.1", "--out", str(out),
                 "--json", str(js)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if "positives for" in line]
    assert [line.split(":")[0] for line in lines] == ["tal", "atss", "MaxIoUAssigner"]
    assert all("positives for 1 GTs" in line for line in lines)  # counts 0, 1, 2 -> median 1.5 -> image 1
    assert out.stat().st_size > 10_000
    summary = json.loads(js.read_text())
    assert summary["index"] == 1 and summary["image"] == "im1"
    atss = summary["assigners"][1]
    assert atss["assigner"] == "atss:topk=3" and atss["num_gts"] == 1
    assert atss["per_gt"][0]["positives"] == atss["num_positives"] == sum(r["positives"] for r in atss["per_level"])
    assert atss["per_gt"][0]["positives"] <= 3 * 3  # ATSS: at most topk candidates per level
    assert atss["per_gt"][0]["size"] == "small" and atss["per_gt"][0]["box"] == [20.0, 10.0, 44.0, 30.0]
    assert summary["assigners"][2]["ignored_priors"] > 0  # MaxIoU's band between the thresholds


def test_assigner_args_and_one_line_errors(tmp_path, capsys):
    data = _dataset(tmp_path)
    base = ["show", "--data", data, "--format", "voc", "--scale", "p", "--out", str(tmp_path / "g.png")]
    assert main(base + ["--assigner", "GridAssigner", "--assigner-args", "pos_iou_thr=0.5,neg_iou_thr=0.4"]) == 0
    assert "GridAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4: " in capsys.readouterr().out
    cases = {
        "MaxIoUAssigner": "MaxIoUAssigner needs pos_iou_thr, neg_iou_thr; e.g. --assigner "
                          "'MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4'",
        "MaskHungarianAssigner": "cannot run on grid priors: CrossEntropyLossCost needs pred_instances.masks",
        "RotatedTaskAlignedAssigner": "cannot run on grid priors: pred_bboxes must have shape [B, A, 5]",
        "atss:topk=0": "--assigner atss:topk=0: ",
        "atss:bogus=1": "unknown argument(s) ['bogus']",
    }
    for assigner, words in cases.items():
        assert main(base + ["--assigner", assigner]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("detassign show: error: ") and words in err[0], (assigner, err)
    assert main(base + ["--index", "9"]) == 2
    assert "--index 9 is out of range" in capsys.readouterr().err


def _two_gts():
    # GT 1: a 32 x 32 box on the stride-8 grid; GT 2: a 3 x 3 box, which no 40 px square prior overlaps at IoU 0.3
    return torch.tensor([[8.0, 8.0, 40.0, 40.0], [52.0, 52.0, 55.0, 55.0]]), torch.tensor([0, 0])


def test_figure_panels_share_the_image_scale_and_label_every_gt():
    gt, labels = _two_gts()
    h, w = 70, 64  # not a multiple of 32: P5's cells (and priors) reach past the image
    maxiou = compute_assignment(dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.2, min_pos_iou=0.3),
                                gt, labels, (h, w), 1)
    point = compute_assignment(dict(type="PointAssigner"), gt, labels, (h, w), 1)
    assert maxiou["stats"].positives_per_gt[1] == 0  # GT 2 gets nothing from MaxIoU
    assert (point["stats"].positives_per_gt > 0).all()  # the nearest points of its level: every GT has some
    fig = draw_assignments(np.zeros((h, w, 3), np.uint8), gt, [maxiou, point], title="t")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 4  # two rows: all levels + P3, P4, P5
    sizes = {tuple(np.round(ax.get_position().size, 6)) for ax in panels}
    assert len(sizes) == 1  # every panel the same size ...
    assert all(ax.get_xlim() == (0, w) and ax.get_ylim() == (h, 0) for ax in panels)  # ... on the image's scale
    first = panels[0]  # MaxIoU, all levels: GT 1 labelled with its count, GT 2 "#2: 0" and dashed
    labels_drawn = [t.get_text() for t in first.texts]
    total = int(maxiou["stats"].positives_per_gt[0])
    assert str(total) in labels_drawn and "#2: 0" in labels_drawn
    styles = [p.get_linestyle() for p in first.patches]
    assert styles.count("--") == 1 and styles.count("-") == 1
    captions = [t.get_text() for t in fig.texts]
    assert any("no positive: #2 (3x3)" in c for c in captions) and any("every GT has a positive" in c for c in captions)
    # ignored priors (IoU between 0.2 and 0.5) are drawn as crosses in the level panels
    ignored = int((maxiou["gt_inds"] == -1).sum())
    crosses = sum(len(c.get_offsets()) for ax in panels[1:4] for c in ax.collections
                  if c.get_facecolor().shape[0] and np.allclose(c.get_facecolor()[0][:3], 0.55))
    assert ignored > 0 and crosses == ignored


def test_marker_area_shows_the_soft_target():
    gt, labels = _two_gts()
    out = compute_assignment(dict(type="ATSSAssigner", topk=9), gt, labels, (64, 64), 1)
    pos = out["gt_inds"] > 0
    # without a model the predicted boxes are the square priors: the loss' soft target is IoU(prior, GT)
    from detassign.boxes import pairwise_iou

    squares = Priors.grid((64, 64), anchor_scale=5.0).boxes
    iou = pairwise_iou(squares[pos], gt[out["gt_inds"][pos] - 1]).diagonal()
    assert torch.allclose(out["strength"][pos], iou, atol=1e-6) and (out["strength"][~pos] == 0).all()
    fig = draw_assignments(np.zeros((64, 64, 3), np.uint8), gt, out)
    sizes = np.concatenate([c.get_sizes() for c in fig.axes[0].collections])
    assert np.allclose(np.sort(sizes), np.sort(6 + 70 * out["strength"][pos].numpy()), atol=1e-4)


def test_per_gt_counts_by_hand():
    # levels of 3 and 2 priors: GT 1 has one positive on each level, GT 2 two on level 0, GT 3 none
    a = {"gt_inds": torch.tensor([1, 2, 2, -1, 1]), "num_level_priors": [3, 2]}
    assert per_gt_counts(a, 3).tolist() == [[1, 2, 0], [1, 0, 0]]


def test_drawable_assigners_are_found_by_running_them():
    assert drawable_assigners() == ON_GRID


@pytest.mark.parametrize("name", ON_GRID)
def test_every_grid_family_runs_on_grid_priors(name):
    gt, labels = _two_gts()
    config = parse_assigners(f"{name}:{EXAMPLE_ARGUMENTS[name]}" if name in EXAMPLE_ARGUMENTS else name)[0].config
    out = compute_assignment(config, gt, labels, (64, 64), 1)
    gi, stats = out["gt_inds"], out["stats"]
    assert gi.shape == (sum(out["num_level_priors"]),) and int(gi.min()) >= -1 and int(gi.max()) <= 2
    assert stats.num_gts == 2 and stats.num_positives == int((gi > 0).sum())
    assert stats.ignored_priors == int((gi == -1).sum())
    assert sum(r["positives"] for r in stats.per_level) == stats.num_positives
    summary = assignment_summary(out, gt)
    assert [r["positives"] for r in summary["per_gt"]] == stats.positives_per_gt.tolist()


@pytest.mark.parametrize("name", sorted(NOT_ON_GRID))
def test_assigners_without_grid_meaning_say_why(name):
    # the reason is the assigner's own error on a probe image, not a table kept by the pictures
    with pytest.raises(ValueError, match=re.escape(f"{name} cannot run on grid priors: ") + ".*"
                       + re.escape(NOT_ON_GRID[name])):
        check_on_grid(dict(type=name))


def test_show_uses_what_the_loss_sees():
    # the loss' own assignment on a batch of one equals the picture's assignment on the same predictions
    from detassign.viz import grid_inputs
    from detassign.yolo import YOLO11
    from detassign.yolo.loss import DetectionLoss

    torch.manual_seed(0)
    model = YOLO11("p", 1, width=0.0625)
    image = torch.rand(1, 3, 64, 64)
    gt, labels = _two_gts()
    config = dict(type="TaskAlignedAssigner", preset="ultralytics", topk=10, alpha=0.5, beta=6.0)
    shown = compute_assignment(config, gt, labels, (64, 64), 1, model=model, image=image)
    model.eval()  # the picture's predictions come from the eval-mode model: BatchNorm's running statistics
    with torch.no_grad():
        feats = model.forward_raw(image)
    loss = DetectionLoss(1, strides=model.stride.tolist(), assigner=config)
    plain = loss(feats, dict(labels=labels[None], bboxes=gt[None]))
    total, items, assignment = loss(feats, dict(labels=labels[None], bboxes=gt[None]), return_assignment=True)
    assert torch.equal(total, plain[0]) and torch.equal(items, plain[1])  # asking for it changes nothing
    assert not any(isinstance(v, torch.Tensor) for v in vars(loss).values())  # no state kept on the module
    assert torch.equal(assignment.result.gt_inds[0], shown["gt_inds"])
    assert assignment.stats().positives_per_gt.tolist() == shown["stats"].positives_per_gt.tolist()
    assert assignment.level_sizes == shown["num_level_priors"] and assignment.seconds > 0
    assert grid_inputs(gt, labels, (64, 64), 1).level_strides == [8, 16, 32]
