"""The experiments run end to end at tiny budgets (their figures come from full runs, not from here),
and every page's generated tables agree with the records."""

import json
import shutil
import subprocess
import sys

import click
import pytest

from bench.docs import index, stale_pages
from bench.records import append_records, read_records
from bench.study import ROOT, Study, all_studies
from bench.tables import Table, mean_std

STUDIES = [s.name for s in all_studies()]


def test_every_study_folder_has_what_a_study_needs():
    assert len(STUDIES) >= 14
    for s in all_studies():
        assert (s.folder / "README.md").is_file() and (s.folder / "configs" / "quick.toml").is_file(), s.name
        assert s.module.QUESTION and s.tables and callable(s.module.run), s.name
        for record in s.records():
            assert {"study", "variant", "seed", "command", "config", "machine", "fedinv_version"} <= set(record)
            assert record["study"] == s.name


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_runs_quick_and_tabulates_its_records(name, tmp_path):
    s = Study.find(name)
    variant = s.variants[0]
    records = s.run([variant], [0], tmp_path, device="cpu", quick=True)
    assert records and all(r["variant"] == variant and r["seed"] == 0 and r["machine"]["cpu"] for r in records)
    held = read_records(tmp_path / name / "results.jsonl")
    assert len(held) == len(records), "a quick run writes to its own records, never the study's"
    for t in s.tables:
        s.table(t, held).markdown()  # every table renders from fresh records
    again = s.run([variant], [0], tmp_path, device="cpu", quick=True)  # read back, not measured again
    assert again == held


def test_a_study_refuses_a_variant_its_check_rejects_before_any_work(tmp_path):
    robust = Study.find("robust")
    for variant in robust.variants:
        robust.config(variant)  # the study's `check` passes every variant it holds
    folder = tmp_path / "robust-copy"  # its own module name, beside the real study's
    shutil.copytree(robust.folder, folder, ignore=shutil.ignore_patterns("results.jsonl", "__pycache__"))
    (folder / "configs" / "rounds-lie.toml").write_text('[study]\nmode = "rounds"\nattack = "lie"\n')
    s = Study.find(str(folder))
    with pytest.raises(click.BadParameter, match="'rounds-lie'.*attack: kind must be one of none, inflate"):
        s.run(["rounds-honest", "rounds-lie"], [0], tmp_path / "out", device="cpu", quick=True)
    assert not (tmp_path / "out").exists()


def test_the_index_gives_every_study_a_headline_or_says_it_has_no_records():
    for study, (question, headline, link) in zip(all_studies(), index().rows):
        assert question == study.module.QUESTION and f"/{study.name}/README.md" in link
        assert headline == (study.headline() if study.records() else "not measured yet (no records)"), study.name
        assert headline.strip(), study.name


def test_the_pages_and_the_records_agree():
    assert stale_pages(write=False) == [], "run: python -m bench docs"
    assert len((ROOT / "docs" / "results.md").read_text().splitlines()) <= 150
    assert not list((ROOT / "docs").glob("bench-*")), "records live in experiments/<study>/results.jsonl"


def test_the_runner_refuses_an_unknown_study_or_variant_before_any_work(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=ROOT)

    unknown = bench("run", "experiments/nope", "--out", str(tmp_path))
    assert unknown.returncode == 2 and "oneshot" in unknown.stderr
    variant = bench("run", "oneshot", "--variants", "alpha-9", "--quick", "--out", str(tmp_path))
    assert variant.returncode == 2 and "alpha-0.5" in variant.stderr and not any(tmp_path.iterdir())
    listed = bench("list")
    assert listed.returncode == 0 and "oneshot: variants" in listed.stdout


def test_records_are_appended_once_and_tables_print_mean_and_std(tmp_path):
    path = tmp_path / "results.jsonl"
    r = {"variant": "a", "seed": 0, "x": 0.5, "machine": {"cpu": "x"}, "date": "d"}
    assert append_records(path, [r]) == 1
    assert append_records(path, [{**r, "date": "e"}]) == 0  # the same measurement, read back
    assert append_records(path, [{**r, "x": 0.6}]) == 1
    assert [x["x"] for x in read_records(path)] == [0.5, 0.6]
    assert mean_std([0.5, 0.7]) == "60.00 ± 14.14" and mean_std([0.5]) == "50.00" and mean_std([None]) == "-"
    with pytest.raises(ValueError, match="2 cells under 3 columns"):
        Table(["a", "b", "c"], [[1, 2]]).markdown()


def test_oneshot_table_reads_the_first_benchmarks_lines_in_todays_keys():
    oneshot = Study.find("oneshot")
    seconds = {"partition": 0.0, "train_teachers": 60.0, "synthesize": 60.0, "train_student": 60.0}
    v1 = {"variant": "alpha-0.5", "seed": 0, "alpha": 0.5, "fedavg_accuracy": 0.5, "ensemble_accuracy": 0.9,
          "student_accuracy": 0.8, "student_adaptive_accuracy": 0.7,
          "stage_seconds": {**seconds, "train_student_adaptive": 60.0}}
    now = [{"variant": "alpha-0.5", "method": "deepinversion", "alpha": 0.5, "num_nodes": 5, "seed": seed,
            "fedavg_accuracy": 0.5, "ensemble_accuracy": 0.9, "student_accuracy": acc, "student_online_accuracy": acc,
            "stage_seconds": {**seconds, "train_student_online": 60.0}} for seed, acc in ((1, 0.6), (2, 0.7))]
    row = next(r for r in oneshot.table("by-alpha", [v1, *now]).rows if r[2] == "deepinversion")
    assert row[:4] == [0.5, 5, "deepinversion", 3]  # seed 0 from the first benchmark, 1-2 from today's
    assert row[6] == "70.00 ± 10.00" and row[7] == "66.67 ± 5.77" and row[-1] == "4.0"


def test_the_bn_diagnosis_reads_a_finished_run_of_the_rounds_study(tmp_path):
    rounds = Study.find("rounds")
    rounds.run(["aggregate-bn"], [0], tmp_path, device="cpu", quick=True)
    run = tmp_path / "rounds" / "aggregate-bn" / "seed-0" / "lenet5" / "fedavg-ftg"
    diagnosis = subprocess.run([sys.executable, str(rounds.folder / "ftg_bn.py"), "--run", str(run), "--steps", "2"],
                               capture_output=True, text=True, cwd=ROOT)
    assert diagnosis.returncode == 0, diagnosis.stderr[-2000:]
    figures = json.loads(diagnosis.stdout)
    assert set(figures["after_kd"]) == {"eval", "train-restore", "train-update"}
