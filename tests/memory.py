"""Peak memory of a piece of code, measured in a child process.

``ru_maxrss`` is a process-wide high-water mark: once the test process has peaked (another test, an
import), later growth is invisible in it. A fresh interpreter runs ``setup`` (imports, inputs), records
its high-water mark, runs ``code`` and records it again, so the difference is what ``code`` added.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_TEMPLATE = """
import json, resource, time
import torch
torch.set_num_threads(1)
{setup}
_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_start = time.perf_counter()
{code}
_elapsed = time.perf_counter() - _start
_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("MEASURED " + json.dumps(dict(grown_mib=(_after - _before) / 1024, seconds=_elapsed, result={result})))
"""


def measure_in_child(setup: str, code: str, result: str = "None", timeout: float = 120.0) -> dict:
    """Run ``setup`` then ``code`` in a fresh interpreter; returns ``grown_mib`` (peak RSS growth during
    ``code``), ``seconds`` and ``result`` (the JSON value of the expression ``result`` after ``code``)."""
    script = _TEMPLATE.format(setup=textwrap.dedent(setup), code=textwrap.dedent(code), result=result)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise AssertionError(f"child process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEASURED ")][-1]
    return json.loads(line[len("MEASURED "):])
