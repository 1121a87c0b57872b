import os

import pytest
import torch
from hypothesis import settings

# Keep property tests quick and deterministic in CI (2 cores, whole suite well under 10 minutes).
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One thread per process: `make test` runs two xdist workers on the two CI cores, and tiny tensor ops
# slow down badly when threads oversubscribe the cores.
torch.set_num_threads(1)


def pytest_configure(config):
    # mmengine imports yapf, which builds its grammar pickles in the user cache on first import and renames
    # the file into place before it is flushed: two xdist workers importing it at once on a fresh machine
    # can read an empty pickle and fail collection. Build the cache once here, in the controller, first.
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        try:
            import yapf  # noqa: F401
        except ImportError:
            pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
