import pytest
import torch

import detassign
from detassign import AssignResult, BatchAssignResult, Instances, build_assigner
from detassign.registry import ASSIGNERS, MATCH_COSTS, build_match_cost


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


def test_instances_container():
    gt = Instances(bboxes=torch.zeros(3, 4), labels=torch.zeros(3, dtype=torch.long))
    assert len(gt) == 3 and "bboxes" in gt and gt.get("priors") is None
    with pytest.raises(AttributeError, match="priors"):
        gt.priors


def test_every_registered_assigner_builds_from_config():
    classes = detassign.available_assigners()
    assert set(classes) == set(ASSIGNERS)
    required = {  # arguments these assigners require, as their mmdet counterparts do
        "MaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
        "BatchMaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
        "AscendMaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
        "ApproxMaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
        "GridAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
        "CenterRegionAssigner": dict(pos_scale=0.2, neg_scale=0.5),
        "TopkHungarianAssigner": dict(topk=4),
        "HungarianAssigner": dict(match_costs=[dict(type="ClassificationCost")]),
        "OneToManyHungarianAssigner": dict(match_costs=[dict(type="ClassificationCost")]),
    }
    for name, cls in classes.items():
        assert build_assigner(dict(type=name, **required.get(name, {}))).__class__ is cls
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
