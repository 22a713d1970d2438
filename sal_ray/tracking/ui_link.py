"""A link into the MLflow UI that opens a sweep's runs on the comparison.

MLflow 3.17's experiment page restores a whole view from the URL parameter
`viewStateShareKey=<key>`: the view is the JSON value of the experiment tag
`mlflow.sharedViewState.<key>` (what the UI's own "Share" button writes). It
holds the search facets (`searchFilter`, `orderByKey`, `orderByAsc`, ...) and
the UI state (`selectedColumns` as canonical keys like "params.`lr`",
`groupBy`, `groupsExpanded`, ...). The UI ignores the shared view when any
facet is also in the URL, so the link carries the key only, plus
`workflowType=machine_learning` (3.17 opens experiments in its GenAI view
otherwise).

    key = share_view(uri, experiment_id, view_state(sweep, columns, group_by="method"))
    experiment_link(base_url, experiment_id, key)
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse

from .store import client, is_server, redact, with_retry

SHARE_TAG_PREFIX = "mlflow.sharedViewState."
DEFAULT_UI = "http://127.0.0.1:5000"   # where `sal-ray ui` / `mlflow ui` serve by default
OPTIONS = ("n_areas", "lr", "depth")   # always shown, searched or not


def column(kind: str, key: str) -> str:
    """MLflow's canonical column key: `params.`lr``."""
    return f"{kind}.`{key}`"


def sweep_columns(searched: list[str], objective: str, datasets: int = 1) -> list[str]:
    """The comparison's columns: status, method, (dataset), the searched options and
    n_areas, lr, depth, the objective (mean over seeds) and this seed's value, cost."""
    cols = [column("tags", "status"), column("params", "method")]
    if datasets > 1:
        cols.append(column("params", "dataset"))
    for name in dict.fromkeys([*OPTIONS, *searched]):
        cols.append(column("params", name))
    cols += [column("metrics", f"trial_objective_{objective}"),
             column("metrics", f"final_{objective}"), column("metrics", "cost_wall_s")]
    return cols


def view_state(sweep: str, columns: list[str], objective: str, ascending: bool,
               group_by: str | None = "method", groups: list[str] = ()) -> dict:
    """The shared view: the sweep's trial runs (its parent run left out), the best
    first, `columns` shown, grouped by the param `group_by` with `groups` expanded."""
    state = {
        # the seed runs carry `trial`; the parent does not
        "searchFilter": f"tags.sweep = '{sweep}' and tags.trial != ''",
        "orderByKey": column("metrics", f"trial_objective_{objective}"),
        "orderByAsc": ascending, "startTime": "ALL", "lifecycleFilter": "Active",
        "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL",
    }
    if group_by:
        state["groupBy"] = {"aggregateFunction": "average",
                            "groupByKeys": [{"mode": "param", "groupByData": group_by}]}
        state["groupsExpanded"] = {f"param.{group_by}.{g}": True for g in groups}
    return state


def share_key(experiment_id: str, sweep: str) -> str:
    """One key per sweep: a resumed sweep rewrites the same view."""
    return "sal-ray-" + hashlib.sha1(f"{experiment_id}/{sweep}".encode()).hexdigest()[:16]


def share_view(uri: str, experiment_id: str, sweep: str, state: dict) -> str:
    """Store `state` as the experiment's shared view for `sweep`; returns its key."""
    key = share_key(experiment_id, sweep)
    with_retry(client(uri).set_experiment_tag, experiment_id, SHARE_TAG_PREFIX + key,
               json.dumps(state, separators=(",", ":")))
    return key


def ui_base(uri: str) -> str:
    """The MLflow UI's address for a store: a server serves its own UI (the link
    never carries its credentials); a file or database store is served by
    `sal-ray ui` on DEFAULT_UI."""
    if not is_server(uri):
        return DEFAULT_UI
    parts = urllib.parse.urlsplit(redact(uri))
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def experiment_link(base: str, experiment_id: str, key: str | None = None) -> str:
    query = {"workflowType": "machine_learning"}
    if key:
        query = {"viewStateShareKey": key, **query}
    return f"{base}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query)}"


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
