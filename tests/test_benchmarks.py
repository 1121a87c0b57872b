"""`make bench` (benchmarks/run.py): how a row combines its processes, and one small run end to end."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from tests import oracles

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("detassign_bench", ROOT / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_a_row_reports_the_median_process():
    runs = [dict(median_s=0.030, min_s=0.028, peak_mib=12.0), dict(median_s=0.010, min_s=0.009, peak_mib=10.0),
            dict(median_s=0.020, min_s=0.015, peak_mib=11.0)]
    row = bench.combine_runs(runs)
    assert row["median_s"] == 0.020 and row["peak_mib"] == 11.0     # the middle process, its memory with it
    assert row["min_s"] == 0.009                                     # the best repetition of any process
    assert row["process_medians_s"] == [0.030, 0.010, 0.020]
    assert bench.combine_runs(runs + [dict(error="timed out after 600 s")]) == dict(error="timed out after 600 s")
    assert bench.combine_runs([]) is None and bench.combine_runs([None]) is None


def test_bench_runs_one_case_in_alternating_processes(tmp_path):
    oracles.mmdet()   # the reference side of the row
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "atss", "--reps", "1",
                           "--processes", "2", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "bench.json").read_text())["records"][0]
    assert record["case"] == "atss:M=50"
    assert len(record["ours"]["process_medians_s"]) == 2 and len(record["ref"]["process_medians_s"]) == 2
    table = (tmp_path / "bench.md").read_text()
    assert "median of 2 process(es) x 1 repetitions" in table and "| ATSS M=50 | mmdet ATSS loop |" in table
