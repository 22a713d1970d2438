"""sal_ray/paper.py: the paper's Tables 2 and 3, complete and as published.

The transcription check reads the markdown copy of the tables that sessions
of this project keep beside the repository (``../shared/PAPER_TABLES.md``, or
the file named by $SAL_RAY_PAPER_TABLES); it skips where that file is absent
(CI). The hard-coded cells below are checked everywhere.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dashboards import paper as dash_paper
from sal_ray import paper
from sal_ray.config import DATASETS

TABLES = {"accuracy": paper.ACCURACY, "train_loss": paper.TRAIN_LOSS, "val_loss": paper.VAL_LOSS}


def test_every_dataset_column_and_table_is_there():
    assert set(paper.DATASET_ORDER) == set(DATASETS) and len(paper.DATASET_ORDER) == 10
    assert paper.COLUMNS == ("Baseline", "SAL-1", "SAL-2", "SAL-4", "SAL-8", "SAL-16")
    for name, table in TABLES.items():
        assert set(table) == set(DATASETS), name
        for ds, row in table.items():
            assert tuple(row) == paper.COLUMNS, (name, ds)
            for col, cell in row.items():
                mean, std = cell
                assert isinstance(mean, float) and isinstance(std, float), (name, ds, col)
                assert std >= 0 and mean > 0, (name, ds, col)
                if name == "accuracy":
                    assert 0 < mean < 100, (ds, col)


def test_published_row():
    row = paper.published_row("usps")
    assert row.dataset == "usps"
    assert row.accuracy["SAL-16"] == (89.36, 0.73)
    assert row.train_loss["Baseline"] == (0.71, 0.04)
    assert row.val_loss["SAL-2"] == (0.53, 0.01)
    assert paper.published_row("imagenet") is None
    assert paper.published_row("") is None


@pytest.mark.parametrize("table,dataset,column,cell", [
    ("accuracy", "digits", "SAL-16", (71.63, 5.75)),
    ("accuracy", "cifar10", "SAL-1", (33.90, 0.26)),
    ("accuracy", "pcam", "Baseline", (69.18, 0.27)),
    ("accuracy", "semeion", "SAL-16", (72.03, 3.97)),
    ("train_loss", "stl10", "SAL-16", (0.56, 0.02)),
    ("train_loss", "digits", "Baseline", (1.81, 0.14)),
    ("val_loss", "pcam", "SAL-16", (1.26, 0.08)),
    ("val_loss", "fer2013", "SAL-8", (1.56, 0.01)),
])
def test_cells_as_published(table, dataset, column, cell):
    assert TABLES[table][dataset][column] == cell


def _tables_file() -> Path:
    named = os.environ.get("SAL_RAY_PAPER_TABLES")
    if named:
        return Path(named)
    return Path(__file__).resolve().parents[1].parent / "shared" / "PAPER_TABLES.md"


def _parse_markdown(text: str) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """{table: {dataset: {column: (mean, std)}}} from the '## Table 2/3a/3b' sections."""
    keys = {"Table 2": "accuracy", "Table 3a": "train_loss", "Table 3b": "val_loss"}
    out = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        key = keys.get(section.split(":", 1)[0].strip())
        if key is None:
            continue
        lines = [line for line in section.splitlines() if line.startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = {}
        for line in lines[2:]:  # after the header and the |---| rule
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = {col: tuple(float(v) for v in cell.split("±"))
                              for col, cell in zip(header[1:], cells[1:], strict=True)}
        out[key] = rows
    return out


def test_transcription_matches_the_markdown_tables():
    path = _tables_file()
    if not path.is_file():
        pytest.skip(f"{path} is not here (set $SAL_RAY_PAPER_TABLES to check against it)")
    published = _parse_markdown(path.read_text())
    assert set(published) == set(TABLES)
    for name, table in TABLES.items():
        assert published[name] == table, name  # every cell, mean and std


def test_dashboards_read_the_same_numbers():
    assert dash_paper.ACCURACY == paper.ACCURACY
    assert dash_paper.DATASET_ORDER == paper.DATASET_ORDER
    assert (dash_paper.PROTOCOL, dash_paper.PROTOCOL_SEEDS) == (paper.PROTOCOL, 5)
    assert set(dash_paper.LOSSES) == set(DATASETS)
    assert dash_paper.LOSSES["digits"]["SAL-16"] == (1.57, 1.63)
    assert dash_paper.LOSSES["cifar10"]["Baseline"] == (1.94, 1.96)


def test_dashboards_get_the_numbers_without_torch():
    """dashboards/ never loads torch or the trainer, sal_ray.paper's package
    __init__ included."""
    code = ("import sys\n"
            "import dashboards.paper as p\n"
            "assert p.ACCURACY['usps']['SAL-16'] == (89.36, 0.73), p.ACCURACY['usps']\n"
            "assert p.LOSSES['pcam']['SAL-16'] == (0.10, 1.26), p.LOSSES['pcam']\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch'\n"
            "       or m in ('sal_ray.trainer', 'sal_ray.models', 'sal_ray.data')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])


def test_paper_module_imports_only_the_standard_library():
    tree = ast.parse(Path(paper.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots
