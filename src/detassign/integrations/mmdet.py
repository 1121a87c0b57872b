"""detassign inside mmdetection 3.x: every assigner and match cost, buildable from mmdet configs.

Add to an mmdet config::

    custom_imports = dict(imports=['detassign.integrations.mmdet'], allow_failed_imports=False)
    model = dict(bbox_head=dict(train_cfg=dict(
        assigner=dict(type='detassign.DynamicSoftLabelAssigner', topk=13))))

Importing this module registers, in a registry of scope ``detassign`` (a child of mmengine's root
``TASK_UTILS``, as mmyolo and mmrotate do for theirs), one mmdet-facing class per detassign assigner
and match cost, under the same name as in :func:`detassign.build_assigner`. mmengine resolves
``type='detassign.<Name>'`` from mmdet's registry (and from any other OpenMMLab scope). Users who want
no config edits call :func:`register` with ``replace=True``: mmdet's own names (``MaxIoUAssigner``,
``TaskAlignedAssigner``, ``FocalLossCost``, ...) then build ours; :func:`restore` undoes it.

What an mmdet head gets. Each class builds the detassign object with
:func:`detassign.build_assigner` / :func:`~detassign.build_match_cost` from the same keyword
arguments (so a stock mmdet dict gives stock mmdet behaviour: ``TaskAlignedAssigner`` is
``preset="mmdet"`` unless the dict names a preset, see :data:`detassign.registry.CONFIG_DEFAULTS`),
passes every call through with mmdet's signature (``assign(pred_instances, gt_instances, ...)``,
ATSS' ``num_level_priors``, Region's extra arguments, ``cost(pred_instances, gt_instances,
img_meta)``), and returns mmdet's own ``AssignResult`` built from ours (``num_gts``, 1-based
``gt_inds``, ``labels``, ``max_overlaps``, the extra properties, also readable as attributes as
mmdet's TAL result's ``assign_metrics`` is; ``add_gt_`` is mmdet's). Box objects in the inputs
(mmdet's ``HorizontalBoxes``: anything with a tensor ``.tensor``) are read as their ``[N, 4]``
tensors. ``RegionAssigner`` writes mmdet's label 0 for non-positives (``mmdet_labels=True``).

mmdet's heads call the assigner once per image (``multi_apply``), so here every assigner runs its
per-image path (which for the batched assigners is a batch of one).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List

from mmengine.registry import TASK_UTILS as _MMENGINE_TASK_UTILS
from mmengine.registry import Registry
from torch import Tensor

from .. import registry as _registry
from ..structures import AssignResult, Instances

__all__ = ["TASK_UTILS", "MMDetAssigner", "MMDetMatchCost", "register", "restore", "to_mmdet_result"]

TASK_UTILS = Registry("task util", parent=_MMENGINE_TASK_UTILS, scope="detassign")

# Arguments the mmdet-facing classes add to the config (explicit keys win) so that results read as
# mmdet's: mmdet's RegionAssigner labels non-positives 0, ours -1.
MMDET_RESULT_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "RegionAssigner": dict(mmdet_labels=True),
}


def _box_tensor(value: Any) -> Any:
    """mmdet's box objects (``HorizontalBoxes``; anything whose ``.tensor`` is a Tensor) -> that [N, 4] tensor."""
    if not isinstance(value, Tensor) and isinstance(getattr(value, "tensor", None), Tensor):
        return value.tensor
    return value


def _plain_boxes(instances: Any) -> Any:
    """An ``InstanceData`` / ``Instances`` with box objects replaced by tensors; anything else unchanged.

    mmengine's ``InstanceData`` is cloned (a shallow copy: the same tensors), never modified in place.
    """
    if instances is None or isinstance(instances, (Tensor, dict, list, tuple)) or not hasattr(instances, "keys"):
        return instances
    boxed = [k for k in instances.keys() if _box_tensor(getattr(instances, k)) is not getattr(instances, k)]
    if not boxed:
        return instances
    if hasattr(instances, "clone"):
        out = instances.clone()
        for key in boxed:
            setattr(out, key, _box_tensor(getattr(instances, key)))
        return out
    return Instances(**{k: _box_tensor(getattr(instances, k)) for k in instances.keys()})


@functools.lru_cache(maxsize=None)
def _mmdet_result_class() -> type:
    # imported on first use: mmdet.models pulls in the whole model zoo, which importing this module
    # (a config's custom_imports, before the model is built) should not need
    from mmdet.models.task_modules.assigners.assign_result import AssignResult as MMDetAssignResult

    class DetassignAssignResult(MMDetAssignResult):
        """mmdet's ``AssignResult``; extra properties are also attributes (TOOD reads ``.assign_metrics``)."""

        def __getattr__(self, name: str) -> Any:
            extras = self.__dict__.get("_extra_properties", {})
            if name in extras:
                return extras[name]
            raise AttributeError(f"AssignResult has no attribute {name!r}; extra properties: {sorted(extras)}")

    return DetassignAssignResult


def to_mmdet_result(result: Any) -> Any:
    """A detassign :class:`~detassign.AssignResult` -> mmdet's ``AssignResult`` (same tensors, same extras).

    Anything else (an assigner that returns another type) is returned unchanged.
    """
    if not isinstance(result, AssignResult):
        return result
    out = _mmdet_result_class()(result.num_gts, result.gt_inds, result.max_overlaps, result.labels)
    out._extra_properties.update(result.extras)
    return out


class MMDetAssigner:
    """A detassign assigner behind mmdet's interface. Subclasses (one per name, made by this module)
    set ``config_type``; ``__init__`` takes that assigner's config keywords."""

    config_type: str = ""

    def __init__(self, **cfg: Any) -> None:
        defaults = MMDET_RESULT_DEFAULTS.get(self.config_type, {})
        self.assigner = _registry.build_assigner({**defaults, **cfg, "type": self.config_type})

    def assign(self, *args: Any, **kwargs: Any) -> Any:
        """mmdet's call of this assigner, passed through; box objects read as tensors, mmdet's result out."""
        args = tuple(_plain_boxes(a) for a in args)
        kwargs = {k: _plain_boxes(v) for k, v in kwargs.items()}
        return to_mmdet_result(self.assigner.assign(*args, **kwargs))

    __call__ = assign

    def __getattr__(self, name: str) -> Any:
        # configuration (topk, preset, ...) reads through to the detassign object
        assigner = self.__dict__.get("assigner")
        if assigner is None:
            raise AttributeError(name)
        return getattr(assigner, name)

    def __repr__(self) -> str:
        return f"detassign.{self.config_type}: {self.assigner!r}"


class MMDetMatchCost:
    """A detassign match cost with mmdet's call ``cost(pred_instances, gt_instances, img_meta)`` -> [Q, M]."""

    config_type: str = ""

    def __init__(self, **cfg: Any) -> None:
        self.cost = _registry.build_match_cost({**cfg, "type": self.config_type})

    def __call__(self, pred_instances: Any, gt_instances: Any, img_meta: Any = None, **kwargs: Any) -> Tensor:
        return self.cost(_plain_boxes(pred_instances), _plain_boxes(gt_instances), img_meta, **kwargs)

    def __getattr__(self, name: str) -> Any:
        cost = self.__dict__.get("cost")
        if cost is None:
            raise AttributeError(name)
        return getattr(cost, name)

    def __repr__(self) -> str:
        return f"detassign.{self.config_type}: {self.cost!r}"


def _facing_classes() -> Dict[str, type]:
    """Name -> mmdet-facing class, for every name in detassign's assigner and match-cost registries."""
    classes = {}
    for table, base in ((_registry.ASSIGNERS, MMDetAssigner), (_registry.MATCH_COSTS, MMDetMatchCost)):
        for name in table:
            doc = f"detassign's ``{name}`` for mmdet configs (see :mod:`detassign.integrations.mmdet`)."
            classes[name] = type(name, (base,), {"config_type": name, "__doc__": doc, "__module__": __name__})
    return classes


CLASSES: Dict[str, type] = _facing_classes()
# module attributes too, so that pickle (DDP spawn, checkpoints of whole heads) finds them by name
globals().update(CLASSES)
__all__ += sorted(CLASSES)
for _name, _cls in CLASSES.items():
    TASK_UTILS.register_module(name=_name, module=_cls)

_replaced: Dict[str, type] = {}   # mmdet name -> mmdet's own class, while register(replace=True) holds


def _mmdet_task_utils():
    from mmdet.registry import TASK_UTILS as mmdet_task_utils

    # mmdet registers its assigners when its models package is imported; do that first, so our classes
    # replace them (rather than mmdet's later registration failing on a taken name)
    import mmdet.models.task_modules.assigners  # noqa: F401
    return mmdet_task_utils


def register(replace: bool = False) -> List[str]:
    """Make detassign's assigners and match costs buildable from mmdet configs.

    The ``detassign`` scope is registered when this module is imported (``type='detassign.<Name>'``);
    calling this again changes nothing there. ``replace=True`` also registers our classes under mmdet's
    own names in mmdet's ``TASK_UTILS`` (``force=True``), for every name both libraries have, so stock
    configs build ours unchanged. Returns the names now served by detassign in mmdet's scope.
    """
    if not replace:
        return sorted(_replaced)
    mmdet_task_utils = _mmdet_task_utils()
    for name, cls in CLASSES.items():
        current = mmdet_task_utils.module_dict.get(name)
        if current is None or current is cls:
            continue
        _replaced[name] = current
        mmdet_task_utils.register_module(name=name, module=cls, force=True)
    return sorted(_replaced)


def restore() -> List[str]:
    """Undo :func:`register` ``(replace=True)``: mmdet's names build mmdet's classes again. Returns those names."""
    if not _replaced:
        return []
    mmdet_task_utils = _mmdet_task_utils()
    names = sorted(_replaced)
    for name in names:
        mmdet_task_utils.register_module(name=name, module=_replaced.pop(name), force=True)
    return names
