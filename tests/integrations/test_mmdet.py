"""detassign.integrations.mmdet inside mmdetection 3.3.0: registry, results, stock configs, heads.

The heads are mmdet's own (RTMDet, TOOD, ATSS, YOLOX, RetinaNet, RPN, DETR, Deformable-DETR), built from
mmdet's stock configs (shipped in the wheel under ``mmdet/.mim/configs``) with small channel counts, and
driven through ``loss_by_feat`` with made-up maps (mmcv-lite has no compiled ops for their forward). The
stock head and the same head with detassign's assigner must give the same losses and the same gradients
with respect to every input map.
"""
from __future__ import annotations

import copy
import functools
import glob
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch

from detassign import Instances, build_assigner
from detassign.assigners.task_aligned import TaskAlignedAssigner
from detassign.registry import ASSIGNERS, MATCH_COSTS
from tests import oracles
from tests.fixtures import REQUIRED_ARGS

README = Path(__file__).resolve().parents[2] / "README.md"
B, C, S = 2, 4, 128          # images, classes, image side (px)
LOSS_TOL = dict(rtol=1e-6, atol=1e-7)   # ours vs mmdet through the same head: identical targets


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def mm():
    """mmdet's oracle helpers with its heads registered, and our integration imported."""
    helpers = oracles.mmdet()
    helpers.heads()
    import detassign.integrations.mmdet as integration  # noqa: F401  (what custom_imports does)

    return helpers


@pytest.fixture
def da(mm):
    import detassign.integrations.mmdet as integration

    yield integration
    integration.restore()   # a test that replaced mmdet's names must not leak into the next one


@pytest.fixture
def fast_tmp(monkeypatch):
    # mmengine parses every config file through a temporary directory; on a tmpfs the scan of 71 stock
    # configs takes ~1.5 s instead of ~5 s on this disk
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")


def _configs_dir() -> str:
    import mmdet

    return os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")


def _load(config: str):
    from mmengine.config import Config

    return Config.fromfile(os.path.join(_configs_dir(), config), import_custom_modules=False)


def _head_cfg(config: str, head: str = "bbox_head", stage=None, **overrides):
    """The head dict of a stock config with its train / test cfg merged in, as mmdet's detectors do."""
    cfg = _load(config)
    out = copy.deepcopy(cfg.model[head])
    train, test = cfg.model.get("train_cfg"), cfg.model.get("test_cfg")
    out.update(train_cfg=copy.deepcopy(train[stage] if stage else train),
               test_cfg=copy.deepcopy(test[stage] if stage and test else test))
    out.update(overrides)
    return out


def _build_head(mm, cfg):
    # a copy: some heads write into their config while building (DETRHead puts a tensor class_weight there)
    return mm.heads().build(copy.deepcopy(cfg))


def _with_type(head_cfg, key: str, kind: str):
    out = copy.deepcopy(head_cfg)
    out.train_cfg[key].type = kind
    return out


def _gts(seed: int, m: int = 5, boxes=None):
    """B images of m random GTs (xyxy px inside S x S, sides 8..64) as mmdet InstanceData."""
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(B):
        xy = torch.rand(m, 2, generator=g) * S * 0.75
        wh = 8 + torch.rand(m, 2, generator=g) * 56
        bboxes = torch.cat([xy, (xy + wh).clamp(max=S)], 1)
        out.append(InstanceData(bboxes=bboxes if boxes is None else boxes(bboxes),
                                labels=torch.randint(0, C, (m,), generator=g)))
    return out


def _metas():
    return [dict(img_shape=(S, S), pad_shape=(S, S), batch_input_shape=(S, S), scale_factor=(1.0, 1.0))] * B


def _flat_losses(losses) -> dict:
    return {k: torch.stack([x.detach().reshape(()) for x in (v if isinstance(v, (list, tuple)) else [v])])
            for k, v in losses.items()}


def _run(head, maps: dict, call, seed: int = 0):
    """Losses and the gradient of their sum w.r.t. every map. maps: name -> list of tensors."""
    leaves = {k: [t.clone().requires_grad_() for t in v] for k, v in maps.items()}
    torch.manual_seed(seed)   # samplers draw from the global generator
    losses = call(head, leaves)
    flat = [x for v in losses.values() for x in (v if isinstance(v, (list, tuple)) else [v])]
    grads = torch.autograd.grad(sum(x.sum() for x in flat), [t for v in leaves.values() for t in v])
    return _flat_losses(losses), grads


def _assert_same(ours, stock, what: str):
    (ours_losses, ours_grads), (stock_losses, stock_grads) = ours, stock
    assert ours_losses.keys() == stock_losses.keys(), what
    for key in stock_losses:
        torch.testing.assert_close(ours_losses[key], stock_losses[key], **LOSS_TOL, msg=f"{what}: {key}")
    for i, (a, b) in enumerate(zip(ours_grads, stock_grads)):
        torch.testing.assert_close(a, b, **LOSS_TOL, msg=f"{what}: gradient of input map {i}")


def _bbox_loss_positive(result, key="loss_bbox"):
    # the comparison means something only if the GTs got positives
    return float(result[0][key].sum()) > 0


# ----------------------------------------------------------------------------- registry


def test_every_assigner_and_cost_builds_in_the_detassign_scope(mm):
    for name, cls in __import__("detassign").available_assigners().items():
        built = mm.task_utils.build(dict(type=f"detassign.{name}", **REQUIRED_ARGS.get(name, {})))
        assert type(built).__name__ == name and isinstance(built.assigner, cls), name
    for name in MATCH_COSTS:
        cost = mm.task_utils.build(dict(type=f"detassign.{name}", weight=2.0))
        assert type(cost.cost).__name__ == name and cost.weight == 2.0
    # mmdet's own names still build mmdet's classes
    assert type(mm.task_utils.build(dict(type="DynamicSoftLabelAssigner"))).__module__.startswith("mmdet.")
    # results read as mmdet's: RegionAssigner labels non-positives 0 unless the config says otherwise
    assert mm.task_utils.build(dict(type="detassign.RegionAssigner")).mmdet_labels is True
    assert mm.task_utils.build(dict(type="detassign.RegionAssigner", mmdet_labels=False)).mmdet_labels is False
    assert build_assigner(dict(type="RegionAssigner")).mmdet_labels is False   # our own contract: -1


def test_scope_resolves_under_mmdets_default_scope_and_custom_imports(mm):
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings

    import_modules_from_strings(imports=["detassign.integrations.mmdet"], allow_failed_imports=False)
    with DefaultScope.overwrite_default_scope("mmdet"):   # what mmdet's Runner sets
        built = mm.task_utils.build(dict(type="detassign.DynamicSoftLabelAssigner", topk=13))
    assert built.assigner.topk == 13 and built.topk == 13   # configuration reads through


def test_unknown_arguments_fail_with_the_accepted_ones(mm):
    with pytest.raises(TypeError, match="soft_center_radius"):
        mm.task_utils.build(dict(type="detassign.DynamicSoftLabelAssigner", top_k=13))


def test_assigners_and_costs_copy_and_pickle(mm):
    # mmdet's EMA hooks deep-copy the model (its head holds the assigner); DDP spawn pickles it
    import pickle

    for cfg in (dict(type="detassign.DynamicSoftLabelAssigner", topk=11), dict(type="detassign.FocalLossCost",
                                                                              weight=2.0)):
        built = mm.task_utils.build(cfg)
        for clone in (copy.deepcopy(built), pickle.loads(pickle.dumps(built))):
            assert type(clone) is type(built) and repr(clone) == repr(built)


def test_replace_serves_mmdet_names_and_restore_undoes_it(mm, da):
    stock = mm.task_utils.get("TaskAlignedAssigner")
    assert da.register() == [] and mm.task_utils.get("TaskAlignedAssigner") is stock
    names = da.register(replace=True)
    assert {"MaxIoUAssigner", "TaskAlignedAssigner", "HungarianAssigner", "FocalLossCost"} <= set(names)
    assert set(names) <= set(ASSIGNERS) | set(MATCH_COSTS)
    built = mm.task_utils.build(dict(type="TaskAlignedAssigner", topk=13))
    assert isinstance(built.assigner, TaskAlignedAssigner) and built.preset == "mmdet"
    assert da.register(replace=True) == names   # idempotent
    assert da.restore() == names
    assert mm.task_utils.get("TaskAlignedAssigner") is stock
    assert da.restore() == []


# ----------------------------------------------------------------------------- TAL default from configs
def test_task_aligned_from_a_config_is_mmdets_and_the_constructor_ultralytics(mm):
    # a config dict means what it means in mmdet (TOOD's dict(type='TaskAlignedAssigner', topk=13));
    # the Python constructor keeps ultralytics' TAL (documented in the README and the registry)
    assert build_assigner(dict(type="TaskAlignedAssigner", topk=13)).preset == "mmdet"
    assert build_assigner(dict(type="detassign.TaskAlignedAssigner", topk=13)).preset == "mmdet"
    assert build_assigner(dict(type=TaskAlignedAssigner, topk=13)).preset == "mmdet"
    assert build_assigner(dict(type="TaskAlignedAssigner", preset="ultralytics")).preset == "ultralytics"
    assert mm.task_utils.build(dict(type="detassign.TaskAlignedAssigner", topk=13)).preset == "mmdet"
    assert TaskAlignedAssigner().preset == "ultralytics"


# ----------------------------------------------------------------------------- results and inputs
def _dsl_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 2) * 8 + 4
    priors = torch.cat([centres, torch.full_like(centres, 8.0)], 1)                  # (cx, cy, sw, sh)
    bboxes = torch.cat([centres - 12, centres + 12], 1) + torch.randn(len(centres), 4, generator=g)
    scores = torch.randn(len(centres), C, generator=g)
    return priors, bboxes, scores


def test_result_is_mmdets_assign_result_with_extras_and_add_gt(mm, da):
    from mmdet.models.task_modules.assigners.assign_result import AssignResult as MMDetResult

    priors, bboxes, scores = _dsl_inputs(0)
    gt = _gts(0)[0]
    pred = mm.InstanceData(priors=torch.cat([priors[:, :2] - 16, priors[:, :2] + 16], 1), bboxes=bboxes,
                           scores=scores.sigmoid())
    ours = mm.task_utils.build(dict(type="detassign.TaskAlignedAssigner", topk=13)).assign(pred, gt, None, 1, 6)
    stock = mm.task_utils.build(dict(type="TaskAlignedAssigner", topk=13)).assign(pred, gt, None, 1, 6)
    assert isinstance(ours, MMDetResult) and ours.num_gts == stock.num_gts == len(gt)
    assert torch.equal(ours.gt_inds, stock.gt_inds) and torch.equal(ours.labels, stock.labels)
    assert torch.equal(ours.max_overlaps, stock.max_overlaps)
    torch.testing.assert_close(ours.assign_metrics, stock.assign_metrics, rtol=1e-6, atol=1e-12)
    assert ours.get_extra_property("target_scores").shape == (len(priors), C)
    with pytest.raises(AttributeError, match="target_scores"):
        ours.not_an_extra
    ours.add_gt_(gt.labels)
    stock.add_gt_(gt.labels)
    assert torch.equal(ours.gt_inds, stock.gt_inds) and torch.equal(ours.labels, stock.labels)
    assert da.to_mmdet_result("not a result") == "not a result"


def test_random_sampler_with_gt_as_proposals_samples_the_same(mm):
    # two-stage heads: RandomSampler(add_gt_as_proposals=True) calls add_gt_ and reads gt_inds / labels
    priors = _dsl_inputs(1)[1]
    gt = _gts(1, m=6)[0]
    pred = mm.InstanceData(priors=priors)
    cfg = dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False, ignore_iof_thr=-1)
    sampler = mm.task_utils.build(dict(type="RandomSampler", num=64, pos_fraction=0.25, neg_pos_ub=-1,
                                       add_gt_as_proposals=True))
    sampled = []
    for kind in ("detassign.MaxIoUAssigner", "MaxIoUAssigner"):
        result = mm.task_utils.build(dict(type=kind, **cfg)).assign(pred, gt)
        torch.manual_seed(3)
        sampled.append(sampler.sample(result, pred, gt))
    ours, stock = sampled
    assert len(stock.pos_inds) > len(gt)   # GTs as proposals plus real positives
    for field in ("pos_inds", "neg_inds", "pos_assigned_gt_inds", "pos_gt_labels", "pos_gt_bboxes"):
        assert torch.equal(getattr(ours, field), getattr(stock, field)), field


# (config, pred fields from (point priors, box priors, boxes, logits), extra positional args before gt)
HBOX_CASES = {
    "DynamicSoftLabelAssigner": (dict(topk=13), lambda p, q, b, s: dict(priors=p, bboxes=b, scores=s), ()),
    "SimOTAAssigner": (dict(center_radius=2.5), lambda p, q, b, s: dict(priors=p, bboxes=b, scores=s.sigmoid()), ()),
    "TaskAlignedAssigner": (dict(topk=13), lambda p, q, b, s: dict(priors=q, bboxes=b, scores=s.sigmoid()), ()),
    "ATSSAssigner": (dict(topk=9), lambda p, q, b, s: dict(priors=q), ([256],)),
    "MaxIoUAssigner": (dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0), lambda p, q, b, s: dict(priors=q), ()),
}


@pytest.mark.parametrize("name", sorted(HBOX_CASES))
def test_horizontal_boxes_inputs(mm, name):
    """mmdet pipelines with boxtype2tensor=False hand box objects to the assigners: the mmdet-facing class
    and the core assigner (duck-typed ``.tensor``, no integration layer) both read them as tensors."""
    from mmdet.structures.bbox import HorizontalBoxes

    kwargs, fields, extra = HBOX_CASES[name]
    priors, bboxes, scores = _dsl_inputs(2)
    box_priors = torch.cat([priors[:, :2] - 16, priors[:, :2] + 16], 1)
    plain, boxed = _gts(2)[0], _gts(2, boxes=HorizontalBoxes)[0]
    pred = mm.InstanceData(**fields(priors, box_priors, bboxes, scores))
    want = mm.task_utils.build(dict(type=name, **kwargs)).assign(pred, *extra, plain)
    assert int((want.gt_inds > 0).sum()) > 0
    boxed_pred = pred.clone()
    if pred.priors is box_priors:   # prior boxes can be box objects too (points cannot)
        boxed_pred.priors = HorizontalBoxes(box_priors)
    for assigner in (mm.task_utils.build(dict(type=f"detassign.{name}", **kwargs)),
                     build_assigner(dict(type=name, **kwargs))):
        for p, gt in ((pred, plain), (boxed_pred, boxed)):
            got = assigner.assign(p, *extra, gt)
            assert torch.equal(got.gt_inds, want.gt_inds) and torch.equal(got.labels, want.labels), name
            torch.testing.assert_close(got.max_overlaps, want.max_overlaps, rtol=1e-6, atol=1e-7)
    assert isinstance(boxed.bboxes, HorizontalBoxes)   # the caller's InstanceData is left as it was


def test_plain_boxes_keeps_detassign_instances_and_other_arguments(da):
    from mmdet.structures.bbox import HorizontalBoxes

    boxes = HorizontalBoxes(torch.tensor([[0.0, 0, 4, 4]]))
    converted = da._plain_boxes(Instances(bboxes=boxes, labels=torch.tensor([1])))
    assert isinstance(converted, Instances) and converted.bboxes is boxes.tensor
    meta = dict(img_shape=(8, 8))
    assert da._plain_boxes(meta) is meta and da._plain_boxes([3, 4]) == [3, 4] and da._plain_boxes(None) is None


# ----------------------------------------------------------------------------- heads: dense, anchor-free
def _level_maps(strides, channels: int, seed: int, make):
    """One [B, channels, S / s, S / s] map per stride, from ``make(shape, generator, stride)``."""
    g = torch.Generator().manual_seed(seed)
    return [make((B, channels, S // int(s), S // int(s)), g, float(s)) for s in strides]


def _strides(head):
    return [s[0] if isinstance(s, (tuple, list)) else s for s in head.prior_generator.strides]


def _rtmdet_maps(head, seed):
    strides = _strides(head)
    return dict(cls=_level_maps(strides, C, seed, lambda sh, g, s: torch.randn(sh, generator=g) - 2),
                box=_level_maps(strides, 4, seed + 1,
                                lambda sh, g, s: (torch.randn(sh, generator=g) * 0.3).exp() * s * 2))


@pytest.mark.parametrize("exact", [True, False])   # False: the vectorised path, per image
def test_rtmdet_head_dynamic_soft_label(mm, exact):
    # GT boxes as tensors: mmdet's DetDataPreprocessor converts box objects (boxtype2tensor=True), and
    # its heads need that (RTMDetHead fails writing HorizontalBoxes into its target tensor)
    cfg = _head_cfg("rtmdet/rtmdet_tiny_8xb32-300e_coco.py", num_classes=C, in_channels=8, feat_channels=8)
    assert cfg.train_cfg.assigner == dict(type="DynamicSoftLabelAssigner", topk=13)
    stock = _build_head(mm, cfg)
    ours_cfg = _with_type(cfg, "assigner", "detassign.DynamicSoftLabelAssigner")
    ours_cfg.train_cfg.assigner.exact = exact
    ours = _build_head(mm, ours_cfg)
    assert type(ours.assigner).__module__ == "detassign.integrations.mmdet"
    gts = _gts(10)
    for seed in (0, 1):
        maps = _rtmdet_maps(stock, seed)

        def call(head, m):
            return head.loss_by_feat(m["cls"], m["box"], gts, _metas())

        want = _run(stock, maps, call)
        assert _bbox_loss_positive(want)
        _assert_same(_run(ours, maps, call), want, f"RTMDetHead seed {seed}")


def _tood_maps(head, seed):
    """Probabilities and decoded xyxy boxes in stride units (what TOOD's forward gives loss_by_feat)."""
    def boxes(shape, g, s):
        h, w = shape[2:]
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")   # anchor centres
        centre = torch.stack([xs, ys])[None] + torch.randn(B, 2, h, w, generator=g) * s * 0.5
        half = 4 * s * (torch.randn(B, 2, h, w, generator=g) * 0.4).exp()
        return torch.cat([centre - half, centre + half], 1) / s

    strides = _strides(head)
    return dict(cls=_level_maps(strides, C, seed, lambda sh, g, s: (torch.randn(sh, generator=g) - 1).sigmoid()),
                box=_level_maps(strides, 4, seed + 1, boxes))


def _at_epoch(epoch: int):
    from mmengine.logging import MessageHub

    MessageHub.get_current_instance().update_info("epoch", epoch)


def _tood_cfg():
    return _head_cfg("tood/tood_r50_fpn_1x_coco.py", num_classes=C, in_channels=32, feat_channels=32,
                     stacked_convs=2)


def _tood_call(gts):
    def call(head, m):
        return head.loss_by_feat(m["cls"], m["box"], gts, _metas())
    return call


@pytest.mark.parametrize("epoch", [0, 5])   # initial_epoch=4: ATSS before, TaskAligned from then on
def test_tood_head_atss_and_task_aligned_epochs(mm, epoch):
    cfg = _tood_cfg()
    assert cfg.train_cfg.initial_assigner == dict(type="ATSSAssigner", topk=9)
    assert cfg.train_cfg.assigner == dict(type="TaskAlignedAssigner", topk=13)
    stock = _build_head(mm, cfg)
    ours_cfg = _with_type(_with_type(cfg, "assigner", "detassign.TaskAlignedAssigner"),
                          "initial_assigner", "detassign.ATSSAssigner")
    ours = _build_head(mm, ours_cfg)
    gts = _gts(20)
    _at_epoch(epoch)
    try:
        for seed in (0, 1):
            maps = _tood_maps(stock, seed)
            want = _run(stock, maps, _tood_call(gts))
            assert _bbox_loss_positive(want)
            _assert_same(_run(ours, maps, _tood_call(gts)), want, f"TOODHead epoch {epoch} seed {seed}")
    finally:
        _at_epoch(0)


def test_tood_stock_config_gives_mmdets_losses_three_ways(mm, da):
    """The issue's case: mmdet's stock TOOD dict must not build ultralytics' TAL anywhere."""
    cfg = _tood_cfg()
    stock = _build_head(mm, cfg)
    gts, maps = _gts(21), _tood_maps(stock, 7)
    _at_epoch(5)
    try:
        want = _run(stock, maps, _tood_call(gts))
        # 1. our own build_assigner on the stock dict, the plain detassign object in mmdet's head
        head = _build_head(mm, cfg)
        head.alignment_assigner = build_assigner(cfg.train_cfg.assigner)
        _assert_same(_run(head, maps, _tood_call(gts)), want, "build_assigner(stock TAL dict)")
        # 2. the stock config unchanged, mmdet's names replaced
        da.register(replace=True)
        replaced = _build_head(mm, cfg)
        assert type(replaced.alignment_assigner).__module__ == "detassign.integrations.mmdet"
        assert type(replaced.initial_assigner).__module__ == "detassign.integrations.mmdet"
        _assert_same(_run(replaced, maps, _tood_call(gts)), want, "register(replace=True), stock config")
        da.restore()
        # the comparison can fail: ultralytics' TAL in the same head gives other losses
        head.alignment_assigner = TaskAlignedAssigner(preset="ultralytics", topk=13)
        other = _run(head, maps, _tood_call(gts))
        assert not torch.allclose(other[0]["loss_cls"], want[0]["loss_cls"], **LOSS_TOL)
    finally:
        _at_epoch(0)


def test_atss_head(mm):
    cfg = _head_cfg("atss/atss_r50_fpn_1x_coco.py", num_classes=C, in_channels=32, feat_channels=32,
                    stacked_convs=1)
    stock = _build_head(mm, cfg)
    ours = _build_head(mm, _with_type(cfg, "assigner", "detassign.ATSSAssigner"))
    gts = _gts(30)
    strides = _strides(stock)
    for seed in (0, 1):
        maps = dict(cls=_level_maps(strides, C, seed, lambda sh, g, s: torch.randn(sh, generator=g) - 2),
                    box=_level_maps(strides, 4, seed + 1, lambda sh, g, s: torch.randn(sh, generator=g) * 0.2),
                    ctr=_level_maps(strides, 1, seed + 2, lambda sh, g, s: torch.randn(sh, generator=g)))

        def call(head, m):
            return head.loss_by_feat(m["cls"], m["box"], m["ctr"], gts, _metas())

        want = _run(stock, maps, call)
        assert _bbox_loss_positive(want)
        _assert_same(_run(ours, maps, call), want, f"ATSSHead seed {seed}")


@pytest.mark.parametrize("exact", [True, False])
def test_yolox_head_sim_ota(mm, exact):
    cfg = _head_cfg("yolox/yolox_s_8xb8-300e_coco.py", num_classes=C, in_channels=8, feat_channels=8)
    assert cfg.train_cfg.assigner == dict(type="SimOTAAssigner", center_radius=2.5)
    stock = _build_head(mm, cfg)
    ours_cfg = _with_type(cfg, "assigner", "detassign.SimOTAAssigner")
    ours_cfg.train_cfg.assigner.exact = exact
    ours = _build_head(mm, ours_cfg)
    gts = _gts(40)
    strides = _strides(stock)
    for seed in (0, 1):
        maps = dict(cls=_level_maps(strides, C, seed, lambda sh, g, s: torch.randn(sh, generator=g) - 1),
                    box=_level_maps(strides, 4, seed + 1, lambda sh, g, s: torch.randn(sh, generator=g) * 0.5 + 1),
                    obj=_level_maps(strides, 1, seed + 2, lambda sh, g, s: torch.randn(sh, generator=g)))

        def call(head, m):
            return head.loss_by_feat(m["cls"], m["box"], m["obj"], gts, _metas())

        want = _run(stock, maps, call)
        assert _bbox_loss_positive(want)
        _assert_same(_run(ours, maps, call), want, f"YOLOXHead seed {seed}")


# ----------------------------------------------------------------------------- heads: anchors + samplers
def _anchor_maps(head, seed, channels_per_anchor):
    strides = _strides(head)
    k = head.num_base_priors
    return dict(cls=_level_maps(strides, k * channels_per_anchor, seed,
                                lambda sh, g, s: torch.randn(sh, generator=g) - 2),
                box=_level_maps(strides, k * 4, seed + 1, lambda sh, g, s: torch.randn(sh, generator=g) * 0.1))


def test_retina_head_max_iou(mm):
    cfg = _head_cfg("retinanet/retinanet_r50_fpn_1x_coco.py", num_classes=C, in_channels=8, feat_channels=8,
                    stacked_convs=1)
    stock = _build_head(mm, cfg)
    ours = _build_head(mm, _with_type(cfg, "assigner", "detassign.MaxIoUAssigner"))
    gts = _gts(50)
    for seed in (0, 1):
        maps = _anchor_maps(stock, seed, C)

        def call(head, m):
            return head.loss_by_feat(m["cls"], m["box"], gts, _metas())

        want = _run(stock, maps, call)
        assert _bbox_loss_positive(want)
        _assert_same(_run(ours, maps, call), want, f"RetinaHead seed {seed}")


def test_rpn_head_max_iou_with_random_sampler(mm):
    cfg = _head_cfg("rpn/rpn_r50_fpn_1x_coco.py", head="rpn_head", stage="rpn", in_channels=8, feat_channels=8)
    assert cfg.train_cfg.sampler.type == "RandomSampler"
    stock = _build_head(mm, cfg)
    ours = _build_head(mm, _with_type(cfg, "assigner", "detassign.MaxIoUAssigner"))
    gts = _gts(60)
    for seed in (0, 1):
        maps = _anchor_maps(stock, seed, 1)

        def call(head, m):
            return head.loss_by_feat(m["cls"], m["box"], gts, _metas())

        want = _run(stock, maps, call, seed=seed)
        assert _bbox_loss_positive(want, "loss_rpn_bbox")
        _assert_same(_run(ours, maps, call, seed=seed), want, f"RPNHead seed {seed}")


# ----------------------------------------------------------------------------- heads: DETR family
def _detr_maps(seed, layers=2, queries=20, channels=C + 1):
    g = torch.Generator().manual_seed(seed)
    return dict(cls=[torch.randn(layers, B, queries, channels, generator=g)],
                box=[(torch.randn(layers, B, queries, 4, generator=g) * 0.8).sigmoid()])


def test_detr_head_hungarian(mm):
    cfg = _head_cfg("detr/detr_r50_8xb2-150e_coco.py", num_classes=C, embed_dims=8)
    assert [c["type"] for c in cfg.train_cfg.assigner.match_costs] == ["ClassificationCost", "BBoxL1Cost", "IoUCost"]
    stock = _build_head(mm, cfg)
    ours = _build_head(mm, _with_type(cfg, "assigner", "detassign.HungarianAssigner"))
    gts = _gts(70)
    for seed in (0, 1):
        maps = _detr_maps(seed)

        def call(head, m):
            return head.loss_by_feat(m["cls"][0], m["box"][0], gts, _metas())

        want = _run(stock, maps, call)
        assert _bbox_loss_positive(want)
        _assert_same(_run(ours, maps, call), want, f"DETRHead seed {seed}")


def test_deformable_detr_head_focal_costs(mm):
    cfg = _head_cfg("deformable_detr/deformable-detr_r50_16xb2-50e_coco.py", num_classes=C, embed_dims=8,
                    num_pred_layer=2)
    assert [c["type"] for c in cfg.train_cfg.assigner.match_costs] == ["FocalLossCost", "BBoxL1Cost", "IoUCost"]
    stock = _build_head(mm, cfg)
    # the match costs named in our scope too: our Hungarian builds them from the dicts
    ours_cfg = _with_type(cfg, "assigner", "detassign.HungarianAssigner")
    for cost in ours_cfg.train_cfg.assigner.match_costs:
        cost.type = f"detassign.{cost.type}"
    ours = _build_head(mm, ours_cfg)
    # and mmdet's Hungarian with our costs (mmdet calls them with its own signature)
    mixed_cfg = copy.deepcopy(ours_cfg)
    mixed_cfg.train_cfg.assigner.type = "HungarianAssigner"
    mixed = _build_head(mm, mixed_cfg)
    assert type(mixed.assigner.match_costs[0]).__module__ == "detassign.integrations.mmdet"
    gts = _gts(80)
    for seed in (0, 1):
        maps = _detr_maps(seed, channels=C)

        def call(head, m):
            return head.loss_by_feat(m["cls"][0], m["box"][0], None, None, gts, _metas())

        want = _run(stock, maps, call)
        assert _bbox_loss_positive(want)
        _assert_same(_run(ours, maps, call), want, f"DeformableDETRHead seed {seed}")
        _assert_same(_run(mixed, maps, call), want, f"DeformableDETRHead, mmdet Hungarian + our costs, seed {seed}")


# ----------------------------------------------------------------------------- every stock config
# Every config file in mmdet 3.3.0's wheel (mmdet/.mim/configs, _base_ model files included) whose text
# names an assigner; their dicts are read after inheritance (Config.fromfile), so a config that inherits
# an assigner unchanged is covered by its base. 83 files, 47 distinct assigner dicts.
STOCK_ASSIGNER_CONFIGS = """
_base_/models/cascade-mask-rcnn_r50_fpn.py _base_/models/cascade-rcnn_r50_fpn.py
_base_/models/fast-rcnn_r50_fpn.py _base_/models/faster-rcnn_r50-caffe-c4.py
_base_/models/faster-rcnn_r50-caffe-dc5.py _base_/models/faster-rcnn_r50_fpn.py
_base_/models/mask-rcnn_r50-caffe-c4.py _base_/models/mask-rcnn_r50_fpn.py _base_/models/retinanet_r50_fpn.py
_base_/models/rpn_r50-caffe-c4.py _base_/models/rpn_r50_fpn.py _base_/models/ssd300.py
atss/atss_r50_fpn_1x_coco.py atss/atss_r50_fpn_8xb8-amp-lsj-200e_coco.py
cascade_rpn/cascade-rpn_fast-rcnn_r50-caffe_fpn_1x_coco.py
cascade_rpn/cascade-rpn_faster-rcnn_r50-caffe_fpn_1x_coco.py cascade_rpn/cascade-rpn_r50-caffe_fpn_1x_coco.py
conditional_detr/conditional-detr_r50_8xb2-50e_coco.py crowddet/crowddet-rcnn_r50_fpn_8xb2-30e_crowdhuman.py
dab_detr/dab-detr_r50_8xb2-50e_coco.py ddod/ddod_r50_fpn_1x_coco.py ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py
ddq/ddq-detr-4scale_swinl_8xb2-30e_coco.py ddq/ddq-detr-5scale_r50_8xb2-12e_coco.py
deformable_detr/deformable-detr_r50_16xb2-50e_coco.py detr/detr_r50_8xb2-150e_coco.py
dino/dino-4scale_r50_8xb2-12e_coco.py dyhead/atss_r50-caffe_fpn_dyhead_1x_coco.py
dyhead/atss_r50_fpn_dyhead_1x_coco.py dyhead/atss_swin-l-p4-w12_fpn_dyhead_ms-2x_coco.py
efficientnet/retinanet_effb3_fpn_8xb4-crop896-1x_coco.py fsaf/fsaf_r50_fpn_1x_coco.py gfl/gfl_r50_fpn_1x_coco.py
glip/glip_atss_swin-t_a_fpn_dyhead_16xb2_ms-2x_funtune_coco.py
glip/glip_atss_swin-t_a_fpn_dyhead_pretrain_obj365.py grid_rcnn/grid-rcnn_r50_fpn_gn-head_2x_coco.py
grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py
grounding_dino/grounding_dino_swin-t_finetune_16xb2_1x_coco.py
guided_anchoring/ga-fast-rcnn_r50-caffe_fpn_1x_coco.py guided_anchoring/ga-faster-rcnn_r50-caffe_fpn_1x_coco.py
guided_anchoring/ga-faster-rcnn_r50_fpn_1x_coco.py guided_anchoring/ga-retinanet_r50-caffe_fpn_1x_coco.py
guided_anchoring/ga-retinanet_r50_fpn_1x_coco.py guided_anchoring/ga-rpn_r50-caffe_fpn_1x_coco.py
guided_anchoring/ga-rpn_r50_fpn_1x_coco.py htc/htc-without-semantic_r50_fpn_1x_coco.py
lad/lad_r101-paa-r50_fpn_2xb8_coco_1x.py lad/lad_r50-paa-r101_fpn_2xb8_coco_1x.py
ld/ld_r18-gflv1-r101_fpn_1x_coco.py legacy_1.x/faster-rcnn_r50_fpn_1x_coco_v1.py
legacy_1.x/mask-rcnn_r50_fpn_1x_coco_v1.py mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py
mask2former_vis/mask2former_r50_8xb2-8e_youtubevis2019.py maskformer/maskformer_r50_ms-16xb1-75e_coco.py
masktrack_rcnn/masktrack-rcnn_mask-rcnn_r50_fpn_8xb1-12e_youtubevis2019.py
mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365.py
nas_fcos/nas-fcos_r50-caffe_fpn_fcoshead-gn-head_4xb4-1x_coco.py
nas_fcos/nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py nas_fpn/retinanet_r50_fpn_crop640-50e_coco.py
paa/paa_r50_fpn_1x_coco.py qdtrack/qdtrack_faster-rcnn_r50_fpn_4e_base.py queryinst/queryinst_r50_fpn_1x_coco.py
reppoints/reppoints-bbox_r50_fpn-gn_head-gn-grid_1x_coco.py reppoints/reppoints-moment_r50_fpn_1x_coco.py
rtmdet/rtmdet_l_8xb32-300e_coco.py sabl/sabl-retinanet_r101-gn_fpn_1x_coco.py
sabl/sabl-retinanet_r101-gn_fpn_ms-480-960-2x_coco.py sabl/sabl-retinanet_r101-gn_fpn_ms-640-800-2x_coco.py
sabl/sabl-retinanet_r101_fpn_1x_coco.py sabl/sabl-retinanet_r50-gn_fpn_1x_coco.py
sabl/sabl-retinanet_r50_fpn_1x_coco.py sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py
ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py tood/tood_r50_fpn_1x_coco.py
v3det/cascade_rcnn_r50_fpn_8x4_sample1e-3_mstrain_v3det_2x.py
v3det/faster_rcnn_r50_fpn_8x4_sample1e-3_mstrain_v3det_2x.py
v3det/fcos_r50_fpn_8x4_sample1e-3_mstrain_v3det_2x.py vfnet/vfnet_r50_fpn_1x_coco.py
yolact/yolact_r50_1xb8-55e_coco.py yolo/yolov3_d53_8xb8-ms-608-273e_coco.py
yolo/yolov3_mobilenetv2_8xb24-ms-416-300e_coco.py yolof/yolof_r50-c5_8xb8-1x_coco.py
yolox/yolox_s_8xb8-300e_coco.py
""".split()

# Dicts that do not build, and why (the test fails if one starts building, so this list stays true).
NOT_SUPPORTED = {
    # GLIP's ATSS uses a +1-pixel IoU (BboxOverlaps2D_GLIP); ours computes the standard IoU only
    "BboxOverlaps2D_GLIP": ValueError,
}


def _assigner_dicts(tree, found):
    if isinstance(tree, dict):
        if str(tree.get("type", "")).endswith("Assigner"):
            found.append(tree)
        for value in tree.values():
            _assigner_dicts(value, found)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            _assigner_dicts(value, found)
    return found


@functools.lru_cache(maxsize=None)
def _stock_assigner_dicts():
    """json -> (config file, dict) for every distinct assigner dict of the stock configs."""
    root = _configs_dir()
    files = sorted(os.path.relpath(f, root) for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "assigner" in Path(f).read_text())
    assert files == STOCK_ASSIGNER_CONFIGS   # the list above is what the wheel ships
    distinct = {}
    for name in files:
        for cfg in _assigner_dicts(_load(name).to_dict(), []):
            distinct.setdefault(json.dumps(cfg, sort_keys=True), (name, cfg))
    return distinct


def test_every_assigner_dict_in_mmdets_stock_configs_builds(mm, da, fast_tmp):
    distinct = _stock_assigner_dicts()
    assert len(distinct) == 47
    built = 0
    for key, (name, cfg) in sorted(distinct.items()):
        unsupported = [err for marker, err in NOT_SUPPORTED.items() if marker in key]
        scoped = dict(copy.deepcopy(cfg), type=f"detassign.{cfg['type']}")
        if unsupported:
            with pytest.raises(unsupported[0]):
                build_assigner(cfg)
            continue
        assert type(build_assigner(cfg)).__name__ == cfg["type"], name
        assert type(mm.task_utils.build(scoped)).__name__ == cfg["type"], name
        built += 1
    assert built == 46
    da.register(replace=True)
    for key, (name, cfg) in sorted(distinct.items()):
        if not any(marker in key for marker in NOT_SUPPORTED):
            assert type(mm.task_utils.build(copy.deepcopy(cfg))).__module__ == "detassign.integrations.mmdet", name


def test_stock_max_iou_and_atss_dicts_assign_as_mmdet(mm, fast_tmp):
    """Each distinct MaxIoU / ATSS dict of the stock configs (random GT permutation excluded), on random
    boxes: ours through mmdet's registry equals mmdet."""
    dicts = [cfg for key, (_, cfg) in sorted(_stock_assigner_dicts().items())
             if cfg["type"] in ("MaxIoUAssigner", "ATSSAssigner") and "perm_repeat_gt_cfg" not in cfg
             and not any(marker in key for marker in NOT_SUPPORTED)]
    assert len(dicts) >= 20
    g = torch.Generator().manual_seed(5)
    centres = torch.rand(300, 2, generator=g) * S
    priors = torch.cat([centres - 12, centres + 12], 1)
    pred = mm.InstanceData(priors=priors, bboxes=priors + torch.randn(300, 4, generator=g),
                           scores=torch.randn(300, C, generator=g))
    gt = _gts(5, m=8)[0]
    for cfg in dicts:
        ours = mm.task_utils.build(dict(copy.deepcopy(cfg), type=f"detassign.{cfg['type']}"))
        stock = mm.task_utils.build(copy.deepcopy(cfg))
        args = (pred, [100, 100, 100], gt) if cfg["type"] == "ATSSAssigner" else (pred, gt)
        got, want = ours.assign(*args), stock.assign(*args)
        assert torch.equal(got.gt_inds, want.gt_inds), cfg
        assert torch.equal(got.labels, want.labels), cfg
        torch.testing.assert_close(got.max_overlaps, want.max_overlaps, rtol=1e-6, atol=1e-7, msg=str(cfg))


# ----------------------------------------------------------------------------- README snippets
def _readme_blocks():
    text = README.read_text()
    match = re.search(r"^### mmdetection\b.*?(?=^###? )", text, flags=re.S | re.M)
    assert match, "README needs its 'Use it inside mmdetection' section"
    return re.findall(r"```python\n(.*?)```", match.group(0), flags=re.S)


def _strip_scope(tree):
    if isinstance(tree, dict):
        return {k: (v.replace("detassign.", "") if k == "type" else _strip_scope(v)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_strip_scope(v) for v in tree]
    return tree


def test_readme_mmdetection_snippets_run(mm, da, tmp_path, fast_tmp):
    """Config snippets (``_base_ = '../<stock config>'``) load as a user's config on top of that stock config:
    custom_imports runs, every assigner they name builds ours, with the stock dict's arguments. The others run."""
    from mmengine.config import Config

    blocks = _readme_blocks()
    configs = 0
    for block in blocks:
        base = re.search(r"^_base_ = '\.\./(\S+\.py)'$", block, flags=re.M)
        if base is None:
            exec(compile(block, "README.md", "exec"), {})
            da.restore()
            continue
        path = tmp_path / f"snippet{configs}.py"
        path.write_text(block.replace(base.group(0), f"_base_ = {os.path.join(_configs_dir(), base.group(1))!r}"))
        cfg = Config.fromfile(str(path))                       # imports detassign.integrations.mmdet
        stock = _load(base.group(1)).model.train_cfg
        named = [k for k in ("assigner", "initial_assigner") if k in cfg.model.train_cfg]
        assert named, block
        for key in named:
            built = mm.task_utils.build(copy.deepcopy(cfg.model.train_cfg[key]))
            assert type(built).__module__ == "detassign.integrations.mmdet", key
            # the stock dict's arguments, plus detassign's own options (exact=False) where a snippet adds them
            ours, want = _strip_scope(cfg.model.train_cfg[key].to_dict()), stock[key].to_dict()
            assert {k: ours.get(k) for k in want} == want, key
            assert all(getattr(built.assigner, k) == v for k, v in ours.items() if k not in want), key
        configs += 1
    assert configs == 4 and len(blocks) == 5


def test_readme_rtmdet_config_trains_a_whole_detector_as_stock(mm, tmp_path, fast_tmp):
    """As a user would: the README's RTMDet config builds the whole detector (CSPNeXt, PAFPN, head, data
    preprocessor); one training step from the same initial weights gives stock mmdet's losses and the same
    gradient for every parameter."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmdet.structures import DetDataSample

    models = mm.detectors()
    block = next(b for b in _readme_blocks() if "rtmdet_tiny_8xb32-300e_coco.py'" in b and "exact" not in b)
    base = re.search(r"^_base_ = '\.\./(\S+\.py)'$", block, flags=re.M)
    path = tmp_path / "user_config.py"
    path.write_text(block.replace(base.group(0), f"_base_ = {os.path.join(_configs_dir(), base.group(1))!r}"))
    configs = [_load(base.group(1)), Config.fromfile(str(path))]
    g = torch.Generator().manual_seed(0)
    images = list(torch.rand(B, 3, S, S, generator=g) * 255)
    samples = []
    for gt in _gts(90):
        sample = DetDataSample(metainfo=dict(img_shape=(S, S), pad_shape=(S, S), batch_input_shape=(S, S),
                                             ori_shape=(S, S), scale_factor=(1.0, 1.0)))
        gt.labels = gt.labels * 20            # spread over the 80 COCO classes
        sample.gt_instances = gt
        samples.append(sample)
    results = []
    with DefaultScope.overwrite_default_scope("mmdet"):
        for cfg in configs:
            model_cfg = copy.deepcopy(cfg.model)
            model_cfg.backbone.init_cfg = None          # no pretrained download
            for part in ("backbone", "neck", "bbox_head"):
                model_cfg[part].norm_cfg = dict(type="BN")   # SyncBN needs a process group
            torch.manual_seed(0)
            model = models.build(model_cfg)
            model.train()
            data = model.data_preprocessor(dict(inputs=images, data_samples=copy.deepcopy(samples)), True)
            losses = model.loss(data["inputs"], data["data_samples"])
            sum(x.sum() for v in losses.values() for x in (v if isinstance(v, list) else [v])).backward()
            results.append((model, _flat_losses(losses)))
    (stock, stock_losses), (ours, ours_losses) = results
    assert type(ours.bbox_head.assigner).__module__ == "detassign.integrations.mmdet"
    assert float(stock_losses["loss_bbox"].sum()) > 0
    for key in stock_losses:
        torch.testing.assert_close(ours_losses[key], stock_losses[key], **LOSS_TOL, msg=key)
    for (name, p), q in zip(stock.named_parameters(), ours.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, **LOSS_TOL, msg=name)
