"""One training run, end to end: build it, step it, evaluate it, report it.

    config -> data -> net -> rule -> fit() -> callbacks (console, MLflow, Tune)

The core never imports the orchestration layers: they plug in as `Callback`s, and a
multi-worker layout (`sal_ray.distributed`) as a `Layout` passed to `build` and `fit`:
one epoch loop and one fit loop serve every layout. Everything that can be wrong with
the input is checked in `build()`, before any training; a run writes an atomic
checkpoint after every epoch when given a folder, so a failure mid-run loses nothing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from . import budget, checkpoint
from . import data as datasets
from .checkpoint import CHECKPOINT_NAME  # noqa: F401 - a public name of sal_ray.trainer
from .config import Config, ConfigError, validate
from .data.batches import batch_indices, epoch_order, gather_rows
from .models import Architecture, Net, ParamCounts, build_net, param_counts
from .rules import autocast, full_precision, make_optimizer, make_rule  # the rules' parts of a run

# A non-finite loss is looked for this often inside an epoch (one host sync each).
DIVERGENCE_CHECK_STEPS = 256


class Callback:
    """Hooks the trainer calls; override any. Metrics are plain floats."""

    def on_start(self, run: "Run") -> None: ...
    def on_epoch(self, metrics: dict[str, float]) -> None: ...
    def on_end(self, result: "RunResult") -> None: ...


@dataclass
class Run:
    """Everything a built run holds; `train_step` and `evaluate` act on it."""
    cfg: Config
    net: Net
    optimizer: torch.optim.Optimizer
    step: Callable  # (net, x, y) -> (loss, logits, areas)
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    counts: ParamCounts
    device: torch.device
    history: list = field(default_factory=list)  # epochs done, from a checkpoint resumed

    @property
    def routed_layers(self) -> list[int]:
        return [i for i, s in enumerate(self.net.arch.layers) if s.n_areas > 1]

    def params(self) -> dict[str, Any]:
        """What a tracker records: every option plus derived facts."""
        out = self.cfg.to_flat()
        out.update(self.counts.as_dict())
        out.update(n_train=len(self.y_train), n_val=len(self.y_val),
                   input_dim=self.net.arch.layers[0].d_in, n_classes=self.net.arch.n_classes,
                   resolved_device=str(self.device),
                   feedback_std=("feedback_scale/sqrt(d_out)" if self.cfg.model.method == "sal"
                                 else "n/a"))
        return out


@dataclass
class RunResult:
    status: str                      # completed | diverged | stopped
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    net: Net | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


class Layout:
    """How a run is spread over workers. This base is one process, the default;
    a multi-worker layout (`sal_ray.distributed`) overrides what differs and the
    loop stays the same: which net and rule a worker builds, which part of each
    global batch it takes, the step, the sum over workers, evaluation,
    checkpoints, and what it adds to the params and metrics."""

    is_main = True  # callbacks run on the main worker only

    def place(self, cfg: Config) -> Config:
        """The configuration as this worker runs it (e.g. on its own device)."""
        return cfg

    def check(self, cfg: Config) -> None:
        """Refuse, before any work, a configuration this layout cannot run."""

    def make_net(self, cfg: Config, arch: Architecture) -> torch.nn.Module:
        return build_net(cfg, arch.layers[0].d_in, arch.n_classes)

    def make_rule(self, cfg: Config) -> Callable:
        return make_rule(cfg)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The part of a split's inputs this worker keeps."""
        return x

    def take(self, run: Run, idx_B: torch.Tensor):
        """(x, y): this worker's part of the global batch `idx_B`."""
        return gather_rows(run.x_train, run.y_train, idx_B)

    def step(self, run: Run, x_BI, y_B, batch_n: int):
        """(loss, logits, areas) of one step on (x, y), part of a global batch of
        `batch_n`; loss and logits are None on a worker that holds no output."""
        return train_step(run, x_BI, y_B)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over workers, in place."""
        return t

    def evaluate(self, run: Run, x, y) -> tuple[float, float]:
        return evaluate(run, x, y)

    def resume(self, run: Run, folder: str | None) -> tuple[int, list]:
        return load_checkpoint(run, folder) if folder else (0, [])

    def save(self, run: Run, folder: str, epoch: int, history: list) -> str | None:
        """Checkpoint the epoch; the folder this worker wrote (None if it wrote none)."""
        save_checkpoint(run, folder, epoch, history)
        return folder

    def params(self, run: Run) -> dict[str, Any]:
        """What this layout adds to the run's params (`Run.params`)."""
        return {}

    def epoch_fields(self) -> dict[str, float]:
        """What this layout adds to every epoch's metrics."""
        return {}


ONE_PROCESS = Layout()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} was asked for but torch sees no CUDA device; "
                          "use cpu or auto")
    return device


def build(cfg: Config, layout: Layout | None = None) -> Run:
    """Validate, load data, build the net and optimizer. All input errors surface
    here. `layout` (default: one process) places the run on its worker, refuses what
    it cannot run, and says which net and rule this worker builds (the whole net,
    or a layer layout's stage) and whether it keeps the inputs."""
    layout = layout or ONE_PROCESS
    cfg = layout.place(cfg)
    validate(cfg)
    layout.check(cfg)
    device = resolve_device(cfg.run.device)
    d = cfg.data
    splits = datasets.load_shared(d.dataset, d.data_root, d.download).head(d.max_samples)
    validate(cfg, n_classes=splits.n_classes)
    dtype = getattr(torch, cfg.run.dtype)
    arch = Architecture.from_config(cfg, splits.input_dim, splits.n_classes)
    budget.check(cfg, arch, layout, splits.n_samples, device)  # before the net is allocated
    net = layout.make_net(cfg, arch).to(device=device, dtype=dtype)
    x_train, x_val = (layout.inputs(x).to(dtype).to(device)
                      for x in (splits.x_train, splits.x_val))
    return Run(cfg, net, make_optimizer(net, cfg), layout.make_rule(cfg), x_train,
               splits.y_train.to(device), x_val, splits.y_val.to(device),
               counts=param_counts(arch, cfg.model.method), device=device)


def train_step(run: Run, x_BI, y_B):
    """One batch: the method's rule fills .grad, SGD applies it."""
    loss, logits, areas = run.step(run.net, x_BI, y_B)
    run.optimizer.step()
    return loss, logits, areas


@torch.no_grad()
def evaluate(run: Run, x, y) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in large batches."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.long, device=run.device)
    for i in range(0, len(y), run.cfg.run.eval_batch_size):
        xb, yb = x[i:i + run.cfg.run.eval_batch_size], y[i:i + run.cfg.run.eval_batch_size]
        with autocast(run.cfg, run.device.type):
            logits, _ = run.net(xb)
        logits = full_precision(logits)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(1) == yb).sum()
    n = max(len(y), 1)
    return loss_sum.item() / n, correct.item() / n


def train_epoch(run: Run, epoch: int, layout: Layout = ONE_PROCESS) -> dict[str, Any]:
    """One pass over the training split in the global batches of `epoch_order`;
    `layout` says which part of each this worker takes. The sums stay on the
    device (float64: exact for the counts) until the epoch's one all-reduce."""
    dev = run.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.float64, device=dev)
    usage = {i: torch.zeros(run.net.arch.layers[i].n_areas, dtype=torch.float64, device=dev)
             for i in run.routed_layers}
    order_N = epoch_order(run.cfg.run.seed, epoch, len(run.y_train), dev)
    for step, idx_B in enumerate(batch_indices(order_N, run.cfg.optim.batch_size)):
        x, y = layout.take(run, idx_B)
        loss, logits, areas = layout.step(run, x, y, len(idx_B))
        if loss is not None:
            loss_sum += loss.double() * len(y)
            correct += (logits.argmax(1) == y).sum()
        for i, counts in usage.items():  # a layer another worker holds has no areas here
            if areas[i] is not None:
                counts.index_add_(0, areas[i], torch.ones_like(areas[i], dtype=torch.float64))
        # every worker must take the same branch, so decide on the global sum
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 and \
                not torch.isfinite(layout.all_sum(loss_sum.clone())):
            return {"finite": False}
    return epoch_totals(loss_sum, correct, usage, len(run.y_train), layout)


def epoch_totals(loss_sum, correct, usage: dict, n: int, layout: Layout) -> dict[str, Any]:
    """The epoch's train loss, accuracy and area usage, summed over workers (one
    all-reduce, one host sync)."""
    totals = layout.all_sum(torch.cat([loss_sum.view(1), correct.view(1), *usage.values()]))
    totals = totals.tolist()
    train_loss, per_layer, at = totals[0] / n, {}, 2
    for i, counts in usage.items():
        per_layer[i] = [int(v) for v in totals[at:at + counts.numel()]]
        at += counts.numel()
    return {"finite": math.isfinite(train_loss), "train_loss": train_loss,
            "train_acc": totals[1] / n, "usage": per_layer}


def usage_metrics(usage: dict[int, list[int]]) -> dict[str, float]:
    """Share of samples per area and the number of areas used, per routed layer."""
    out = {}
    for layer, counts in usage.items():
        total = max(sum(counts), 1)
        for k, c in enumerate(counts):
            out[f"area_share.l{layer}.a{k}"] = c / total
        out[f"areas_used.l{layer}"] = float(sum(c > 0 for c in counts))
    return out


def save_checkpoint(run: Run, folder: str, epoch: int, history: list) -> str:
    """The core checkpoint (`sal_ray.checkpoint`): atomic, plain tensors and values."""
    return checkpoint.save(folder, epoch=epoch, history=history, config=run.cfg.to_flat(),
                           net=run.net.state_dict(), optimizer=run.optimizer.state_dict(),
                           rng=checkpoint.rng_state(run.device))


def load_checkpoint(run: Run, folder: str) -> tuple[int, list]:
    """Restore a run from `folder`: (epochs done, history), (0, []) if none. Another
    configuration's is refused (ConfigError); an unreadable one raises CheckpointError."""
    if (state := checkpoint.read(folder, map_location=run.device)) is None:
        return 0, []
    checkpoint.check_config(state["config"], run.cfg, folder)
    run.net.load_state_dict(state["net"])
    run.optimizer.load_state_dict(state["optimizer"])
    checkpoint.restore_rng(state.get("rng"), run.device)
    return state["epoch"], state["history"]


def divergence(cfg: Config, epoch: int, split: str, loss: float) -> str:
    """Why a run stops at this mean `split` loss, or "" (`sal_ray.pack`: per member)."""
    lr = f"; stopped (lr={cfg.optim.lr:g})" if split == "training" else ""
    if not math.isfinite(loss):
        return f"{split} loss became non-finite in epoch {epoch}{lr}"
    if loss > cfg.run.diverge_loss:
        return (f"{split} loss {loss:.4g} exploded past {cfg.run.diverge_loss:g} "
                f"(diverge_loss) in epoch {epoch}{lr or '; stopped'}")
    return ""


def epoch_metrics(run: Run, epoch: int, wall0: float, layout: Layout = ONE_PROCESS
                  ) -> tuple[dict[str, float] | None, str]:
    """Train one epoch and evaluate it: (metrics, ""), or (None, why) when a loss
    diverged (`divergence`: the same test for every method)."""
    t0 = time.perf_counter()
    stats = train_epoch(run, epoch, layout)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    train_time = time.perf_counter() - t0
    why = divergence(run.cfg, epoch, "training", stats.get("train_loss", math.nan))
    if not why:
        val_loss, val_acc = layout.evaluate(run, run.x_val, run.y_val)
        why = divergence(run.cfg, epoch, "validation", val_loss)
    if why:  # diverged in training or validation: no metrics for this epoch
        return None, why
    return {"epoch": epoch, "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"], "val_loss": val_loss, "val_acc": val_acc,
            "samples_per_s": len(run.y_train) / train_time, "epoch_time_s": train_time,
            "wall_time_s": time.perf_counter() - wall0, **usage_metrics(stats["usage"]),
            **layout.epoch_fields()}, ""


def check_folder(checkpoint_dir: str) -> None:
    """An unusable checkpoint folder is bad input: refuse it before any epoch."""
    try:
        os.makedirs(checkpoint_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError("checkpoint_dir", f"cannot use {checkpoint_dir} for "
                          f"checkpoints: {e.strerror or e}") from None
    if not os.access(checkpoint_dir, os.W_OK):
        raise ConfigError("checkpoint_dir", f"{checkpoint_dir} is not writable")


def fit(cfg: Config, callbacks: Sequence[Callback] = (), checkpoint_dir: str | None = None,
        run: Run | None = None, checkpoint_every: int = 1, *, layout: Layout | None = None,
        resume_dir: str | None = None, save_due: Callable[[int], bool] | None = None,
        on_epoch_end: Callable[[dict, str | None], None] | None = None) -> RunResult:
    """Train `cfg` to the end (or divergence); report after every epoch.

    With `checkpoint_dir`, an existing checkpoint there (or in `resume_dir`, if
    given) is resumed from and a new one written after the last epoch and every
    `checkpoint_every` epochs, or when `save_due(epoch)` says so (a sweep's trial
    saves by the clock), before the callbacks hear of that epoch (a callback may ship
    the folder elsewhere). `layout`: one process (default) or a multi-worker layout,
    on every worker; callbacks run on its main worker only.
    `on_epoch_end(metrics with the parameter counts, folder)` runs on every worker
    after each epoch, `folder` being what this worker checkpointed (None if
    nothing): how the Ray wrapper hands each worker's checkpoint to Ray.
    """
    layout = layout or ONE_PROCESS
    if checkpoint_dir:
        check_folder(checkpoint_dir)
    run = run or build(cfg, layout)
    done, history = layout.resume(run, resume_dir or checkpoint_dir)
    if done > cfg.optim.epochs:
        raise ConfigError("epochs", f"the checkpoint in {resume_dir or checkpoint_dir} has "
                          f"{done} epochs done, more than the {cfg.optim.epochs} asked for: "
                          f"ask for at least {done}, or start in another folder")
    run.history = list(history)
    callbacks = callbacks if layout.is_main else ()
    for cb in callbacks:
        cb.on_start(run)
    result = RunResult("completed", {**run.params(), **layout.params(run)}, history,
                       counts=run.counts.as_dict(), net=run.net)
    wall0 = time.perf_counter() - (history[-1]["wall_time_s"] if history else 0.0)
    last = cfg.optim.epochs
    for epoch in range(done + 1, last + 1):
        metrics, why = epoch_metrics(run, epoch, wall0, layout)
        if metrics is None:
            result.status, result.message = "diverged", why
            break
        history.append(metrics)
        folder = None
        if checkpoint_dir and (epoch == last or (
                save_due(epoch) if save_due is not None else epoch % checkpoint_every == 0)):
            folder = layout.save(run, checkpoint_dir, epoch, history)
        for cb in callbacks:
            cb.on_epoch(metrics)
        if on_epoch_end is not None:
            on_epoch_end({**metrics, **result.counts}, folder)
    for cb in callbacks:
        cb.on_end(result)
    return result


class PrintProgress(Callback):
    """One line per epoch on stdout, and a header naming the run."""

    def __init__(self, print_fn=print):
        self.print = print_fn

    def on_start(self, run: Run) -> None:
        c = run.cfg
        self.total = c.optim.epochs  # for the "epoch k/total" lines
        self.print(f"[sal-ray] {c.model.method} on {c.data.dataset}: depth {c.model.depth}, "
                   f"width {c.model.width}, n_areas {c.model.n_areas}, lr {c.optim.lr:g}, "
                   f"batch {c.optim.batch_size}, seed {c.run.seed}, {run.device}; "
                   f"{run.counts.active:,} active / {run.counts.total:,} total params")

    def on_epoch(self, m: dict[str, float]) -> None:
        self.print(f"  epoch {int(m['epoch']):>3}/{self.total}  train loss {m['train_loss']:.4f}"
                   f"  val loss {m['val_loss']:.4f}  val acc {100 * m['val_acc']:6.2f}%"
                   f"  {m['samples_per_s']:,.0f} samples/s  {m['wall_time_s']:.1f}s")

    def on_end(self, result: RunResult) -> None:
        if result.status != "completed": self.print(f"  [{result.status}] {result.message}")


def train(config: Config | None = None, callbacks: Sequence[Callback] = (),
          verbose: bool = True, checkpoint_dir: str | None = None, **options) -> RunResult:
    """The Python entry point: `sal_ray.train(method="sal", n_areas=16, epochs=5)`."""
    cfg = Config.from_flat(options, base=config or Config())
    cbs = [PrintProgress()] if verbose else []
    return fit(cfg, [*cbs, *callbacks], checkpoint_dir)
