"""A trial's MLflow runs, one per seed: the sink that opens each (found again by
its key after a restart), what a completed seed leaves in the trial folder, and
the trial's summary on its runs (mean ± std over seeds, tags, the weights).
Shared by the trial's three ways to train (`trial`: seeds in turn or on workers;
`trial_pack`: the seeds as one pack; `trial_configs`: configurations too)."""

from __future__ import annotations

import json
import math
import socket
import tempfile

import ray

from .. import checkpoint
from ..distributed import gather_checkpoint
from ..tracking import store
from ..tracking.sink import MLflowSink, default_run_name
from ..tracking.weights import checkpoint_reference, reference_tags, uploads
from ..tracking.writes import metric_list
from .costs import Costs
from .trial_state import TrialContext, TrialFolder


def penalty(mode: str) -> float:
    """The objective value of a trial that did not complete: the worst there is."""
    return -math.inf if mode == "max" else math.inf


def seed_sink(ctx: TrialContext, folder: TrialFolder, trial_id: str, study: str,
              cfg_flat: dict, cfg_key: str, index: int, key: str, fallback: str,
              number: str | None = None) -> MLflowSink:
    """The MLflow sink of one seed's run (taken up again by `key` after a restart)."""
    tags = {"sweep": ctx.sweep, "trial": trial_id, "config": cfg_key, "seed_index": index,
            "seeds": ctx.seeds, "searched": ",".join(ctx.searched[study]),
            # where it ran: on a cluster, which node's disk, GPU and log to look at
            "ray_node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    if number is not None:
        tags["trial_number"] = number
    if fallback:
        tags["checkpoint_fallback"] = fallback
    return MLflowSink(ctx.tracking_uri, ctx.experiment_id, parent_run_id=ctx.parent_run_id,
                      run_name=default_run_name(cfg_flat, ctx.searched[study], number),
                      tags=tags, flush_every_s=ctx.flush_every_s, key=key, outbox=folder.outbox,
                      fail_fast=True, store_env=ctx.store_env,
                      system_metrics_s=ctx.system_metrics_s,
                      # the last seed's end goes with the trial's summary, in one write
                      hold_end=index == ctx.seeds - 1 and ctx.workers == 1)


def keep_seed(ctx: TrialContext, folder: TrialFolder, result, seed: int, costs: Costs,
              name: str | None = None) -> None:
    """A completed seed's final metrics and weights go into the trial folder (its
    weights file `name`d, where the seed alone does not name it)."""
    weights = None
    path = getattr(result, "checkpoint_path", None)
    if ctx.log_model != "none" and result.net is None and path and \
            not uploads(path, ctx.log_model_max_bytes):
        weights = path  # larger than log_model_max_bytes: referenced where Ray keeps it
    elif ctx.log_model != "none":
        weights = result.net.state_dict() if result.net is not None else \
            checkpoint_weights(path)
    with costs.timed("seed_done"):  # the weights saved for the end
        folder.seed_done({**result.counts, **result.final, "seed": seed}, weights, name)


def mark_trial(folder: TrialFolder, keys: list[str], status: str, deliver: bool = True) -> None:
    """Tag every seed run of the trial with how the trial ended (`trial_status`): a
    seed that completed in a trial whose next seed diverged reads as such."""
    for key in keys:
        if folder.outbox.knows(key):
            folder.outbox.tags(key, {"trial_status": status})
    if deliver:
        folder.outbox.deliver(force=True)


def checkpoint_weights(folder: str | None):
    """The net's state dict from a multi-worker run's last checkpoint (core format;
    a layer-parallel one is gathered from its stage files), read without running
    code (sal_ray.checkpoint)."""
    if not folder:
        return None
    state = checkpoint.read(folder)
    if state is None:
        with tempfile.TemporaryDirectory() as tmp:
            gather_checkpoint(folder, tmp)
            state = checkpoint.read(tmp)
    return state["net"]


def log_trial_summary(ctx: TrialContext, folder: TrialFolder, keys: list[str], final: dict,
                      common: dict, weights: list | None = None) -> None:
    """Every seed run gets its trial's mean ± std (`trial_*`); the model weights go to
    MLflow when they are the best of their (dataset, method) so far, or always.
    All through the trial's outbox: a store that is away gets them later.
    `weights`: the seeds' saved weights (default: the trial folder's, in order)."""
    weights = folder.weights if weights is None else weights
    m0 = ctx.metrics[0]
    trial_metrics = {f"trial_{k}": v for k, v in final.items() if k.startswith("final_")}
    trial_metrics[f"trial_objective_{m0}"] = final[f"mean_{m0}"]
    for key in keys:
        folder.outbox.metrics(key, metric_list(trial_metrics, 0))
    mark_trial(folder, keys, "completed", deliver=False)
    if not weights:
        return
    if ctx.log_model == "best":
        op = ">" if ctx.modes[0] == "max" else "<"
        try:
            better = store.with_retry(
                store.client(ctx.tracking_uri).search_runs, [ctx.experiment_id],
                filter_string=(f"tags.sweep = '{ctx.sweep}' and tags.dataset = "
                               f"'{common['dataset']}' and tags.method = '{common['method']}' "
                               f"and metrics.trial_objective_{m0} {op} {final[f'mean_{m0}']!r}"),
                max_results=1)
        except Exception:  # noqa: BLE001 - store away: keep the weights, they may be the best
            better = []
        if better:
            return
    for key, rel in zip(keys, weights):
        path = rel["ref"] if isinstance(rel, dict) else str(folder.work / rel)
        if uploads(path, ctx.log_model_max_bytes):
            folder.outbox.artifact(key, path, "model")
            folder.outbox.tags(key, {"model_logged": "true"})
        else:  # past log_model_max_bytes: where the weights are, their size and hash
            ref = checkpoint_reference(path)
            folder.outbox.tags(key, reference_tags(ref))
            folder.outbox.artifact_text(key, json.dumps(ref, indent=1), "model/reference.json")
