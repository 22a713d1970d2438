"""benchmarks/reproduce.py: one script for any dataset, beside its published row.

Bad command lines and absent data stop it with one line and status 2 before any
run (the process pool is replaced by one that fails the test if started); one
real, tiny run goes through the script as a user starts it."""

from __future__ import annotations

import pathlib
import runpy
import subprocess
import sys

import pytest

from sal_ray.paper import published_row

try:
    from data_fixtures import write
except ImportError:  # tests/ as a package
    from tests.data_fixtures import write

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "reproduce.py"


@pytest.fixture
def script(monkeypatch):
    g = runpy.run_path(str(SCRIPT), run_name="reproduce_script")

    class NoPool:
        @staticmethod
        def get_context(*a):
            pytest.fail("the script started runs")
    # run_path hands back a copy of the script's globals: patch the ones main reads
    g["main"].__globals__["mp"] = NoPool
    return g


def run_main(g, argv, capsys):
    rc = g["main"](argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv,message", [
    (["--set", "dataset=semeion"],
     "error: option 'dataset': choose it with --dataset (--dataset semeion), not --set\n"),
    (["--dataset", "usps", "--set-all", "dataset=semeion"],
     "error: option 'dataset': choose it with --dataset (--dataset semeion), not --set-all\n"),
    (["--set-all", "epochs=3"], "error: option 'epochs': choose it with --epochs, not --set-all\n"),
    (["--set", "n_areas=3"], "error: option 'n_areas': choose it with --columns, not --set\n"),
    (["--set-all", "seed=3"], "error: option 'seed': choose it with --seeds, not --set-all\n"),
    (["--dataset", "imagenet"], "error: option '--dataset': unknown dataset 'imagenet'; one of "),
    (["--columns", "SAL-3"], "error: option '--columns': SAL-3; choose from Baseline,SAL-1,"),
    (["--set", "lr_sel=fast"], "error: option 'lr_sel': must be a float"),
    (["--set", "lr_sel"], "error: --set takes OPTION=VALUE; got 'lr_sel'\n"),
    (["--seeds", "0"], "error: options '--seeds', '--epochs' and '--workers' take a positive"),
])
def test_bad_command_lines_stop_before_any_run(script, capsys, argv, message):
    rc, out, err = run_main(script, argv, capsys)
    assert rc == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_data_not_on_disk_is_one_line(script, capsys, tmp_path):
    rc, out, err = run_main(script, ["--dataset", "mnist", "--set-all", f"data_root={tmp_path}"],
                            capsys)
    root = tmp_path.resolve()
    assert rc == 2 and out == ""
    assert err == (f"error: dataset 'mnist' (MNIST) is not on disk and download is off. Data root "
                   f"{root}: `sal-ray data list --root {root}` shows what is there and what is "
                   "missing (docs/data.md).\n")


def test_data_that_fails_its_checks_is_one_line(script, capsys, tmp_path):
    write("semeion", tmp_path)  # small files in the genuine format: not the official MD5
    rc, _, err = run_main(script, ["--dataset", "semeion", "--set-all", f"data_root={tmp_path}",
                                   "--set-all", "download=false"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: dataset 'semeion': ") and " has MD5 " in err


def test_a_cache_that_fails_the_count_is_one_line(script, capsys, tmp_path):
    """A cache the runs would refuse (60 samples, the spec says 1,593) stops the
    script too, not each worker."""
    from sal_ray.data import load
    write("semeion", tmp_path)
    load("semeion", root=str(tmp_path), expected_samples=60, verify_md5=False)
    rc, _, err = run_main(script, ["--dataset", "semeion", "--set-all", f"data_root={tmp_path}"],
                          capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "dataset 'semeion': the cache in" in err and "hold 60 samples" in err
    assert "1,593" in err


def test_every_run_is_on_the_chosen_dataset_under_the_protocol(script):
    import argparse
    a = argparse.Namespace(dataset="semeion", seeds=2, epochs=25, workers=1, set=["lr_sel=1e-3"],
                           set_all=["init=torch_linear"],
                           columns=["Baseline", "SAL-1", "SAL-2", "SAL-4", "SAL-8", "SAL-16"])
    jobs, sal_over, all_over = script["plan"](a)
    assert len(jobs) == 12 and sal_over == {"lr_sel": "1e-3"}
    assert all_over == {"init": "torch_linear"}
    for column, flat in jobs:
        assert flat["dataset"] == "semeion"
        assert (flat["lr"], flat["batch_size"], flat["width"], flat["depth"], flat["epochs"]) == \
            (1e-4, 16, 256, 2, 25)
        assert flat["init"] == "torch_linear"
        assert ("lr_sel" in flat) == (column != "Baseline")
        assert flat["n_areas"] == (1 if column == "Baseline" else int(column[4:]))


def test_table_shows_the_datasets_published_row(script):
    results = [("Baseline", "completed", 0.5, 1.0, 1.1), ("SAL-4", "completed", 0.6, 0.9, 1.0),
               ("SAL-4", "completed", 0.8, 0.7, 0.8), ("SAL-4", "diverged", 0.0, 9.0, 9.0)]
    lines = script["table"]("semeion", results, ["Baseline", "SAL-4"], published_row("semeion"))
    assert lines[0].startswith("published: the paper's semeion row")
    base, sal4 = lines[2], lines[3]
    assert base.split() == ["Baseline", "50.00", "±", "—", "35.16", "±", "2.72",
                            "1.00", "/", "1.10", "1.86", "/", "1.89", "0"]
    assert sal4.split() == ["SAL-4", "70.00", "±", "14.14", "65.20", "±", "4.43",
                            "0.80", "/", "0.90", "1.59", "/", "1.62", "1"]


def test_table_says_when_there_is_no_published_row(script):
    lines = script["table"]("mine", [("SAL-1", "completed", 0.5, 1.0, 1.1)], ["SAL-1"], None)
    assert lines[0] == "published: the paper has no row for mine"
    assert lines[2].split() == ["SAL-1", "50.00", "±", "—", "—", "1.00", "/", "1.10", "—", "0"]


def test_a_real_run_names_its_dataset_and_row(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "1", "--epochs", "1", "--workers", "1",
         "--columns", "Baseline,SAL-2", "--set-all", "width=16"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Dataset digits (Digits (scikit-learn)), Convergence protocol: "
                               "1 seeds x 1 epochs; SAL overrides -; all-run overrides "
                               "{'width': '16'};")
    assert lines[1].startswith("published: the paper's digits row")
    assert [line.split()[0] for line in lines[3:]] == ["Baseline", "SAL-2"]
    assert "38.53 ± 5.78" in lines[3] and "35.11 ± 8.05" in lines[4]
    assert lines[4].split()[-1] == "0"  # nothing diverged


def test_main_on_another_dataset_names_it_and_its_row(script, capsys):
    """The whole of main on USPS, its runs answered by a stand-in pool (no USPS on
    disk here; the runs themselves are covered above on Digits): the header names
    USPS, the published row is USPS's, and every run asked for is on USPS."""
    asked = []

    class Pool:
        def __init__(self, n):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, jobs):
            asked.extend(jobs)
            return [(column, "completed", 0.5 + 0.1 * flat["seed"], 1.0, 1.1)
                    for column, flat in jobs]

    class Context:
        @staticmethod
        def get_context(kind):
            assert kind == "spawn"
            return type("Ctx", (), {"Pool": Pool})

    script["main"].__globals__.update(mp=Context, check_data=lambda jobs: None)
    rc, out, err = run_main(script, ["--dataset", "usps", "--seeds", "2", "--epochs", "1",
                                     "--columns", "Baseline,SAL-4"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Dataset usps (USPS")
    assert lines[1].startswith("published: the paper's usps row")
    assert lines[3].split()[:7] == ["Baseline", "55.00", "±", "7.07", "81.74", "±", "1.12"]
    assert lines[4].split()[:7] == ["SAL-4", "55.00", "±", "7.07", "87.90", "±", "0.56"]
    assert {flat["dataset"] for _, flat in asked} == {"usps"} and len(asked) == 4
