import pytest
import torch

import detassign
from detassign import AssignResult, BatchAssignResult, Instances, Priors, build_assigner
from detassign.assigners.base import IoUCalculator, parse_iou_calculator
from detassign.boxes import pairwise_iou
from detassign.registry import ASSIGNERS, MATCH_COSTS, build_match_cost
from detassign.structures import Deferred, as_priors, labels_from_gt_inds
from tests.fixtures import REQUIRED_ARGS


def test_assign_result_contract():
    # priors 0..4: positive to GT 2, negative, ignored, positive to GT 1, negative
    res = AssignResult(2, torch.tensor([2, 0, -1, 1, 0]), torch.tensor([0.7, 0.1, 0.4, 0.9, 0.0]),
                       torch.tensor([5, -1, -1, 3, -1]))
    assert res.num_preds == 5
    assert res.pos_mask.tolist() == [True, False, False, True, False]
    assert res.neg_inds.tolist() == [1, 4]
    assert res.ignore_mask.tolist() == [False, False, True, False, False]
    assert res.pos_gt_index.tolist() == [1, 0]
    res.set_extra_property("assign_metrics", torch.arange(5.0))
    assert res.assign_metrics.tolist() == [0, 1, 2, 3, 4]
    assert res.get_extra_property("missing") is None
    with pytest.raises(KeyError):
        res.set_extra_property("gt_inds", None)
    res.add_gt_(torch.tensor([7, 8]))
    assert res.gt_inds.tolist() == [1, 2, 2, 0, -1, 1, 0]
    assert res.labels[:2].tolist() == [7, 8]
    assert "positives=4" in repr(res)


def test_batch_result_indexing():
    gt_inds = torch.tensor([[1, 0, 2], [0, 0, 1]])
    res = BatchAssignResult(torch.tensor([2, 1]), gt_inds, torch.rand(2, 3), torch.tensor([[3, -1, 4], [-1, -1, 0]]),
                            target_boxes=torch.zeros(2, 3, 4))
    assert len(res) == 2
    one = res[1]
    assert one.num_gts == 1 and one.gt_inds.tolist() == [0, 0, 1]
    assert one.target_boxes.shape == (3, 4)
    assert res.fg_mask.sum() == 3
    assert [r.num_gts for r in res] == [2, 1]


def test_deferred_extras_are_computed_once_when_read():
    calls = []

    def build():
        calls.append(1)
        return torch.arange(6.0).view(2, 3)

    res = BatchAssignResult(torch.tensor([1, 1]), torch.ones(2, 3, dtype=torch.long),
                            target_scores=Deferred(build), assign_metrics=torch.zeros(2, 3))
    image = res[1]                                   # slicing does not compute it
    assert calls == [] and "target_scores" in repr(res)
    assert torch.equal(image.target_scores, torch.tensor([3.0, 4.0, 5.0])) and calls == [1]
    assert torch.equal(res.target_scores, torch.arange(6.0).view(2, 3))
    assert torch.equal(res.get_extra_property("target_scores")[0], torch.tensor([0.0, 1.0, 2.0]))
    assert set(res.extras) == {"target_scores", "assign_metrics"} and calls == [1]
    assert not any(isinstance(v, Deferred) for v in res[0].extras.values())
    assert not any(isinstance(v, Deferred) for v in res[0].info.values())


def test_results_with_deferred_extras_pickle_as_tensors():
    import pickle
    res = BatchAssignResult(torch.tensor([1]), torch.ones(1, 3, dtype=torch.long),
                            target_scores=Deferred(lambda: torch.full((1, 3), 0.5)))
    for result in (res[0], res):   # the image's slice first: it reads the batch's deferred value
        back = pickle.loads(pickle.dumps(result))
        assert torch.equal(back.target_scores, result.target_scores)
        assert not any(isinstance(v, Deferred) for v in back.extras.values())


def test_instances_container():
    gt = Instances(bboxes=torch.zeros(3, 4), labels=torch.zeros(3, dtype=torch.long))
    assert len(gt) == 3 and "bboxes" in gt and gt.get("priors") is None
    with pytest.raises(AttributeError, match="priors"):
        gt.priors


def test_every_registered_assigner_builds_from_config():
    classes = detassign.available_assigners()
    assert set(classes) == set(ASSIGNERS)
    for name, cls in classes.items():
        assert build_assigner(dict(type=name, **REQUIRED_ARGS.get(name, {}))).__class__ is cls
    # mmdet-prefixed names and classes work too
    cls = classes["MaxIoUAssigner"]
    assert isinstance(build_assigner(dict(type="mmdet.MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4)), cls)
    assert isinstance(build_assigner(dict(type=cls, pos_iou_thr=0.5, neg_iou_thr=0.4)), cls)


def test_every_match_cost_builds():
    for name in MATCH_COSTS:
        cost = build_match_cost(dict(type=name, weight=2.0))
        assert type(cost).__name__ == name


def test_unknown_type_and_argument_list_what_is_accepted():
    with pytest.raises(ValueError, match="MaxIoUAssigner"):
        build_assigner(dict(type="NoSuchAssigner"))
    with pytest.raises(TypeError, match="pos_iou_thr"):
        build_assigner(dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, bogus=1))
    with pytest.raises(ValueError, match="type"):
        build_assigner(dict(pos_iou_thr=0.5))
    with pytest.raises(TypeError, match="dict"):
        build_assigner("MaxIoUAssigner")


def test_config_is_not_mutated():
    cfg = dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4)
    build_assigner(cfg)
    assert cfg["type"] == "MaxIoUAssigner"


# ----------------------------------------------------------------------------- labels from gt_inds
def test_labels_from_gt_inds_by_hand():
    # image 0: priors -> GT 2, background, ignored, GT 1; image 1 has no positive
    gt_inds = torch.tensor([[2, 0, -1, 1], [0, 0, -1, 0]])
    gt_labels = torch.tensor([[7, 3], [5, 5]])
    assert labels_from_gt_inds(gt_inds, gt_labels).tolist() == [[3, -1, -1, 7], [-1, -1, -1, -1]]
    assert labels_from_gt_inds(gt_inds[0], gt_labels[0], fill=0).tolist() == [3, 0, 0, 7]   # RegionAssigner's mmdet 0
    assert labels_from_gt_inds(gt_inds, gt_labels[:, :0]).tolist() == [[-1] * 4] * 2           # no GT
    assert labels_from_gt_inds(gt_inds[0], None).tolist() == [-1] * 4


# ----------------------------------------------------------------------------- priors
def test_priors_grid_by_hand():
    # a 16 x 24 input: stride 8 gives 2 x 3 cells, stride 16 gives 1 x 2 (ceil(24 / 16) = 2)
    p = Priors.grid((16, 24), (8, 16), anchor_scale=2.0)
    assert p.level_sizes == (6, 2) and p.level_shapes == ((2, 3), (1, 2)) and p.image_size == (16, 24)
    assert p.points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert p.strides.tolist() == [8.0] * 6 + [16.0] * 2
    assert p.boxes[0].tolist() == [-4.0, -4.0, 12.0, 12.0] and p.boxes[-1].tolist() == [8.0, -8.0, 40.0, 24.0]
    assert p.point_priors()[-1].tolist() == [24.0, 8.0, 16.0, 16.0]         # mmdet's (cx, cy, sw, sh)
    assert len(p) == 8 and "level_sizes=[6, 2]" in repr(p)


def test_priors_constructors_and_what_assigners_read():
    points, strides = torch.tensor([[4.0, 4.0], [12.0, 4.0], [8.0, 8.0]]), torch.tensor([8.0, 8.0, 16.0])
    p = Priors.from_points(points, strides)
    assert p.level_sizes == (2, 1)                                       # runs of equal strides
    assert torch.equal(p.anchor_boxes(3.0), p.square_boxes(3.0)) and p.boxes is None
    assert p.square_boxes(3.0)[2].tolist() == [-16.0, -16.0, 32.0, 32.0]
    boxed = Priors.from_boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]]), [2])
    assert boxed.points.tolist() == [[4.0, 4.0], [12.0, 4.0]] and boxed.strides is None
    rotated = Priors.from_boxes(torch.tensor([[4.0, 4.0, 8.0, 8.0, 0.3]]), [1])
    assert rotated.points.tolist() == [[4.0, 4.0]]
    with pytest.raises(ValueError, match=r"ATSSAssigner needs priors.level_sizes; pass level_sizes="):
        Priors(points).require("level_sizes", "ATSSAssigner")
    with pytest.raises(ValueError, match="SimOTAAssigner needs priors.strides"):
        Priors(points).point_priors("SimOTAAssigner")
    with pytest.raises(ValueError, match="needs priors.boxes .* or priors.strides"):
        Priors(points).anchor_boxes(8.0, "ATSSAssigner")
    # a tensor is read as anchor points [A, 2] or anchor boxes [A, 4], named as passed
    assert torch.equal(as_priors(points, "anchor_points").points, points)
    assert as_priors(boxed.boxes).boxes is not None and as_priors(p) is p
    with pytest.raises(ValueError, match=r"anchor_points must be a detassign.Priors, anchor points \[A, 2\]"):
        as_priors(torch.zeros(3, 3), "anchor_points")
    with pytest.raises(ValueError, match="anchor_points must be finite"):
        as_priors(torch.full((2, 2), float("nan")), "anchor_points")


def test_priors_validation_names_the_field():
    points = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="priors.strides, priors.points must agree on A"):
        Priors(points, torch.ones(4))
    with pytest.raises(ValueError, match="priors.strides must be positive"):
        Priors(points, torch.tensor([8.0, 0.0, 8.0]))
    with pytest.raises(ValueError, match="priors.boxes must be finite"):
        Priors.from_boxes(torch.tensor([[0.0, 0.0, float("inf"), 1.0]]))
    with pytest.raises(ValueError, match="level_sizes must be non-negative and sum to the number of priors"):
        Priors(points, level_sizes=[1, 1])
    with pytest.raises(ValueError, match="level_shapes"):
        Priors(points, level_sizes=[3], level_shapes=[(2, 2)])
    with pytest.raises(TypeError, match="priors.points must be a torch.Tensor"):
        Priors([[0.0, 0.0]])


# ----------------------------------------------------------------------------- iou_calculator, one parser
IOU_ASSIGNERS = {
    "MaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4), "BatchMaxIoUAssigner": dict(pos_iou_thr=0.5,
    neg_iou_thr=0.4), "ApproxMaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
    "GridAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4), "ATSSAssigner": {}, "SimOTAAssigner": {},
    "DynamicSoftLabelAssigner": {}, "TopkHungarianAssigner": dict(topk=2), "MultiInstanceAssigner": {},
    "UniformAssigner": {}, "CenterRegionAssigner": dict(pos_scale=0.2, neg_scale=0.5),
}
ROTATED_FORM = {"MaxIoUAssigner", "BatchMaxIoUAssigner", "ApproxMaxIoUAssigner", "ATSSAssigner",
                "DynamicSoftLabelAssigner"}   # BatchMaxIoU: its per-image assign (MaxIoU's)


BAD_IOU_CALCULATORS = [(dict(type="BboxOverlaps3D"), ValueError), (dict(type="BboxOverlaps2D", mode="iof"), ValueError),
                       (dict(type="BboxOverlaps2D", dtype="fp32"), ValueError),
                       (dict(type="BboxOverlaps2D", scale=0.0), ValueError),
                       (dict(type="RBboxOverlaps2D", scale=2.0), ValueError), (3, TypeError), ("iof", TypeError)]


def _iou(a, b, mode="iou"):
    return pairwise_iou(a, b)


@pytest.mark.parametrize("name", sorted(IOU_ASSIGNERS))
def test_every_assigner_accepts_the_same_iou_calculators(name):
    accepted = [None, dict(type="BboxOverlaps2D"), dict(type="mmdet.BboxOverlaps2D"),
                dict(type="BboxOverlaps2D", scale=4.0, dtype="fp16"), _iou]
    for cfg in accepted:
        assigner = build_assigner(dict(type=name, iou_calculator=cfg, **IOU_ASSIGNERS[name]))
        assert isinstance(assigner.iou_calculator, IoUCalculator)
        assert assigner.iou_calculator == parse_iou_calculator(cfg)
    rotated = dict(type=name, iou_calculator=dict(type="RBboxOverlaps2D"), **IOU_ASSIGNERS[name])
    if name in ROTATED_FORM:
        assert build_assigner(rotated).iou_calculator.rotated
    else:
        with pytest.raises(ValueError, match=f"{name} has no rotated form"):
            build_assigner(rotated)
    for bad, error in BAD_IOU_CALCULATORS:
        with pytest.raises(error, match="iou_calculator"):
            build_assigner(dict(type=name, iou_calculator=bad, **IOU_ASSIGNERS[name]))


def test_iou_calculator_semantics():
    a, b = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 0.0, 15.0, 10.0], [1.0, 1.0, 3.3, 3.3]])
    plain = parse_iou_calculator(None)
    assert plain.is_default and plain == dict(type="BboxOverlaps2D") and repr(plain) == "{'type': 'BboxOverlaps2D'}"
    assert torch.equal(plain.pairwise(a, b), pairwise_iou(a, b))                      # [[1/3, 0.0529]]
    fp16 = parse_iou_calculator(dict(type="BboxOverlaps2D", scale=2.0, dtype="fp16"))
    # mmdet's fp16 option: boxes / scale rounded to half, the IoU then in float32
    assert torch.equal(fp16.pairwise(a, b), pairwise_iou((a / 2).half(), (b / 2).half()))
    assert fp16.pairwise(a, b).dtype == torch.float32 and not fp16.is_default
    assert torch.equal(parse_iou_calculator(_iou).aligned(a, b[:1]), pairwise_iou(a, b[:1])[:, 0])
    assert parse_iou_calculator(fp16) is fp16 and fp16 != dict(type="BboxOverlaps2D")

