"""`sal-ray data list|prepare`, driven through `register` on a fresh parser."""

import argparse

import pytest

from sal_ray.data import DATASETS_INFO
from sal_ray.data import cache as data_cache
from sal_ray.cli.data import register

try:
    from data_fixtures import write
except ImportError:  # tests/ as a package
    from tests.data_fixtures import write


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="sal-ray")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_shows_every_dataset_and_presence(tmp_path, capsys):
    _, n = write("semeion", tmp_path)
    rc, out, _ = run(["data", "list", "--root", str(tmp_path)], capsys)
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert list(lines) == list(DATASETS_INFO)
    assert lines["semeion"].split()[1:] == ["10", "1,593", "256", "80/20", "raw", "files"]
    assert lines["cifar10"].split()[1:] == ["10", "60,000", "1024", "official", "missing"]
    assert lines["digits"].endswith("bundled")
    assert out.splitlines()[0].split()[:4] == ["name", "classes", "samples", "input"]


def test_list_names_partial_datasets_and_the_layout(tmp_path, capsys):
    write("usps", tmp_path)
    (tmp_path / "usps" / "usps.bz2").unlink()  # the test file stays, the train file goes
    write("mnist", tmp_path, layout="torchvision")
    write("svhn", tmp_path, layout="torchvision")
    (tmp_path / "train_32x32.mat").unlink()
    rc, out, _ = run(["data", "list", "--root", str(tmp_path)], capsys)
    assert rc == 0
    on_disk = {line.split()[0]: line.split(None, 5)[5] for line in out.splitlines()[1:]}
    assert on_disk["usps"] == "partial: missing usps.bz2"
    assert on_disk["mnist"] == "raw files (torchvision layout)"
    assert on_disk["svhn"] == "partial (torchvision layout): missing train_32x32.mat"
    assert on_disk["cifar10"] == "missing"


def test_prepare_names_the_folder_it_read(tmp_path, capsys):
    _, n = write("usps", tmp_path, layout="torchvision")
    rc, out, err = run(["data", "prepare", "usps", "--root", str(tmp_path), "--no-verify-md5",
                        "--expect", f"usps={n}"], capsys)
    assert rc == 0, err
    assert out.rstrip().endswith(f" s, {tmp_path.resolve()} (torchvision layout)")


def test_prepare_reports_a_wrong_count(tmp_path, capsys):
    _, n = write("semeion", tmp_path)
    rc, out, err = run(["data", "prepare", "semeion", "--root", str(tmp_path),
                        "--no-verify-md5"], capsys)
    assert rc == 1
    assert f"FAILED semeion: dataset 'semeion': the files in {tmp_path.resolve() / 'semeion'} " \
           f"hold {n} samples, but the spec's Table 1 says 1,593" in err
    assert not data_cache.present(tmp_path / "semeion")


def test_prepare_with_expected_count_caches(tmp_path, capsys):
    _, n = write("semeion", tmp_path)
    _, m = write("usps", tmp_path)
    rc, out, err = run(["data", "prepare", "semeion", "usps", "digits", "--root", str(tmp_path),
                        "--no-verify-md5", "--expect", f"semeion={n}", "--expect", f"usps={m}"],
                       capsys)
    assert rc == 0, err
    assert f"ok semeion: {n} samples (train 48, val 12), input 256, 10 classes" in out
    assert "ok usps:" in out and "ok digits: 1,797 samples" in out
    assert data_cache.present(tmp_path / "semeion") and data_cache.present(tmp_path / "usps")
    rc, out, _ = run(["data", "list", "--root", str(tmp_path)], capsys)
    assert "cached" in [l for l in out.splitlines() if l.startswith("semeion")][0]


def test_prepare_missing_data_fails_with_the_directory(tmp_path, capsys):
    rc, out, err = run(["data", "prepare", "mnist", "digits", "--root", str(tmp_path)], capsys)
    assert rc == 1
    assert "ok digits" in out
    assert "FAILED mnist" in err and str(tmp_path.resolve() / "mnist") in err
    assert "1 of 2 failed: mnist" in err


@pytest.mark.parametrize("argv", [["data", "prepare", "nope"],
                                  ["data", "prepare", "mnist", "--expect", "mnist=lots"]])
def test_prepare_rejects_bad_arguments(argv, capsys):
    rc, _, err = run(argv, capsys)
    assert rc == 2 and err.startswith("error:")


def test_data_needs_a_subcommand():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["data"])
