"""One training run, end to end: build it, step it, evaluate it, report it.

    config -> data -> net -> rule -> fit() -> callbacks (console, MLflow, Tune)

The core never imports the orchestration layers: they plug in as `Callback`s.
Everything that can be wrong with the input is checked in `build()`, before
any training; a run writes an atomic checkpoint after every epoch when given a
folder, so a failure mid-run loses nothing already finished.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from . import data as datasets
from .config import DEFAULTS, Config, ConfigError, validate
from .models import Net, ParamCounts, build_net, param_counts
from .rules import SALRule, backprop_grads, full_precision, sal_grads

CHECKPOINT_NAME = "checkpoint.pt"
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} was asked for but torch sees no CUDA device; "
                          "use cpu or auto")
    return device


def build(cfg: Config) -> Run:
    """Validate, load data, build the net and optimizer. All input errors surface here."""
    validate(cfg)
    device = resolve_device(cfg.run.device)
    splits = datasets.load(cfg.data.dataset, cfg.data.data_root, cfg.data.download)
    validate(cfg, n_classes=splits.n_classes)
    dtype = getattr(torch, cfg.run.dtype)
    net = build_net(cfg, splits.input_dim, splits.n_classes).to(device=device, dtype=dtype)
    return Run(cfg, net, make_optimizer(net, cfg), make_rule(cfg),
               *(t.to(device) for t in (splits.x_train.to(dtype), splits.y_train,
                                        splits.x_val.to(dtype), splits.y_val)),
               counts=param_counts(net.arch, cfg.model.method), device=device)


def autocast(cfg: Config, device_type: str):
    """precision bf16: matmuls in bfloat16 over float32 weights; fp32: nothing."""
    if cfg.run.precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_rule(cfg: Config) -> Callable:
    """The method's gradient rule as `(net, x, y) -> (loss, logits, areas)`,
    under `autocast` (so the data-parallel layout, which calls it, gets it too)."""
    if cfg.model.method == "sal":
        rule = SALRule(cfg.sal.lambda_local, cfg.sal.output_local, cfg.sal.area_grad_scale)
        grads = lambda net, x, y: sal_grads(net, x, y, rule)  # noqa: E731
    else:
        balance = cfg.model.moe_balance if cfg.model.method == "moe" else 0.0
        grads = lambda net, x, y: backprop_grads(net, x, y, balance)  # noqa: E731

    def step(net, x, y):
        with autocast(cfg, x.device.type):
            return grads(net, x, y)
    return step


def make_optimizer(net: Net, cfg: Config) -> torch.optim.Optimizer:
    """Plain SGD, no momentum or weight decay: those would move areas no sample
    chose. SAL's selectors get their own rate (lr_sel, default lr)."""
    selectors = [l.router.weight for l in net.layers
                 if l.router is not None and net.method == "sal"]
    chosen = {id(p) for p in selectors}
    rest = [p for p in net.parameters() if id(p) not in chosen]
    groups = [{"params": rest, "lr": cfg.optim.lr}]
    if selectors:
        groups.append({"params": selectors, "lr": cfg.sal.lr_sel or cfg.optim.lr})
    # foreach: one fused update over all tensors instead of a Python loop per tensor
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=0.0)


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


def epoch_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    """The data order of an epoch depends only on (seed, epoch), so a run resumed
    from an epoch's checkpoint sees exactly the batches an unbroken run would."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    bs, n = run.cfg.optim.batch_size, len(run.y_train)
    order = epoch_order(run.cfg.run.seed, epoch, n, run.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.long, device=run.device)
    usage = {i: torch.zeros(run.net.arch.layers[i].n_areas, dtype=torch.long, device=run.device)
             for i in run.routed_layers}
    for step, start in enumerate(range(0, n, bs)):
        idx = order[start:start + bs]
        x, y = run.x_train[idx], run.y_train[idx]
        loss, logits, areas = train_step(run, x, y)
        loss_sum += loss.double() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        for i, counts in usage.items():
            counts.index_add_(0, areas[i], torch.ones_like(areas[i]))
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 and not torch.isfinite(loss_sum):
            return {"finite": False}
    train_loss = loss_sum.item() / n
    return {"finite": math.isfinite(train_loss), "train_loss": train_loss,
            "train_acc": correct.item() / n, "usage": {i: c.tolist() for i, c in usage.items()}}


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
    """Atomic: a crash mid-write leaves the previous checkpoint readable."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, CHECKPOINT_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    # the RNG states too: nothing in a step draws from them today, but a rule that
    # does must resume exactly; the data order needs none (epoch_order)
    torch.save({"epoch": epoch, "history": history, "config": run.cfg.to_flat(),
                "net": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda"
                        else None}}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(run: Run, folder: str) -> tuple[int, list]:
    """Restore a run from `folder`; returns (epochs done, history). (0, []) if none."""
    path = os.path.join(folder, CHECKPOINT_NAME)
    if not os.path.exists(path):
        return 0, []
    state = torch.load(path, map_location=run.device, weights_only=False)
    mine = run.cfg.to_flat()
    # an option newer than the checkpoint counts as its default there
    saved = {**DEFAULTS, **state["config"]}
    differ = {k: (saved.get(k), v) for k, v in mine.items()
              if k not in ("epochs", "device") and saved.get(k) != v}
    if differ:
        raise ConfigError(next(iter(differ)), f"checkpoint in {folder} was written by a "
                          f"different configuration: {differ}")
    run.net.load_state_dict(state["net"])
    run.optimizer.load_state_dict(state["optimizer"])
    rng = state.get("rng") or {}
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    return state["epoch"], state["history"]


def epoch_metrics(run: Run, epoch: int, wall0: float, train_fn: Callable = train_epoch,
                  eval_fn: Callable = evaluate) -> tuple[dict[str, float] | None, str]:
    """Train one epoch and evaluate it: (metrics, ""), or (None, why) when the
    training or validation loss became non-finite. `train_fn` and `eval_fn`
    default to this process's; the data-parallel loop passes its own."""
    t0 = time.perf_counter()
    stats = train_fn(run, epoch)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    train_time = time.perf_counter() - t0
    if not stats["finite"]:
        return None, (f"training loss became non-finite in epoch {epoch}; "
                      f"stopped (lr={run.cfg.optim.lr:g})")
    val_loss, val_acc = eval_fn(run, run.x_val, run.y_val)
    if not math.isfinite(val_loss):
        return None, f"validation loss became non-finite in epoch {epoch}"
    return {"epoch": epoch, "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"], "val_loss": val_loss, "val_acc": val_acc,
            "samples_per_s": len(run.y_train) / train_time, "epoch_time_s": train_time,
            "wall_time_s": time.perf_counter() - wall0, **usage_metrics(stats["usage"])}, ""


def fit(cfg: Config, callbacks: Sequence[Callback] = (), checkpoint_dir: str | None = None,
        run: Run | None = None, checkpoint_every: int = 1) -> RunResult:
    """Train `cfg` to the end (or divergence); report after every epoch.

    With `checkpoint_dir`, an existing checkpoint there is resumed from and a
    new one written every `checkpoint_every` epochs and after the last, before
    the callbacks hear of that epoch (a callback may ship the folder elsewhere).
    """
    if checkpoint_dir:  # an unusable folder is bad input: refuse it before any epoch
        try:
            os.makedirs(checkpoint_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError("checkpoint_dir", f"cannot use {checkpoint_dir} for "
                              f"checkpoints: {e.strerror or e}") from None
        if not os.access(checkpoint_dir, os.W_OK):
            raise ConfigError("checkpoint_dir", f"{checkpoint_dir} is not writable")
    run = run or build(cfg)
    done, history = load_checkpoint(run, checkpoint_dir) if checkpoint_dir else (0, [])
    run.history = list(history)
    for cb in callbacks:
        cb.on_start(run)
    result = RunResult("completed", run.params(), history, counts=run.counts.as_dict(), net=run.net)
    wall0 = time.perf_counter() - (history[-1]["wall_time_s"] if history else 0.0)
    for epoch in range(done + 1, cfg.optim.epochs + 1):
        metrics, why = epoch_metrics(run, epoch, wall0)
        if metrics is None:
            result.status, result.message = "diverged", why
            break
        history.append(metrics)
        if checkpoint_dir and (epoch % checkpoint_every == 0 or epoch == cfg.optim.epochs):
            save_checkpoint(run, checkpoint_dir, epoch, history)
        for cb in callbacks:
            cb.on_epoch(metrics)
    for cb in callbacks:
        cb.on_end(result)
    return result


class PrintProgress(Callback):
    """One line per epoch on stdout, and a header naming the run."""

    def __init__(self, print_fn=print):
        self.print = print_fn

    def on_start(self, run: Run) -> None:
        c = run.cfg
        self.total = c.optim.epochs
        self.print(f"[sal-ray] {c.model.method} on {c.data.dataset}: depth {c.model.depth}, "
                   f"width {c.model.width}, n_areas {c.model.n_areas}, lr {c.optim.lr:g}, "
                   f"batch {c.optim.batch_size}, seed {c.run.seed}, {run.device}; "
                   f"{run.counts.active:,} active / {run.counts.total:,} total params")

    def on_epoch(self, m: dict[str, float]) -> None:
        self.print(f"  epoch {int(m['epoch']):>3}/{self.total}  train loss {m['train_loss']:.4f}"
                   f"  val loss {m['val_loss']:.4f}  val acc {100 * m['val_acc']:6.2f}%"
                   f"  {m['samples_per_s']:,.0f} samples/s  {m['wall_time_s']:.1f}s")

    def on_end(self, result: RunResult) -> None:
        if result.status != "completed":
            self.print(f"  [{result.status}] {result.message}")


def train(config: Config | None = None, callbacks: Sequence[Callback] = (),
          verbose: bool = True, checkpoint_dir: str | None = None, **options) -> RunResult:
    """The Python entry point: `sal_ray.train(method="sal", n_areas=16, epochs=5)`."""
    cfg = Config.from_flat(options, base=config or Config())
    cbs = [PrintProgress()] if verbose else []
    return fit(cfg, [*cbs, *callbacks], checkpoint_dir)
