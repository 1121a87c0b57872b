"""Import helpers for the reference libraries used as test oracles (never imported by detassign).

``mmdet_assigners()`` / ``ultralytics_modules()`` return the oracle or skip the test with a reason
when it is not installed. Under ``make test`` (``DETASSIGN_REQUIRE_ORACLES=1``) a missing oracle is a
failure, not a skip.
"""
from __future__ import annotations

import os

import pytest

REQUIRE = os.environ.get("DETASSIGN_REQUIRE_ORACLES", "0") == "1"


def _unavailable(name: str, err: Exception):
    msg = f"oracle {name} cannot be imported ({type(err).__name__}: {err}); `make test` installs it"
    if REQUIRE:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def mmdet_assigners():
    """The module ``mmdet.models.task_modules.assigners`` (mmdet 3.3.0)."""
    try:
        from tests.oracles import _mmdet
    except Exception as err:  # ImportError, or an import-time failure inside mmdet
        _unavailable("mmdet 3.3.0", err)
    return _mmdet.assigners


def mmdet():
    """The helper module with ``assigners``, ``task_utils`` (registry) and ``bbox_overlaps``."""
    try:
        from tests.oracles import _mmdet
    except Exception as err:
        _unavailable("mmdet 3.3.0", err)
    return _mmdet


def ultralytics():
    """The helper module with ``tal``, ``loss``, ``metrics``, ``tasks`` from ultralytics 8.4.190."""
    try:
        from tests.oracles import _ultra
    except Exception as err:
        _unavailable("ultralytics 8.4.190", err)
    return _ultra
