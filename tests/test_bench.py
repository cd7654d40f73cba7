"""The benchmarks run end to end at tiny budgets (their figures come from full runs, not from here)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_findings_bench_writes_the_keys_the_issue_reads(tmp_path):
    out = tmp_path / "rows.jsonl"
    subprocess.run([sys.executable, str(BENCH / "findings.py"), "--quick", "--rows", "head-mask,adaptive",
                    "--seeds", "0", "--out", str(tmp_path / "runs"), "--json-out", str(out), "--device", "cpu"],
                   check=True, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["finding"], r["setting"], r["value"]) for r in rows] == [
        ("head-mask", "2-disjoint", True), ("head-mask", "2-disjoint", False),
        ("head-mask", "5-disjoint", True), ("head-mask", "5-disjoint", False),
        ("adaptive", "1-teacher-all-data", 10.0), ("adaptive", "1-teacher-all-data", 0.0)]
    for r in rows:
        assert {"finding", "setting", "switch", "seed", "student_accuracy", "ensemble_accuracy", "seconds"} <= set(r)
        assert 0.0 <= r["student_accuracy"] <= 1.0 and r["seconds"] > 0
    assert [len(r["fresh_batches"]) for r in rows[4:]] == [2, 2]  # one fresh batch per epoch
    # the second run reads every finished row back instead of training again
    again = subprocess.run([sys.executable, str(BENCH / "findings.py"), "--quick", "--rows", "head-mask",
                            "--seeds", "0", "--out", str(tmp_path / "runs"), "--device", "cpu"],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    assert [json.loads(line)["student_accuracy"] for line in again] == [r["student_accuracy"] for r in rows[:4]]
    pictures = subprocess.run([sys.executable, str(BENCH / "findings.py"), "--quick", "--seeds", "0", "--out",
                               str(tmp_path / "runs"), "--plots", str(tmp_path / "plots")],
                              check=True, capture_output=True, text=True).stdout.split()
    assert {Path(p).name for p in pictures} >= {"head-mask-accuracy.png", "adaptive-fresh-batches.png"}
