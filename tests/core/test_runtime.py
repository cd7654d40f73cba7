"""Tests of fedinv.runtime's file helpers."""

import json
import math

from fedinv.runtime import save_json, to_json


def test_json_outputs_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    """NaN / Infinity are not JSON: a report with a diverged loss must stay readable by strict readers."""
    record = {"loss": math.nan, "history": [{"acc": 0.5, "grad": math.inf}, (1.0, -math.inf)], "ok": 1}
    save_json(record, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert strict == {"loss": None, "history": [{"acc": 0.5, "grad": None}, [1.0, None]], "ok": 1}
    assert to_json({"x": float("nan")}) == '{"x": null}'
