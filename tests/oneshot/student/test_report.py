"""Tests of fedinv.oneshot.student.report."""

import json

import pytest

from fedinv.config import to_dict
from fedinv.errors import RunStateError
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.report import finished_student


def test_a_finished_student_is_read_back_for_its_settings_and_refused_for_others(tmp_path):
    cfg = StudentConfig(epochs=3)
    assert finished_student(tmp_path, cfg) is None  # nothing finished there
    (tmp_path / "report.json").write_text(json.dumps({"config": to_dict(cfg), "test_accuracy": 0.5}))
    assert finished_student(tmp_path, cfg)["test_accuracy"] == 0.5
    assert finished_student(tmp_path, StudentConfig(epochs=3, device="cuda")) is not None  # run-time field
    with pytest.raises(RunStateError, match=r"other settings \(kd_form\)"):
        finished_student(tmp_path, StudentConfig(epochs=3, kd_form="hard"))
