"""The benchmarks run end to end at tiny budgets (their figures come from full runs, not from here)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str, monkeypatch):
    """bench/NAME.py imported as a module (its sibling imports, such as jsonl, resolve)."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    table = subprocess.run([sys.executable, str(BENCH / "findings.py"), "--table", str(out)], check=True,
                           capture_output=True, text=True).stdout.splitlines()
    assert len(table) == 2 + 6 and table[4].startswith("| head-mask | 2-disjoint | head_mask = on | 1 |")  # by finding
    assert f"{100 * rows[0]['student_accuracy']:.2f}" in table[4] and "64.6%" in table[4]
    diff = 100 * (rows[1]["student_accuracy"] - rows[0]["student_accuracy"])
    assert f"{'+' if diff >= 0 else ''}{diff:.2f}" in table[5]  # off minus on, paired by seed
    subprocess.run([sys.executable, str(BENCH / "findings.py"), "--quick", "--rows", "local-data", "--seeds", "0",
                    "--out", str(tmp_path / "runs"), "--device", "cpu"], check=True, capture_output=True)
    pictures = subprocess.run([sys.executable, str(BENCH / "findings.py"), "--quick", "--seeds", "0", "--out",
                               str(tmp_path / "runs"), "--plots", str(tmp_path / "plots")],
                              check=True, capture_output=True, text=True).stdout.split()
    assert {Path(p).name for p in pictures} >= {"head-mask-accuracy.png", "adaptive-fresh-batches.png",
                                                "local-data-classes.png", "local-data-halves.png",
                                                "local-data-confusion.png"}


def test_rounds_bench_writes_the_keys_the_issue_reads_and_merges_runs(tmp_path):
    cfg = tmp_path / "fl.toml"
    cfg.write_text('[data]\ndataset = "synthetic-tiny"\n[partition]\nnum_nodes = 3\nalpha = 1.0\n'
                   '[federate]\nmodel = "lenet5"\nrounds = 2\nbatch_size = 32\n'
                   '[generator]\niterations = 1\nbatch_size = 8\n[fedprox]\nmu = 0.5\n')
    out = tmp_path / "rounds.json"

    def bench(methods: str, *more: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCH / "rounds.py"), "--config", str(cfg), "--methods", methods,
                               "--rounds", "2", "--out", str(tmp_path / "runs"), "--json-out", str(out),
                               "--device", "cpu", *more], capture_output=True, text=True)

    bad = bench("fedavg,fedsgd+ftg")
    assert bad.returncode == 2 and "fedsgd+ftg" in bad.stderr and "fedavg" in bad.stderr
    assert not out.exists() and not (tmp_path / "runs").exists(), "a bad method is refused before any round"
    assert bench("fedavg").returncode == 0
    # a later run adds its methods to the file; a variant has its own keys and folders
    assert bench("fedprox+ftg", "--set", "ftg.generator_ema=0.5", "--tag", "ema").returncode == 0
    result = json.loads(out.read_text())
    assert set(result["lenet5"]) == {"fedavg", "fedprox+ftg@ema"}
    run = json.loads((tmp_path / "runs" / "lenet5" / "fedprox-ftg-ema-seed-0" / "config.json").read_text())
    assert run["fedprox"]["mu"] == 0.5 and run["ftg"]["generator_ema"] == 0.5  # the TOML's own table
    for row in result["lenet5"].values():
        assert {"rounds_to_75", "rounds_to_80", "rounds_to_85", "final_accuracy", "last5_accuracy",
                "seconds_per_round", "server_share", "seeds"} <= set(row)
        assert "machine" not in row and row["per_seed"][0]["machine"]  # each seed names its CPU
    rows = result["lenet5"]
    assert rows["fedavg"]["server_share"] is None and rows["fedprox+ftg@ema"]["server_share"] > 0
    # the BN diagnosis reads a finished FedAvg run of this bench (it was broken once, unseen)
    diagnosis = subprocess.run([sys.executable, str(BENCH / "ftg_bn.py"), "--run",
                                str(tmp_path / "runs" / "lenet5" / "fedavg-seed-0"), "--steps", "2"],
                               capture_output=True, text=True)
    assert diagnosis.returncode == 0, diagnosis.stderr[-2000:]
    figures = json.loads(diagnosis.stdout)
    assert set(figures["after_kd"]) == {"eval", "train-restore", "train-update"}
    assert 0 <= figures["ensemble_class_level"] <= 1 and len(figures["local_models"]) == len(figures["nodes"])


def test_rounds_bench_merges_at_every_save_so_concurrent_runs_keep_their_figures(tmp_path, monkeypatch):
    rounds = bench_module("rounds", monkeypatch)
    out = tmp_path / "rounds.json"
    # another process wrote gncnn/fedavg+ftg and bncnn/fedavg after this one started
    out.write_text(json.dumps({"gncnn": {"fedavg+ftg": {"final_accuracy": 0.7}}, "bncnn": {"fedavg": {}},
                               "setting": {"bncnn": {"rounds": 60}}}))
    mine = {"gncnn": {"fedavg": {"final_accuracy": 0.6}}, "setting": {"gncnn": {"rounds": 60}}}
    both = rounds.merged(str(out), mine)
    assert both["gncnn"] == {"fedavg+ftg": {"final_accuracy": 0.7}, "fedavg": {"final_accuracy": 0.6}}
    assert set(both["bncnn"]) == {"fedavg"} and set(both["setting"]) == {"gncnn", "bncnn"}
    assert rounds.merged(str(tmp_path / "none.json"), mine) == mine


def test_rounds_bench_adds_a_later_seed_to_the_seeds_on_disk(tmp_path, monkeypatch):
    rounds = bench_module("rounds", monkeypatch)
    out = tmp_path / "rounds.json"
    seed0 = {"rounds_to_75": 31.0, "final_accuracy": 0.7}
    out.write_text(json.dumps({"gncnn": {"fedavg": {**seed0, "seeds": [0], "per_seed": [seed0]}}}))
    seed1 = {"rounds_to_75": None, "final_accuracy": 0.8}
    both = rounds.merged(str(out), {"gncnn": {"fedavg": {**seed1, "seeds": [1], "per_seed": [seed1]}}})
    entry = both["gncnn"]["fedavg"]
    assert entry["seeds"] == [0, 1] and entry["per_seed"] == [seed0, seed1]
    assert entry["final_accuracy"] == pytest.approx(0.75) and entry["rounds_to_75"] is None  # not every seed
    out.write_text(json.dumps(both))
    again = {"rounds_to_75": 30.0, "final_accuracy": 0.9}  # a seed measured again replaces its own row only
    entry = rounds.merged(str(out), {"gncnn": {"fedavg": {**again, "seeds": [0], "per_seed": [again]}}})
    entry = entry["gncnn"]["fedavg"]
    assert entry["seeds"] == [0, 1] and entry["per_seed"] == [again, seed1]
    assert entry["final_accuracy"] == pytest.approx(0.85)


def test_rounds_compare_counts_rounds_ahead_and_the_server_steps_gain(tmp_path):
    def run(name, rows):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps({**r, "seconds": 1.0}) + "\n" for r in rows))
        (folder / "config.json").write_text(json.dumps({"federate": {"algorithm": "fedavg", "server": "ftg"}}))
        return f"{name}={folder}"

    base = [{"round": i + 1, "test_accuracy": a} for i, a in enumerate((0.5, 0.6, 0.7))]
    ftg = [{"round": i + 1, "test_accuracy": a, "diagnose_global_accuracy": g, "diagnose_aggregate_accuracy": g - d,
            "diagnose_logit_ensemble_accuracy": g, "server_distill": 0.1}
           for i, (a, g, d) in enumerate(((0.55, 0.5, 0.1), (0.5, 0.6, -0.05), (0.8, 0.7, 0.02), (0.9, 0.9, 0.0)))]
    done = subprocess.run([sys.executable, str(BENCH / "rounds_compare.py"), run("base", base), run("ftg", ftg),
                           "--plot", str(tmp_path / "curves.png")], check=True, capture_output=True, text=True)
    out = json.loads(done.stdout)
    assert out["base"] == {"rounds": 3, "mean_accuracy": 0.6, "rounds_ahead_of_base": 0}
    row = out["ftg"]  # its 4th round is past the base's last and left out
    assert row["rounds"] == 3 and row["rounds_ahead_of_base"] == 2 and row["after_step_ahead_of_aggregate"] == 2
    assert abs(row["after_step_minus_aggregate"] - 0.07 / 3) < 1e-9 and row["after_step_to_logit_ensemble"] == 0.0
    assert (tmp_path / "curves.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, str(BENCH / "rounds_compare.py"), f"x={tmp_path}"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "NAME=RUN_DIR" in bad.stderr


def test_oneshot_bench_refuses_a_variant_without_a_name_or_of_the_shared_teachers():
    def run(*args):
        return subprocess.run([sys.executable, str(BENCH / "oneshot.py"), *args], capture_output=True, text=True)

    unnamed = run("--set", "synthesis.fast.steps=10")
    assert unnamed.returncode == 2 and "--tag" in unnamed.stderr
    shared = run("--set", "teachers.epochs=3", "--tag", "x")
    assert shared.returncode == 2 and "['teachers'] cannot vary" in shared.stderr
    typo = run("--set", "synthesis.fast.stepz=10", "--tag", "x")
    assert typo.returncode == 2 and "'stepz'" in typo.stderr and "steps" in typo.stderr


def test_a_resumed_benchmark_does_not_append_a_line_it_already_wrote(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from jsonl import emit
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "rows.jsonl"
    emit({"method": "fast", "student_accuracy": 0.5}, str(out))
    emit({"method": "fast", "student_accuracy": 0.5}, str(out))
    emit({"method": "dense", "student_accuracy": 0.4}, str(out))
    assert [json.loads(line)["method"] for line in out.read_text().splitlines()] == ["fast", "dense"]
    # a line from before records named their machine is the same measurement read back
    emit({"method": "fast", "student_accuracy": 0.5, "machine": {"cpu": "x"}}, str(out))
    emit({"method": "fast", "student_accuracy": 0.6, "machine": {"cpu": "x"}}, str(out))
    assert [json.loads(line)["student_accuracy"] for line in out.read_text().splitlines()] == [0.5, 0.4, 0.6]


def test_benchmark_records_name_the_cpu_that_ran_them(monkeypatch):
    machine = bench_module("machine", monkeypatch)
    record = machine.describe("cpu")
    assert machine.describe("auto")["device"] in ("cpu", "cuda")  # the device that ran, not "auto"
    assert record["cpu"] and record["device"] == "cpu" and record["cpu_threads"] >= 1 and record["torch"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: the model name, and whether the CPU has AVX-512
        assert record["cpu"] in cpuinfo.read_text() or record["cpu"].endswith(", AVX-512")
        assert record["cpu"].endswith(", AVX-512") == ("avx512f" in cpuinfo.read_text().split())


def test_kd_ceiling_trains_the_student_on_real_images_and_reads_finished_ones_back(tmp_path, tiny_partition):
    from tests.helpers import tiny_teacher_config

    from fedinv.data.partition import load_partition
    from fedinv.oneshot.teachers import train_teachers

    train_teachers(load_partition(tiny_partition), tiny_teacher_config(epochs=1), tmp_path / "t", progress=False)
    config = tmp_path / "c.toml"
    config.write_text('[data]\ndataset = "synthetic-tiny"\n[partition]\nnum_nodes = 3\n'
                      '[student]\nmodel = "lenet5"\nbatch_size = 32\n')

    def run(*args):
        return subprocess.run([sys.executable, str(BENCH / "kd_ceiling.py"), "--teachers", str(tmp_path / "t"),
                               "--config", str(config), "--out", str(tmp_path / "runs"), "--device", "cpu", *args],
                              capture_output=True, text=True)

    done = run("--runs", "64x1,128x2", "--json-out", str(tmp_path / "rows.jsonl"))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(r["images"], r["epochs"]) for r in rows] == [(64, 1), (128, 2)]
    for r in rows:
        assert 0.0 <= r["student_accuracy"] <= 1.0 and r["seconds"] > 0 and r["config"]["model"] == "lenet5"
        assert r["ensemble_accuracy"] is not None
    report = tmp_path / "runs" / "student-128x2-seed-0" / "report.json"
    written = report.stat().st_mtime_ns
    again = run("--runs", "128x2")  # read back, not trained again
    assert again.returncode == 0 and json.loads(again.stdout)["student_accuracy"] == rows[1]["student_accuracy"]
    assert report.stat().st_mtime_ns == written
    other = run("--runs", "128x2", "--set", "student.temperature=1")
    assert other.returncode == 2 and "other settings" in other.stderr
    too_many = run("--runs", "5000x1")
    assert too_many.returncode == 2 and "holds 1000 images" in too_many.stderr


def test_oneshot_bench_reads_back_a_finished_student_of_its_settings_only(tmp_path, monkeypatch):
    import click

    from fedinv.config import to_dict
    from fedinv.oneshot.student.config import StudentConfig
    oneshot = bench_module("oneshot", monkeypatch)
    cfg = StudentConfig(epochs=3)
    assert not oneshot.finished(tmp_path, cfg)  # nothing there yet
    (tmp_path / "report.json").write_text(json.dumps({"config": to_dict(cfg), "test_accuracy": 0.5}))
    assert oneshot.finished(tmp_path, cfg)
    assert oneshot.finished(tmp_path, StudentConfig(epochs=3, device="cuda"))  # a run-time field is no change
    with pytest.raises(click.UsageError, match="other settings"):
        oneshot.finished(tmp_path, StudentConfig(epochs=3, kd_form="hard"))


def test_rounds_table_sets_each_method_beside_its_base_of_the_same_seed(monkeypatch):
    table = bench_module("rounds_table", monkeypatch)

    def figures(r75, r80, share=None):
        return {"rounds_to_75": r75, "rounds_to_80": r80, "rounds_to_85": None, "final_accuracy": 0.8,
                "last5_accuracy": 0.79, "server_share": share}

    results = {"setting": {"m": {}},
               "m": {"fedavg+ftg@ema": {"seeds": [1], **figures(30, None, 0.5)},
                     "fedavg": {"seeds": [0, 1], "per_seed": [figures(20, 40), figures(40, 50)]},
                     "fedavg+ftg": {"seeds": [0], "per_seed": [figures(15, None, 0.004)]}}}
    got = {(r[1], r[2]): r for r in table.rows(results)}
    assert [k for k in got] == [("0", "fedavg"), ("1", "fedavg"), ("0", "fedavg+ftg"), ("1", "fedavg+ftg@ema")]
    assert got[("0", "fedavg+ftg")][6:] == ["+25% / never / -", "80.00", "79.00", "< 1%"]
    assert got[("1", "fedavg+ftg@ema")][3:7] == ["30", "-", "-", "+25% / never / -"]  # against seed 1's base
    assert got[("1", "fedavg")][6] == "" and got[("1", "fedavg")][9] == "-"


def test_oneshot_table_reads_the_first_benchmarks_lines_in_todays_keys(tmp_path, monkeypatch):
    from click.testing import CliRunner
    table = bench_module("oneshot_table", monkeypatch)
    seconds = {"partition": 0.0, "train_teachers": 60.0, "synthesize": 60.0, "train_student": 60.0}
    v1 = tmp_path / "v1.jsonl"  # the first benchmark: no method, nodes or seed; "adaptive" for online
    v1.write_text(json.dumps({"alpha": 0.5, "fedavg_accuracy": 0.5, "ensemble_accuracy": 0.9, "student_accuracy": 0.8,
                              "student_adaptive_accuracy": 0.7,
                              "stage_seconds": {**seconds, "train_student_adaptive": 60.0}}) + "\n")
    now = tmp_path / "now.jsonl"
    now.write_text("".join(json.dumps({"method": "deepinversion", "alpha": 0.5, "num_nodes": 5, "seed": seed,
                                       "fedavg_accuracy": 0.5, "ensemble_accuracy": 0.9, "student_accuracy": acc,
                                       "student_online_accuracy": acc,
                                       "stage_seconds": {**seconds, "train_student_online": 60.0}}) + "\n"
                           for seed, acc in ((1, 0.6), (2, 0.7))))
    result = CliRunner().invoke(table.main, [str(v1), str(now)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "| deepinversion |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["0.5", "5", "deepinversion", "3"]  # seed 0 from the v1 file, seeds 1-2 from today's
    assert cells[6] == "70.00 ± 10.00" and cells[7] == "66.67 ± 5.77"  # student; online = v1's adaptive
    assert cells[-1] == "4.0"  # four stages of 60 s on every seed: the v1 adaptive student counts as online
