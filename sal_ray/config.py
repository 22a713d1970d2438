"""Every option of one training run, as dataclasses, with validation.

A run is described by one `Config`. Its sections group the options for reading,
but every option name is unique across sections, so the flat form
(`Config.to_flat()`, `Config.from_flat()`) uses bare names: `n_areas`, `lr`,
`dataset`. Those names are the CLI flags (`--n-areas`), the keys of a sweep's
search space and the MLflow parameter names, so one vocabulary serves all.

This module imports only the standard library: the GPU machines and the data
loaders use it without Ray, Optuna or MLflow.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any

METHODS = ("sal", "bp", "moe")
# The ten benchmarks of the paper (docs/spec.md section 4). `sal_ray.data` holds the
# loaders; a test keeps the two lists equal.
DATASETS = ("cifar10", "pcam", "stl10", "svhn", "mnist", "fashion_mnist",
            "digits", "usps", "semeion", "fer2013")
ARCHS = ("mlp", "residual")
ACTIVATIONS = ("relu", "tanh", "identity")
ROUTED = ("first", "hidden", "all")
AREA_INITS = ("independent", "shared")
INITS = ("kaiming_normal", "torch_linear")
AREA_GRAD_SCALES = ("batch", "area")
FEEDBACK_DISTS = ("gaussian", "uniform")
DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16")
KERNELS = ("auto", "onehot", "gather", "sorted")


class ConfigError(ValueError):
    """A bad option: the message names the option and what is allowed."""

    def __init__(self, option: str, message: str):
        super().__init__(f"option '{option}': {message}")
        self.option = option


@dataclass
class DataConfig:
    dataset: str = "digits"        # one of DATASETS
    data_root: str | None = None   # None: $SAL_RAY_DATA, else ~/.cache/sal_ray/data
    download: bool = False         # fetch missing files (never in tests)
    # at most this many samples of each split (the first ones of the fixed split):
    # a few steps per epoch, for scale runs and smoke tests. None: every sample.
    max_samples: int | None = None


@dataclass
class ModelConfig:
    method: str = "sal"            # sal | bp | moe (docs/spec.md sections 1-3)
    # mlp: every layer but the last uses `activation` (ReLU): the Convergence net.
    # residual: first and last layers linear, hidden layers tanh + skip: Depth/Width.
    arch: str = "mlp"
    depth: int = 2                 # number of weight layers, input and output included
    width: int = 256               # hidden width
    activation: str | None = None  # hidden activation; None: relu for mlp, tanh for residual
    n_areas: int = 1               # areas (SAL) or experts (MoE) on each routed layer
    routed: str = "first"          # first: input layer only; hidden: all but the output; all
    d_f: int | None = None         # router feature size; None: d_out of the layer
    area_init: str = "independent"  # [choice] Kaiming per area, or one draw copied to all
    init: str = "kaiming_normal"   # [choice] He normal (gain of the activation), or torch_linear
    moe_balance: float = 0.0       # [choice] Switch load-balancing loss coefficient


@dataclass
class SALConfig:
    lambda_local: float = 1.0      # weight of the local class-space error
    output_local: bool = True      # [choice] add the local term at the output layer too
    feedback_dist: str = "gaussian"  # [choice] distribution of hidden layers' B
    feedback_scale: float = 1.0    # [choice] B's std is feedback_scale / sqrt(d_out)
    area_grad_scale: str = "batch"  # [choice] per-area gradient ÷ batch, or ÷ area count
    lr_sel: float | None = None    # [choice] selector learning rate; None: lr


@dataclass
class OptimConfig:
    lr: float = 1e-4               # plain SGD, the paper's rate
    batch_size: int = 16
    epochs: int = 25


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "cpu"            # cpu, cuda, cuda:N, or auto
    dtype: str = "float32"
    # bf16: parameters, optimizer and update stay in `dtype` (float32 master
    # weights); the matmuls of the forward and of the update run under
    # torch.autocast(bfloat16). Losses, softmax and metrics stay float32.
    precision: str = "fp32"
    kernel: str = "auto"           # routed matmul layout; all give the same math
    eval_batch_size: int = 4096
    # A mean training or validation cross-entropy above this (or not finite) ends
    # the run as diverged, for every method alike. 100 is about 43x the loss of a
    # uniform guess over 10 classes: no run that still learns is near it.
    diverge_loss: float = 100.0
    # Runs of one shape (the seeds of a trial, same-shape configurations) train as
    # one stacked model (`sal_ray.pack`), each exactly as alone; false: one by one.
    fuse: bool = True
    # bytes a worker may use (host RAM, or a GPU's memory on a GPU); a run whose
    # estimate (sal_ray.budget) exceeds it is refused before the net is allocated.
    # None: what the machine has available when the run is built.
    memory_limit: int | None = None


SECTIONS = {"data": DataConfig, "model": ModelConfig, "sal": SALConfig,
            "optim": OptimConfig, "run": RunConfig}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sal: SALConfig = field(default_factory=SALConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---- flat form -------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """All options by bare name, in section order."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any], base: Config | None = None) -> Config:
        """Options by bare name over `base` (defaults if None). Strings are
        coerced to the option's type, so CLI and MLflow values round-trip."""
        if base is not None and not isinstance(base, Config):
            raise ConfigError("config", f"must be a sal_ray.Config (or None); got "
                              f"{type(base).__name__} {base!r}"[:200])
        cfg = dataclasses.replace(base) if base else cls()
        cfg = cls(**{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})
        for name, value in flat.items():
            section = OPTION_SECTION.get(name)
            if section is None:
                raise ConfigError(name, "unknown option" + _suggest(name, OPTION_SECTION))
            setattr(getattr(cfg, section), name, coerce(name, value))
        return cfg

    def replace(self, **flat: Any) -> Config:
        return Config.from_flat(flat, base=self)


def _collect_options() -> tuple[dict[str, str], dict[str, dataclasses.Field]]:
    where, info = {}, {}
    for section, klass in SECTIONS.items():
        for f in fields(klass):
            assert f.name not in where, f"option {f.name} defined twice"
            where[f.name], info[f.name] = section, f
    return where, info


OPTION_SECTION, OPTION_FIELDS = _collect_options()
DEFAULTS = Config().to_flat()


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else f"; known: {', '.join(known)}"


def option_type(name: str) -> str:
    """'int', 'float', 'bool' or 'str', ignoring `| None`."""
    t = str(OPTION_FIELDS[name].type)
    for base in ("bool", "int", "float", "str"):
        if t.startswith(base):
            return base
    raise AssertionError(t)


def optional(name: str) -> bool:
    return "None" in str(OPTION_FIELDS[name].type)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def coerce(name: str, value: Any) -> Any:
    """Convert `value` to option `name`'s type, with a clear error."""
    kind = option_type(name)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional(name):
            return None
        raise ConfigError(name, f"must be {_a(kind)}, got {value!r}")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value, 10)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(name, f"must be {_a(kind)}, got {value!r}") from None


# ---- validation --------------------------------------------------------------

def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _positive(name: str, value: float, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ConfigError(name, f"must be {kind}; got {value!r}")
    high = FLOAT_MAX.get(name)
    if high is not None and value > high:
        raise ConfigError(name, f"must be at most {high:g}; got {value!r}")


# Every float option's ceiling, checked before any work: past these the float32
# arithmetic of a step overflows (an lr of 1e39 cannot even be applied by SGD) or
# the option means nothing (docs/reliability.md).
FLOAT_MAX = {"lr": 1e4, "lr_sel": 1e4, "feedback_scale": 1e4, "lambda_local": 1e4,
             "moe_balance": 1e4, "diverge_loss": 1e30}


def validate(cfg: Config, n_classes: int | None = None) -> Config:
    """Raise ConfigError for the first bad option. Runs before any work starts.

    `n_classes`, once the dataset is known, enables the router check d_f >= C.
    """
    m, s, o, r, d = cfg.model, cfg.sal, cfg.optim, cfg.run, cfg.data
    for name in DEFAULTS:  # types first, so later checks can trust them
        value = getattr(getattr(cfg, OPTION_SECTION[name]), name)
        if value is not None or not optional(name):
            coerced = coerce(name, value)
            if type(coerced) is not type(value) and not (
                    option_type(name) == "float" and isinstance(value, int)
                    and not isinstance(value, bool)):
                raise ConfigError(name, f"must be {_a(option_type(name))}, got {value!r}")
    _one_of("method", m.method, METHODS)
    _one_of("dataset", d.dataset, DATASETS)
    _one_of("arch", m.arch, ARCHS)
    if m.activation is not None:
        _one_of("activation", m.activation, ACTIVATIONS)
    _one_of("routed", m.routed, ROUTED)
    _one_of("area_init", m.area_init, AREA_INITS)
    _one_of("init", m.init, INITS)
    _one_of("feedback_dist", s.feedback_dist, FEEDBACK_DISTS)
    _one_of("area_grad_scale", s.area_grad_scale, AREA_GRAD_SCALES)
    _one_of("dtype", r.dtype, DTYPES)
    _one_of("precision", r.precision, PRECISIONS)
    if r.precision == "bf16" and r.dtype != "float32":
        raise ConfigError("precision", f"bf16 autocasts float32 master weights; with dtype "
                          f"{r.dtype} use precision fp32 (or dtype float32)")
    _one_of("kernel", r.kernel, KERNELS)
    if not (r.device in ("cpu", "cuda", "auto") or r.device.startswith("cuda:")):
        raise ConfigError("device", f"must be cpu, cuda, cuda:N or auto; got {r.device!r}")
    if m.depth < 2:
        raise ConfigError("depth", f"must be an integer >= 2 (input and output layers); got {m.depth}")
    _positive("width", m.width, integer=True)
    if m.n_areas < 1:
        raise ConfigError("n_areas", f"must be an integer >= 1; got {m.n_areas}")
    if m.method == "bp" and m.n_areas != 1:
        raise ConfigError("n_areas", f"the bp baseline has one area and no router; got {m.n_areas} "
                          "(use method sal or moe for several areas)")
    if m.d_f is not None:
        _positive("d_f", m.d_f, integer=True)
        if n_classes is not None and m.d_f < n_classes:
            raise ConfigError("d_f", f"the selector treats z as class logits, so d_f must be >= "
                              f"the {n_classes} classes; got {m.d_f}")
    if (n_classes is not None and m.d_f is None and m.n_areas > 1 and m.method != "bp"
            and m.width < n_classes):
        # routed hidden-width layers use d_out = width as router features (d_f unset)
        raise ConfigError("width", f"with n_areas > 1 and d_f unset, a routed layer's router "
                          f"reads its {m.width} outputs as class logits, so width must be >= "
                          f"the {n_classes} classes; got {m.width} (or set d_f >= {n_classes})")
    for name, value in (("moe_balance", m.moe_balance), ("lambda_local", s.lambda_local)):
        if not math.isfinite(value) or not 0 <= value <= FLOAT_MAX[name]:
            raise ConfigError(name, f"must be a finite number from 0 to {FLOAT_MAX[name]:g}; "
                              f"got {value}")
    _positive("feedback_scale", s.feedback_scale)
    _positive("lr", o.lr)
    if s.lr_sel is not None:
        _positive("lr_sel", s.lr_sel)
    _positive("batch_size", o.batch_size, integer=True)
    _positive("epochs", o.epochs, integer=True)
    _positive("eval_batch_size", r.eval_batch_size, integer=True)
    _positive("diverge_loss", r.diverge_loss)
    if d.max_samples is not None:
        _positive("max_samples", d.max_samples, integer=True)
    if r.memory_limit is not None:
        _positive("memory_limit", r.memory_limit, integer=True)
    return cfg


HELP = {
    "dataset": "dataset name: " + ", ".join(DATASETS),
    "data_root": "folder holding the datasets (default: $SAL_RAY_DATA or ~/.cache/sal_ray/data)",
    "download": "download missing dataset files where the source allows it",
    "max_samples": "use at most this many samples of each split (default: all)",
    "method": "learning rule: sal (SAL), bp (backprop baseline) or moe (top-1 MoE by backprop)",
    "arch": "mlp: ReLU layers (Convergence protocol); residual: linear, tanh+skip, linear "
            "(Depth/Width protocols)",
    "depth": "number of weight layers, input and output included (>= 2)",
    "width": "hidden width",
    "activation": "hidden activation (relu, tanh, identity); default relu for mlp, tanh for residual",
    "n_areas": "areas (sal) or experts (moe) per routed layer; bp needs 1",
    "routed": "which layers are routed: first (input layer), hidden (all but output), all",
    "d_f": "router feature size (>= classes); default: the layer's output size",
    "area_init": "[choice] independent Kaiming draw per area, or shared (one draw copied)",
    "init": "[choice] area weight init: kaiming_normal (std gain/sqrt(fan_in), zero bias) or "
            "torch_linear (nn.Linear's default: kaiming_uniform a=sqrt(5), uniform bias)",
    "moe_balance": "[choice] Switch load-balancing loss coefficient for moe",
    "lambda_local": "weight of SAL's local class-space error",
    "output_local": "[choice] add the local term at the output layer too (B = I doubles E_top)",
    "feedback_dist": "[choice] distribution of hidden layers' fixed feedback B: gaussian, uniform",
    "feedback_scale": "[choice] B's std is feedback_scale / sqrt(d_out)",
    "area_grad_scale": "[choice] per-area gradient divided by the batch size (batch) or by the "
                       "area's sample count (area)",
    "lr_sel": "[choice] SAL selector learning rate (default: lr)",
    "lr": "SGD learning rate",
    "batch_size": "training batch size",
    "epochs": "training epochs",
    "seed": "seed of initialisation, feedback matrices and data order",
    "device": "cpu, cuda, cuda:N or auto",
    "dtype": "float32 or float64",
    "precision": "fp32, or bf16: float32 weights and update, matmuls autocast to bfloat16 "
                 "(needs dtype float32)",
    "kernel": "routed-matmul layout: auto, onehot, gather, sorted (same math, different speed)",
    "eval_batch_size": "batch size for evaluation",
    "diverge_loss": "a mean training or validation loss above this (or not finite) ends the "
                    "run as diverged",
    "fuse": "train runs of one shape (a trial's seeds) as one stacked model, each exactly "
            "as alone (sal_ray.pack); false: one after another",
    "memory_limit": "bytes a worker may use; a run estimated above it is refused before "
                    "its net is allocated (default: the memory available)",
}
assert set(HELP) == set(OPTION_SECTION), set(OPTION_SECTION) ^ set(HELP)
