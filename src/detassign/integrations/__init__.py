"""Glue for the training frameworks detection engineers use; each module imports its framework lazily.

* :mod:`detassign.integrations.mmdet`: every assigner and match cost in mmdetection 3.x configs
  (``type='detassign.<Name>'``; ``register(replace=True)`` also under mmdet's own names).
* :mod:`detassign.integrations.ultralytics`: a drop-in ``TaskAlignedAssigner`` for ultralytics' loss.
* :mod:`detassign.integrations.detr`: DETR-style Hungarian matchers.

Importing this package imports none of the frameworks: import the submodule you need.
"""
