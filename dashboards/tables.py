"""From leaf runs to the paper's tables: cells, seeds, best configurations.

A *cell* is (dataset, column) with column Baseline (bp), SAL-N or MoE-N. Its
runs are the seeds of one configuration. When a sweep tried several
configurations for a cell (an Optuna search over lr, a width grid), the cell
shows the configuration with the best mean final validation accuracy and says
so: a mean over different learning rates would describe no experiment.

Statistics over seeds: mean and sample standard deviation (ddof = 1); one seed
gives no std. Accuracies are shown in percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from . import paper
from .store import NON_PARAM_COLUMNS

# A configuration is every param of a run except these: the cell keys and the
# seed, what changes speed but not results, and facts derived from the rest. A
# denylist, so an option added to the trainer later splits configurations
# without a change here.
NOT_CONFIG = frozenset({
    "dataset", "method", "n_areas", "seed", "device", "resolved_device", "kernel",
    "data_root", "download", "eval_batch_size", "feedback_std",
    "params_active", "params_total", "params_router", "params_fixed",
    "n_train", "n_val", "input_dim", "n_classes"})
# Options the search views consider when the runs do not say what was searched.
SEARCHABLE = ("n_areas", "lr", "lr_sel", "depth", "width", "batch_size", "epochs", "arch",
              "routed", "d_f", "lambda_local", "output_local", "feedback_dist",
              "feedback_scale", "area_grad_scale", "area_init", "init", "moe_balance",
              "activation")
METHOD_ORDER = {"bp": 0, "sal": 1, "moe": 2}


def column_label(method: str, n_areas: int) -> str:
    if method == "bp":
        return "Baseline"
    name = {"sal": "SAL", "moe": "MoE"}.get(method, str(method))
    return f"{name}-{int(n_areas)}"


def column_sort_key(label: str) -> tuple:
    if label == "Baseline":
        return (0, 0, label)
    name, _, n = label.rpartition("-")
    rank = {"SAL": 1, "MoE": 2}.get(name, 3)
    return (rank, int(n) if n.isdigit() else 0, label)


def dataset_sort_key(name: str) -> tuple:
    order = paper.DATASET_ORDER
    return (order.index(name), name) if name in order else (len(order), str(name))


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def seed_stats(values) -> tuple[float, float, int]:
    """(mean, sample std, n) over the finite values; std is nan for n < 2."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(arr)
    mean = float(arr.mean()) if n else float("nan")
    std = float(arr.std(ddof=1)) if n > 1 else float("nan")
    return mean, std, n


def config_params(runs: pd.DataFrame) -> list[str]:
    """The param columns that define a configuration (see NOT_CONFIG)."""
    return [c for c in runs.columns if not c.startswith("metrics.")
            and c not in NON_PARAM_COLUMNS and c not in NOT_CONFIG]


def with_columns(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    runs["column"] = [column_label(m, n) for m, n in zip(runs["method"], runs["n_areas"])]
    present = config_params(runs)
    runs["config"] = [tuple((p, _hashable(row[p])) for p in present)
                      for _, row in runs.iterrows()]
    return runs


def _hashable(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def describe_config(config: tuple, varying: set[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config if k in varying) or "single configuration"


def varying_options(configs) -> set[str]:
    """The options whose value differs between `configs` (tuples of (option, value))."""
    dicts = [dict(c) for c in configs]
    keys = {k for d in dicts for k in d}
    return {k for k in keys if len({str(d.get(k)) for d in dicts}) > 1}


def select_best_configs(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`, the runs of the configuration with the best mean
    final_val_acc. Adds n_configs and chosen (a description of what differed)."""
    if runs.empty:
        return runs.assign(n_configs=[], chosen=[])
    parts = []
    for _, group in runs.groupby(keys, sort=False, dropna=False):
        configs = group.groupby("config", sort=False)
        scores = configs["final_val_acc"].mean()
        best = scores.idxmax() if scores.notna().any() else next(iter(configs.groups))
        varying = varying_options(configs.groups)
        chosen = group[group["config"] == best].copy()
        chosen["n_configs"] = len(configs)
        chosen["chosen"] = describe_config(best, varying)
        parts.append(chosen)
    return pd.concat(parts, ignore_index=True)


def convergence_subset(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per dataset, the Table 2 architecture (mlp, depth 2) where it was run;
    other datasets keep all their runs. Returns the rows and what was dropped."""
    if "depth" not in runs:
        return runs, []
    keep, said = [], []
    for dataset, group in runs.groupby("dataset", sort=False):
        conv = group["depth"].isna() | (group["depth"] == 2)  # unknown depth: keep
        if "arch" in group:
            conv &= group["arch"].fillna("mlp") == "mlp"
        if conv.any() and not conv.all():
            said.append(f"{dataset}: {int((~conv).sum())} run(s) of other architectures "
                        "(depth/width studies) are shown in the figures, not in Tables 2-3")
            keep.append(group[conv])
        else:
            keep.append(group)
    return pd.concat(keep), said


@dataclass
class Cell:
    dataset: str
    column: str
    acc_mean: float          # percent
    acc_std: float
    n: int                   # seeds with a final value
    n_runs: int              # seeds run
    train_loss: float        # mean final train loss
    val_loss: float
    train_loss_std: float
    val_loss_std: float
    n_configs: int
    chosen: str
    run_ids: list[str]
    protocol: str = ""       # protocols.Protocol.name: a cell never pools two

    @property
    def acc_text(self) -> str:
        if self.n == 0:
            return f"n/a (0/{self.n_runs} finished)"
        text = f"{fmt(self.acc_mean)} ± {fmt(self.acc_std)}" if self.n > 1 else \
            f"{fmt(self.acc_mean)} ± —"
        return text + (f" (n={self.n}/{self.n_runs})" if self.n < self.n_runs else "")


def cells(runs: pd.DataFrame) -> list[Cell]:
    """One Cell per (dataset, protocol, column) over the best configuration's seeds
    (runs without a `protocol` column are one protocol)."""
    if runs.empty:
        return []
    if "protocol" not in runs:
        runs = runs.assign(protocol="")
    keys = ["dataset", "protocol", "column"]
    runs = select_best_configs(with_columns(runs), keys)
    out = []
    for (dataset, protocol, column), g in runs.groupby(keys, sort=False):
        acc_mean, acc_std, n = seed_stats(100.0 * g["final_val_acc"])
        tl, tl_std, _ = seed_stats(g["final_train_loss"])
        vl, vl_std, _ = seed_stats(g["final_val_loss"])
        out.append(Cell(dataset, column, acc_mean, acc_std, n, len(g), tl, vl, tl_std, vl_std,
                        int(g["n_configs"].iloc[0]), str(g["chosen"].iloc[0]),
                        list(g["run_id"]), protocol))
    out.sort(key=lambda c: (dataset_sort_key(c.dataset), c.protocol, column_sort_key(c.column)))
    return out


def grid(cell_list: list[Cell]) -> tuple[list[tuple[str, str]], list[str], dict]:
    """Rows ((dataset, protocol) pairs), columns (methods) and the cell map
    {(dataset, protocol, column): Cell} of a table."""
    rows = sorted({(c.dataset, c.protocol) for c in cell_list},
                  key=lambda r: (dataset_sort_key(r[0]), r[1]))
    cols = sorted({c.column for c in cell_list}, key=column_sort_key)
    return rows, cols, {(c.dataset, c.protocol, c.column): c for c in cell_list}


def best_columns(cell_map: dict, row: tuple[str, str], cols: list[str]) -> set[str]:
    """The row's best mean accuracy (ties all marked); published numbers excluded."""
    means = {c: cell_map[(*row, c)].acc_mean for c in cols
             if (*row, c) in cell_map and math.isfinite(cell_map[(*row, c)].acc_mean)}
    if not means:
        return set()
    top = max(means.values())
    return {c for c, m in means.items() if m == top}


def protocol_differences(runs: pd.DataFrame) -> list[str]:
    """How these runs differ from the protocol the published numbers used."""
    out = []
    for key, value in paper.PROTOCOL.items():
        if key not in runs:
            continue
        seen = sorted({v for v in runs[key].dropna()}, key=str)
        if seen and seen != [value]:
            out.append(f"{key} {', '.join(map(str, seen))} (paper {value})")
    if "seed" in runs and len(runs):
        n = runs.groupby(["dataset", "method", "n_areas"])["seed"].nunique().max()
        if n != paper.PROTOCOL_SEEDS:
            out.append(f"up to {n} seed(s) per cell (paper {paper.PROTOCOL_SEEDS})")
    return out


def curve_stats(histories: dict[str, pd.DataFrame], run_ids: list[str], key: str) -> pd.DataFrame:
    """Per epoch: mean, std (ddof 1) and n over the runs that logged `key` there."""
    series = [histories[r][key] for r in run_ids if r in histories and key in histories[r]]
    if not series:
        return pd.DataFrame(columns=["mean", "std", "n"])
    frame = pd.concat(series, axis=1)
    return pd.DataFrame({"mean": frame.mean(axis=1), "std": frame.std(axis=1, ddof=1),
                         "n": frame.notna().sum(axis=1)})


def area_share_matrix(runs: pd.DataFrame) -> np.ndarray | None:
    """layers x areas: mean over runs of the final epoch's share of samples per
    area (`area_share.l{layer}.a{area}`); rows are the routed layers, in order."""
    cols = [c for c in runs.columns if c.startswith("metrics.area_share.l")]
    if not cols:
        return None
    index = {}
    for c in cols:
        layer, area = c[len("metrics.area_share."):].split(".")
        index[c] = (int(layer[1:]), int(area[1:]))
    layers = sorted({l for l, _ in index.values()})
    n_areas = max(a for _, a in index.values()) + 1
    mat = np.full((len(layers), n_areas), np.nan)
    for c, (l, a) in index.items():
        vals = runs[c].dropna()
        if len(vals):
            mat[layers.index(l), a] = vals.mean()
    if np.isnan(mat).all():
        return None
    return mat, layers


def search_groups(runs: pd.DataFrame, min_runs: int = 4):
    """(dataset, method, runs, params) for groups that look like a search: at
    least two options varied over at least `min_runs` finished runs. The options
    are those the sweep tagged as searched (`searched` tag), else SEARCHABLE. A
    grid over n_areas alone is a Table 2 sweep, not a search: no importance plot."""
    if runs.empty:
        return []
    out = []
    for (dataset, method), g in runs.groupby(["dataset", "method"], sort=False):
        g = g[g["final_val_acc"].notna()]
        if len(g) < min_runs:
            continue
        tagged = set()
        if "searched" in g:
            for text in g["searched"].dropna():
                tagged |= {t.strip() for t in str(text).split(",") if t.strip()}
        candidates = [p for p in (sorted(tagged) if tagged else SEARCHABLE) if p in g]
        varying = [p for p in candidates if g[p].notna().all() and g[p].astype(str).nunique() > 1]
        if len(varying) >= 2:
            out.append((dataset, method, g, varying))
    out.sort(key=lambda t: (dataset_sort_key(t[0]), METHOD_ORDER.get(t[1], 9)))
    return out


N_TREES = 16


def param_importances(group: pd.DataFrame, params: list[str]) -> dict[str, float]:
    """fANOVA importances (Optuna's FanovaImportanceEvaluator, 16 trees, seed 0) of
    `params` for final_val_acc, on an in-memory study holding one trial per run."""
    dists = {}
    for p in params:
        col = group[p]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            lo, hi = float(col.min()), float(col.max())
            integer = bool(np.all(np.equal(np.mod(col, 1), 0)))
            if integer:
                dists[p] = IntDistribution(int(lo), int(hi))
            else:
                dists[p] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 20)
        else:
            dists[p] = CategoricalDistribution(sorted({_plain(v) for v in col}, key=str))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in group.iterrows():
        values = {p: (int(row[p]) if isinstance(dists[p], IntDistribution)
                      else float(row[p]) if isinstance(dists[p], FloatDistribution)
                      else _plain(row[p])) for p in params}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists,
                                                  value=float(row["final_val_acc"])))
    # 16 trees, not Optuna's 64: a search on the page has tens of runs, and the
    # forest's decomposition (pure Python) was most of a report's build time
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=N_TREES, seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)


def _plain(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
