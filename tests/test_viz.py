"""Pictures: IoU-variant curves (values checked by hand), assignment panels, overlays, loss curves."""
import math

import numpy as np
import pytest
import torch

from detassign.viz import (aspect_curves, assignment_figure, compute_assignment, grid_inputs, iou_curves, iou_figure,
                           plot_loss_curves, save_overlay)


def _png_ok(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0] > 100 and im.size[1] > 100


def test_iou_curves_by_hand():
    # fixed 10x10 box centered at 0; the sliding 10x10 box sits 2 px lower (0.2 * h) and dx to the right.
    # dx = 4: intersection 6 * 8 = 48, union 200 - 48 = 152 -> IoU 0.3158;
    # enclosing box 14 x 12 = 168 -> GIoU = 0.3158 - (168 - 152) / 168 = 0.2206;
    # center distance^2 = 16 + 4 = 20, enclosing diagonal^2 = 196 + 144 = 340 -> DIoU = 0.3158 - 0.0588 = 0.2570;
    # same aspect ratio -> CIoU = DIoU.
    c = iou_curves(np.array([4.0, 30.0]))
    assert c["IoU"][0] == pytest.approx(48 / 152, abs=1e-6)
    assert c["GIoU"][0] == pytest.approx(48 / 152 - 16 / 168, abs=1e-6)
    assert c["DIoU"][0] == pytest.approx(48 / 152 - 20 / 340, abs=1e-6)
    assert c["CIoU"][0] == pytest.approx(c["DIoU"][0], abs=1e-6)
    # far apart: IoU 0 with no gradient, the others negative and still ordered by distance
    assert c["IoU"][1] == 0 and c["GIoU"][1] < 0 and c["DIoU"][1] < 0
    wide = iou_curves(np.array([0.0]), moving=(20.0, 10.0))
    assert wide["CIoU"][0] < wide["DIoU"][0]  # aspect-ratio penalty


def test_aspect_curves_by_hand():
    # same center and area (100 px^2), w / h = 4: a 20 x 5 box on a 10 x 10 one. Intersection 10 * 5 = 50,
    # union 150 -> IoU 1/3; the centers coincide, so DIoU = IoU; v = 4 / pi^2 * (atan(4) - atan(1))^2 = 0.118360,
    # alpha = v / (1 - IoU + v) = 0.150774 -> CIoU = 1/3 - alpha * v = 0.315488
    c = aspect_curves(np.array([4.0, 1.0]))
    v = 4 / math.pi ** 2 * (math.atan(4) - math.atan(1)) ** 2
    alpha = v / (1 - 1 / 3 + v)
    assert c["IoU"][0] == pytest.approx(1 / 3, abs=1e-6) and c["DIoU"][0] == pytest.approx(1 / 3, abs=1e-6)
    assert c["CIoU"][0] == pytest.approx(1 / 3 - alpha * v, abs=1e-5)
    assert c["CIoU"][1] == pytest.approx(1.0, abs=1e-6) == c["DIoU"][1]  # the same box: every variant is 1
    # the sliding case's vertical offset is a parameter (default 0.2 * h = 2 px)
    assert iou_curves(np.array([4.0]), dy=0.0)["IoU"][0] == pytest.approx(60 / 140, abs=1e-6)  # 6 x 10 overlap


def test_iou_figure_and_loss_curves_write_pngs(tmp_path):
    assert _png_ok(iou_figure(tmp_path / "iou.png"))
    hist = {"epoch": [1, 2], "box": [3.0, 2.0], "cls": [2.0, 1.5], "dfl": [2.5, 2.0], "map50": [float("nan"), 0.3],
            "map": [float("nan"), 0.1], "step_loss": [[3, 2, 2.5]] * 4}
    assert _png_ok(plot_loss_curves(hist, tmp_path / "loss.png"))


def test_grid_priors_layout():
    priors = grid_inputs(torch.zeros(0, 4), torch.zeros(0), (64, 96), 1, strides=(8, 16, 32), prior_scale=5).priors
    assert list(priors.level_sizes) == [8 * 12, 4 * 6, 2 * 3] and list(priors.level_shapes) == [(8, 12), (4, 6), (2, 3)]
    assert priors.points[0].tolist() == [4.0, 4.0] and priors.boxes[0].tolist() == [-16.0, -16.0, 24.0, 24.0]  # 40 px
    assert priors.strides[-1] == 32 and len(priors) == sum(priors.level_sizes) and priors.image_size == (64, 96)


@pytest.mark.parametrize("spec", [
    dict(type="TaskAlignedAssigner", topk=10, alpha=0.5, beta=6.0),
    dict(type="ATSSAssigner", topk=9),
    dict(type="SimOTAAssigner"),
    dict(type="DynamicSoftLabelAssigner"),
])
def test_compute_assignment_and_figure(tmp_path, spec):
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0], [40.0, 20.0, 90.0, 60.0]])
    out = compute_assignment(spec, gt, torch.tensor([0, 0]), (64, 96), num_classes=1)
    gi = out["gt_inds"]
    assert gi.shape == (sum(out["num_level_priors"]),) and gi.max() <= 2 and gi.min() >= 0
    assert (gi > 0).sum() > 0
    # a positive prior's center lies inside its GT (every one of these assigners requires it by default)
    pts = out["points"][gi > 0]
    boxes = gt[gi[gi > 0] - 1]
    assert bool(((pts >= boxes[:, :2]) & (pts <= boxes[:, 2:])).all())
    image = np.zeros((64, 96, 3), np.uint8)
    assert _png_ok(assignment_figure(image, gt, out, tmp_path / "a.png", title=spec["type"]))


def test_compute_assignment_with_a_model():
    from detassign.yolo import YOLO11

    torch.manual_seed(0)
    model = YOLO11("p", 1, width=0.0625)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    out = compute_assignment(dict(type="TaskAlignedAssigner", topk=10, alpha=0.5, beta=6.0), gt, torch.tensor([0]),
                             (64, 64), 1, model=model, image=torch.rand(1, 3, 64, 64))
    assert 0 < int((out["gt_inds"] > 0).sum()) <= 10  # TAL: at most topk positives per GT
    with pytest.raises(ValueError, match="multiples of 32"):
        compute_assignment(dict(type="TaskAlignedAssigner"), gt, torch.tensor([0]), (70, 64), 1, model=model,
                           image=torch.rand(1, 3, 64, 64))


def test_save_overlay(tmp_path):
    image = np.zeros((120, 150, 3), np.uint8)
    path = save_overlay(image, tmp_path / "o.png", torch.tensor([[10.0, 10, 50, 50], [0, 0, 5, 5]]),
                        torch.tensor([0.9, 0.1]), gt_bboxes=torch.tensor([[12.0, 12, 48, 52]]), conf=0.25)
    from PIL import Image

    arr = np.asarray(Image.open(path))
    assert tuple(arr[10, 30]) == (255, 220, 0)  # the confident prediction's top edge
    assert tuple(arr[0, 2]) == (0, 0, 0)  # the 0.1 prediction is not drawn
