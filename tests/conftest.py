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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
