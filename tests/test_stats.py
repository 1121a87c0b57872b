"""assignment_stats: hand-worked counts per assigner family, batched == per image, combining, bad input."""
import doctest
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detassign.stats as stats_module
from detassign import AssignResult, BatchAssignResult, Instances, build_assigner
from detassign.assigners.task_aligned import TaskAlignedAssigner
from detassign.stats import assignment_stats, combine_stats
from tests.fixtures import make_anchors


def test_docstring_example():
    assert doctest.testmod(stats_module, extraglobs=dict(torch=torch, AssignResult=AssignResult)).failed == 0


def test_max_iou_hand_worked():
    # priors 0, 1 equal GT 1 (IoU 1); prior 2 overlaps nothing; GT 2 (4 x 4 px) overlaps no prior at all
    priors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [100, 100, 110, 110.]])
    gts = torch.tensor([[0, 0, 10, 10], [200, 200, 204, 204.]])
    a = build_assigner(dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.3))
    res = a.assign(Instances(priors=priors), Instances(bboxes=gts, labels=torch.tensor([0, 1])))
    s = assignment_stats(res, gts)
    assert s.positives_per_gt.tolist() == [2, 0]
    assert (s.num_gts, s.zero_positive_gts, s.zero_positive_share, s.num_positives) == (2, 1, 0.5, 2)
    # both GTs are COCO-small (100 and 16 px^2)
    assert s.by_size["small"] == dict(gts=2, zero_positive_gts=1, mean_positives=1.0)
    assert s.by_size["medium"]["gts"] == 0 and s.by_size["large"]["gts"] == 0
    assert s.overlap["mean"] == pytest.approx(1.0) and s.ignored_priors == 0


def test_task_aligned_batched_hand_worked():
    # image 0: a 40 x 40 GT (8 x 8 grid, stride 8: 25 anchor centres inside) -> exactly topk = 3 positives;
    #          a padded slot; image 1: one GT that takes 3, and a second far away that also takes 3
    points = make_anchors(64, strides=(8,))
    B, A, C = 2, len(points), 2
    gts = torch.tensor([[[8, 8, 48, 48], [0, 0, 0, 0]], [[0, 0, 24, 24], [40, 40, 64, 64.]]])
    mask = torch.tensor([[True, False], [True, True]])
    labels = torch.tensor([[0, 0], [1, 0]])
    scores = torch.full((B, A, C), 0.5)
    pred = torch.cat([points - 8, points + 8], -1).expand(B, A, 4)
    res = TaskAlignedAssigner(preset="mmdet", topk=3).assign_batch(scores, pred, points, labels, gts, mask)
    s = assignment_stats(res, gts, mask, level_sizes=[A], strides=[8])
    assert s.positives_per_gt.tolist() == [3, 3, 3]           # padding is not a GT
    assert (s.num_images, s.num_priors, s.num_gts, s.zero_positive_gts) == (2, 2 * A, 3, 0)
    # areas 1600 px^2 (medium: 32^2 <= a < 96^2) and 576, 576 px^2 (small: < 32^2)
    assert s.by_size["medium"] == dict(gts=1, zero_positive_gts=0, mean_positives=3.0)
    assert s.by_size["small"] == dict(gts=2, zero_positive_gts=0, mean_positives=3.0)
    assert s.per_level == [dict(level=0, stride=8, priors=2 * A, positives=9)]
    assert s.target_score_mass == pytest.approx(float(res.target_scores.sum()))
    assert 0 < s.target_score_mass <= 9                        # at most one unit of soft target per positive


def test_hungarian_one_positive_per_gt():
    # 5 queries, 2 GTs: a one-to-one matching gives each GT exactly one positive, three queries negative
    a = build_assigner(dict(type="HungarianAssigner", match_costs=[dict(type="ClassificationCost", weight=1.0)]))
    g = torch.Generator().manual_seed(0)
    gts = torch.tensor([[0, 0, 100, 100], [10, 10, 20, 20.]])
    res = a.assign(Instances(scores=torch.randn(5, 3, generator=g)), Instances(labels=torch.tensor([0, 2]), bboxes=gts))
    s = assignment_stats(res, gts)
    assert s.positives_per_gt.tolist() == [1, 1] and s.num_positives == 2 and s.overlap is None
    assert s.by_size["large"]["gts"] == 1 and s.by_size["small"]["gts"] == 1   # 10000 and 100 px^2


def test_ignored_and_levels_per_image():
    res = AssignResult(1, torch.tensor([1, -1, 0, 1, -1, 1]), torch.tensor([0.9, 0, 0, 0.5, 0, 0.7]))
    s = assignment_stats(res, torch.tensor([[0, 0, 200, 100.]]), level_sizes=[4, 2], strides=[8, 16])
    assert s.ignored_priors == 2 and s.positives_per_gt.tolist() == [3]
    assert [row["positives"] for row in s.per_level] == [2, 1]
    assert s.by_size["large"] == dict(gts=1, zero_positive_gts=0, mean_positives=3.0)
    assert s.overlap["q50"] == pytest.approx(0.7)


def _random_batch(seed, B=3, M=5, A=40):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, M, generator=g) > 0.3
    gt_inds = torch.randint(-1, M + 1, (B, A), generator=g)
    # priors may only point at real GTs
    real = torch.gather(mask, 1, (gt_inds - 1).clamp(min=0))
    gt_inds = torch.where((gt_inds > 0) & ~real, torch.zeros_like(gt_inds), gt_inds)
    xy = torch.rand(B, M, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + torch.rand(B, M, 2, generator=g) * 150 + 1], -1)
    overlaps = torch.rand(B, A, generator=g)
    return BatchAssignResult(mask.sum(1), gt_inds, overlaps, target_scores=torch.rand(B, A, 2, generator=g)), \
        boxes, mask


@given(seed=st.integers(0, 10_000))
def test_counts_equal_a_loop_and_batched_equals_per_image(seed):
    res, boxes, mask = _random_batch(seed)
    s = assignment_stats(res, boxes, mask, level_sizes=[30, 10])
    expected = [int((res.gt_inds[b] == j + 1).sum()) for b in range(len(mask)) for j in range(mask.shape[1])
                if mask[b, j]]
    assert s.positives_per_gt.tolist() == expected
    per_image = [assignment_stats(res[b], boxes[b], mask[b], level_sizes=[30, 10]) for b in range(len(mask))]
    merged = combine_stats(per_image)
    assert merged.positives_per_gt.tolist() == expected
    assert merged.to_dict()["by_size"] == s.to_dict()["by_size"]
    assert merged.level_positives.tolist() == s.level_positives.tolist()
    assert merged.ignored_priors == s.ignored_priors == int((res.gt_inds == -1).sum())
    assert merged.target_score_mass == pytest.approx(s.target_score_mass)


def test_to_dict_is_json_and_str_is_a_table():
    res, boxes, mask = _random_batch(0)
    s = assignment_stats(res, boxes, mask, level_sizes=[30, 10], strides=[8, 16])
    text = json.dumps(s.to_dict())
    assert "zero_positive_share" in text and "per_level" in text
    table = str(s)
    assert "GTs with no positive" in table and "small" in table and "stride" in table


def test_empty():
    res = BatchAssignResult(torch.zeros(2, dtype=torch.long), torch.zeros(2, 10, dtype=torch.long))
    s = assignment_stats(res, torch.zeros(2, 0, 4))
    assert s.num_gts == 0 and s.zero_positive_share == 0.0 and s.mean_positives_per_gt == 0.0
    assert s.overlap is None and s.to_dict()["max_positives_per_gt"] == 0


def test_bad_input_names_the_argument():
    res, boxes, mask = _random_batch(1)
    with pytest.raises(ValueError, match="gt_bboxes"):
        assignment_stats(res, boxes[0], mask)
    with pytest.raises(ValueError, match="gt_mask"):
        assignment_stats(res, boxes, mask[:, :2])
    with pytest.raises(ValueError, match="level_sizes"):
        assignment_stats(res, boxes, mask, level_sizes=[3, 4])
    with pytest.raises(ValueError, match="strides"):
        assignment_stats(res, boxes, mask, level_sizes=[30, 10], strides=[8])
    with pytest.raises(ValueError, match="gt_inds"):
        assignment_stats(res, boxes[:, :2], mask[:, :2])
    with pytest.raises(TypeError, match="AssignResult"):
        assignment_stats(res.gt_inds, boxes, mask)
    with pytest.raises(ValueError, match="at least one"):
        combine_stats([])
