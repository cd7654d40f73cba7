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


def test_one_rule_for_every_output_path(tmp_path, monkeypatch):
    """Outputs replace a symlink (never write through it), refuse what is not a regular file, and get
    the mode the umask gives (not mkstemp's 0600); a PNG is written whole or not at all."""
    import os
    import stat

    import pytest
    from PIL import Image

    from fedinv.errors import ConfigError
    from fedinv.runtime import save_png, save_torch

    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    (tmp_path / "link.json").symlink_to(target)
    save_json({"a": 1}, tmp_path / "link.json")
    assert target.read_text() == "keep" and not (tmp_path / "link.json").is_symlink()
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        save_torch({}, tmp_path / "folder.pt")
    old = os.umask(0o022)
    try:
        for name, write in (("r.json", lambda p: save_json({}, p)), ("m.pt", lambda p: save_torch({}, p)),
                            ("g.png", lambda p: save_png(Image.new("RGB", (2, 2)), p))):
            write(tmp_path / name)
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)

    class Broken:
        def save(self, fp, format):
            open(fp, "wb").write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_png(Broken(), tmp_path / "half.png")
    assert [p.name for p in tmp_path.iterdir() if "half" in p.name] == []


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(tmp_path):
    """Two runs into one folder used to mix their files, the last writer winning; now the second is refused."""
    import os

    import pytest
    from click.testing import CliRunner

    from fedinv.cli.main import cli
    from fedinv.errors import RunStateError
    from fedinv.runtime import folder_lock
    from tests.helpers import TINY_TOML

    with folder_lock(tmp_path / "run"):
        assert (tmp_path / "run" / ".fedinv.lock").read_text() == str(os.getpid())
        with pytest.raises(RunStateError, match=rf"being written by another fedinv process \(pid {os.getpid()}\)"):
            with folder_lock(tmp_path / "run"):
                pass
        res = CliRunner().invoke(cli, ["-q", "run", str(TINY_TOML), "--out", str(tmp_path / "run"), "--no-progress"])
        assert res.exit_code == 2 and "being written by another fedinv process" in res.output, res.output
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".fedinv.lock"]
    assert not (tmp_path / "run").exists()  # made by the lock, empty: gone with it
    with folder_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "x").write_text("1")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["x"]


def test_a_full_disk_while_saving_a_checkpoint_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import pytest
    import torch

    from fedinv.errors import RunStateError
    from fedinv.runtime import save_torch

    save_torch({"epoch": 1}, tmp_path / "partial.pt")

    def full(obj, f):
        open(f, "wb").write(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed (No space left on device)")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunStateError, match="the disk holding .*partial.pt is full"):
        save_torch({"epoch": 2}, tmp_path / "partial.pt")
    monkeypatch.undo()
    assert torch.load(tmp_path / "partial.pt", weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["partial.pt"]


def test_progress_bars_show_on_a_terminal_only(monkeypatch):
    import io
    import sys

    from fedinv.runtime import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no bar, no stale lines
    assert progress_bar(range(3), show=True).disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not progress_bar(range(3), show=True).disable
    assert progress_bar(range(3), show=False).disable  # --no-progress


def test_a_metrics_log_keeps_what_a_resumed_run_keeps_and_appears_with_its_first_line(tmp_path):
    from fedinv.runtime import MetricsLog
    log = MetricsLog(tmp_path / "metrics.jsonl").start()
    assert not log.path.exists()
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "loss": float("nan") if epoch == 3 else 1.0 / epoch})
    assert [line["epoch"] for line in log.lines()] == [1, 2, 3] and log.lines()[2]["loss"] is None
    with open(log.path, "a") as f:
        f.write('{"epoch": 4, "lo')  # a kill cut the last line short
    log = MetricsLog(log.path).start(keep=lambda line: line["epoch"] <= 2)  # resumed after epoch 2
    log.append({"epoch": 3, "loss": 0.3})
    assert [line["epoch"] for line in log.lines()] == [1, 2, 3]
