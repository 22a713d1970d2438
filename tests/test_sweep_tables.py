"""The sweep's console tables (SweepResults.table and .grid): a std of one seed is
"—", never "± 0.00", and a protocol table's columns name the swept option."""

from __future__ import annotations

import pytest

pytest.importorskip("pandas")
pytest.importorskip("mlflow")

import pandas as pd  # noqa: E402

from sal_ray.sweep.plan import plan  # noqa: E402
from sal_ray.sweep.results import SweepResults, column_label, spread  # noqa: E402


def results(seeds: int, std: float) -> SweepResults:
    p = plan(["digits"], ["sal", "bp"], {"depth": [4, 16]}, seeds=seeds, data="skip",
             fixed={"epochs": 1}, name="tables")
    rows = [{"trial_id": f"t{i}", "dataset": "digits", "method": m, "depth": d,
             "status": "completed", "mean_val_acc": 0.9 + i / 100,
             **{f"final_{k}_{s}": (std if s == "std" else 0.9 + i / 100)
                for k in ("val_acc", "train_loss", "val_loss") for s in ("mean", "std")}}
            for i, (m, d) in enumerate([("sal", 4), ("sal", 16), ("bp", 4), ("bp", 16)])]
    df = pd.DataFrame(rows)
    best = {("digits", m): {**df[df.method == m].iloc[-1].to_dict(),
                            "params": {"depth": 16}} for m in ("sal", "bp")}
    return SweepResults("tables", p, df, best, {}, {}, "sqlite:///x.db", "e", "1", "p", 0.0)


def test_one_seed_has_no_std_and_columns_name_the_swept_option():
    res = results(seeds=1, std=0.0)
    table, grid = res.table(), res.grid(("method", "depth"))
    assert "± 0.00" not in table + grid and "0.930 ± —" in table
    assert "93.00 ± —" in grid  # bp depth=16 in %
    header = grid.splitlines()[1].split()
    assert header == ["dataset", "sal", "depth=4", "sal", "depth=16", "bp", "depth=4",
                      "bp", "depth=16"]
    assert "sal-4" not in grid


def test_several_seeds_show_their_std():
    res = results(seeds=3, std=0.012)
    assert "± 1.20" in res.grid(("method", "depth")) and "± 0.012" in res.table()
    assert spread(float("nan"), 3) == "—" and spread(0.0, 2) == "0.00"
    assert column_label(("n_areas", "method"), (4, "moe")) == "n_areas=4 moe"
