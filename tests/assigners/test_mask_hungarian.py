"""MaskHungarianAssigner: == mmdet HungarianAssigner with Mask2Former's costs; batched == per-image."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign import Instances, build_assigner
from detassign.assigners.mask_hungarian import MaskHungarianAssigner
from tests import oracles

# configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py (mmdet 3.3.0)
M2F_COSTS = [dict(type="ClassificationCost", weight=2.0),
             dict(type="CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
             dict(type="DiceCost", weight=5.0, pred_act=True, eps=1.0)]
FOCAL_COSTS = [dict(type="ClassificationCost", weight=2.0),
               dict(type="FocalLossCost", weight=20.0, binary_input=True),
               dict(type="DiceCost", weight=1.0, pred_act=True, eps=1.0)]
C = 5


def random_masks(seed, Q=None, M=None, shape=(6, 7), dtype=torch.float32, flat_pred=False):
    gen = torch.Generator().manual_seed(seed)
    Q = int(torch.randint(0, 10, (1,), generator=gen)) if Q is None else Q
    M = int(torch.randint(0, 7, (1,), generator=gen)) if M is None else M
    scores = torch.randn(Q, C, generator=gen) * 2
    gt_masks = (torch.rand(M, *shape, generator=gen) > 0.6).long()
    pred_masks = torch.randn(Q, *shape, generator=gen) * 3
    if Q and M:
        pred_masks[0] = (gt_masks[0].float() - 0.5) * 8  # one query that fits GT 0 well
    if flat_pred:
        pred_masks = pred_masks.flatten(1)
    return scores.to(dtype), pred_masks.to(dtype), torch.randint(0, C, (M,), generator=gen), gt_masks


def test_defaults_are_mask2former_config():
    assigner = build_assigner(dict(type="MaskHungarianAssigner"))
    cls, mask, dice = assigner.match_costs
    assert (type(cls).__name__, cls.weight) == ("ClassificationCost", 2.0)
    assert (type(mask).__name__, mask.weight, mask.use_sigmoid) == ("CrossEntropyLossCost", 5.0, True)
    assert (type(dice).__name__, dice.weight, dice.pred_act, dice.eps) == ("DiceCost", 5.0, True, 1.0)
    assert len(MaskHungarianAssigner(dice_cost=None).match_costs) == 2


def test_two_queries_two_gts_by_hand():
    # 2x2 pixels, no class signal (equal logits -> class cost -2 * 1/2 everywhere, drops out).
    # GT0 = [1,1,0,0], GT1 = [0,0,1,1]; q0 logits +L on GT1's pixels, q1 +L on GT0's (L = 20, sigmoid ~ 1).
    # dice(q0, GT0) ~ 1 - (0 + 1) / (2 + 2 + 1) = 0.8, dice(q0, GT1) ~ 1 - (4 + 1) / (4 + 1) = 0:
    # the crossed matching q0->GT1, q1->GT0 costs ~0, the straight one ~ 2 * 5 * (0.8 + BCE ~ L / 2).
    L = 20.0
    gt_masks = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])
    pred_masks = torch.tensor([[-L, -L, L, L], [L, L, -L, -L]])
    result = MaskHungarianAssigner().assign(Instances(scores=torch.zeros(2, C), masks=pred_masks),
                                            Instances(labels=torch.tensor([3, 1]), masks=gt_masks))
    assert result.gt_inds.tolist() == [2, 1]
    assert result.labels.tolist() == [1, 3]
    # matched cost: class -2 * 1/C, BCE ~ log(1 + e^-20) ~ 0, dice 1 - (2*~2 + 1) / (~2 + 2 + 1) ~ 0
    assert result.match_cost[0].item() == pytest.approx(-2.0 / C, abs=1e-6)
    assert math.isfinite(result.match_cost[1].item())


@pytest.mark.oracle
@pytest.mark.parametrize("costs", [M2F_COSTS, FOCAL_COSTS], ids=["ce", "focal"])
def test_matches_mmdet_hungarian_with_mask2former_costs(costs):
    mm = oracles.mmdet()
    ours = MaskHungarianAssigner(*costs)
    ref = mm.task_utils.build(dict(type="HungarianAssigner", match_costs=costs))
    for seed in range(35):  # Q in [0, 9], M in [0, 6]: includes M=0, Q=0, Q<M
        flat = seed % 3 == 0
        dtype = torch.float16 if seed % 7 == 6 else torch.float32
        scores, pred_masks, labels, gt_masks = random_masks(seed, dtype=dtype, flat_pred=flat)
        got = ours.assign(Instances(scores=scores, masks=pred_masks), Instances(labels=labels, masks=gt_masks))
        want = ref.assign(mm.InstanceData(scores=scores.float(), masks=pred_masks.float()),
                          mm.InstanceData(labels=labels, masks=gt_masks))
        assert torch.equal(got.gt_inds, want.gt_inds), seed
        assert torch.equal(got.labels, want.labels), seed


@pytest.mark.oracle
def test_matches_mmdet_on_sampled_points_with_ties():
    """Mask2Former passes [Q, P] / [M, P] point samples; duplicate queries and GTs tie."""
    mm = oracles.mmdet()
    ours = MaskHungarianAssigner()
    ref = mm.task_utils.build(dict(type="HungarianAssigner", match_costs=M2F_COSTS))
    for seed in range(10):
        scores, pred_masks, labels, gt_masks = random_masks(seed, Q=7, M=4, shape=(50,))
        pred_masks[1], scores[1] = pred_masks[0], scores[0]
        gt_masks[1], labels[1] = gt_masks[0], labels[0]
        got = ours.assign(Instances(scores=scores, masks=pred_masks), Instances(labels=labels, masks=gt_masks))
        want = ref.assign(mm.InstanceData(scores=scores, masks=pred_masks),
                          mm.InstanceData(labels=labels, masks=gt_masks))
        assert torch.equal(got.gt_inds, want.gt_inds)


@given(B=st.integers(1, 3), Q=st.integers(0, 7), M=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_batched_equals_per_image(B, Q, M, seed):
    gen = torch.Generator().manual_seed(seed)
    Ms = [int(m) for m in torch.randint(0, M + 1, (B,), generator=gen)]
    P = 20
    scores = torch.randn(B, Q, C, generator=gen)
    pred_masks = torch.randn(B, Q, P, generator=gen) * 2
    gt_masks = (torch.rand(B, M, P, generator=gen) > 0.5).long()
    gt_labels = torch.randint(0, C, (B, M), generator=gen)
    gt_mask = torch.arange(M)[None] < torch.tensor(Ms)[:, None]
    assigner = MaskHungarianAssigner()
    batch = assigner.assign_batch(scores, None, None, gt_labels, None, gt_mask, pred_masks=pred_masks,
                                  gt_masks=gt_masks)
    for b in range(B):
        m = Ms[b]
        single = assigner.assign(Instances(scores=scores[b], masks=pred_masks[b]),
                                 Instances(labels=gt_labels[b, :m], masks=gt_masks[b, :m]))
        assert torch.equal(batch.gt_inds[b], single.gt_inds)
        assert torch.equal(batch.labels[b], single.labels)


def test_errors():
    assigner = MaskHungarianAssigner()
    with pytest.raises(ValueError, match="same number of pixels"):
        assigner.assign(Instances(scores=torch.zeros(2, C), masks=torch.zeros(2, 4, 4)),
                        Instances(labels=torch.tensor([0]), masks=torch.zeros(1, 5, 5)))
    labels = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="gt_masks"):
        assigner.assign_batch(torch.zeros(1, 2, C), None, None, labels, None, pred_masks=torch.zeros(1, 2, 9),
                              gt_masks=torch.zeros(1, 2, 9))
    with pytest.raises(ValueError, match="pred_masks"):
        assigner.assign_batch(torch.zeros(1, 2, C), None, None, labels, None, pred_masks=torch.zeros(2, 9),
                              gt_masks=torch.zeros(1, 3, 9))
    with pytest.raises(ValueError, match="masks"):        # on boxes alone (grid priors): the mask costs say so
        assigner.assign_batch(torch.zeros(1, 2, C), torch.rand(1, 2, 4), None, labels,
                              torch.tensor([[[0.0, 0, 2, 2]]]).expand(1, 3, 4))
    masks = torch.zeros(3, 9)
    masks[1, 2] = float("nan")
    with pytest.raises(ValueError, match="CrossEntropyLossCost produced 2 NaN values.*DiceCost produced 2 NaN"):
        assigner.assign(Instances(scores=torch.zeros(3, C), masks=masks),
                        Instances(labels=torch.tensor([0, 1]), masks=torch.ones(2, 9)))
