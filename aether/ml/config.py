"""Training hyper-parameters: ``TrainConfig``, the named presets, ``--set KEY=VALUE`` parsing.

The ``paper`` preset is the published method as its reference code runs it (docs/training.md
lists each point against the reference); ``default`` changes only what proved better.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aether.errors import ConfigError, InputError
from aether.ml.text import DEFAULT_TEXT_MODEL

BATCHING = ("even", "drop_last")
#: "random": the epoch's shuffled order cut into batches; "rings": PURE's distance-ring batches
#: (``aether.ml.rings``).
SAMPLERS = ("random", "rings")
#: PURE (inwind0212/PURE @ fddee25, code/configs/train_pure.yaml): square rings of half-side
#: 100, 1,000 and 10,000 px of its 100 m grid, and the shares of a batch drawn from each ring
#: and from beyond the last ("others").
PURE_RING_HALF_SIDES_M = (10_000.0, 100_000.0, 1_000_000.0)
PURE_RING_SHARES = (0.5, 0.2, 0.2, 0.1)
#: Seeds are 0 to 2**32 - 1: what numpy's and torch's generators take on every platform
#: (torch's per-epoch seed, seed × 100003 + epoch, stays inside 64 bits).
MAX_SEED = 2**32 - 1
#: More epochs than any run needs (the presets train 100): a typo, not a plan.
MAX_EPOCHS = 100_000
#: (base, aug) radius_m: 100 / 200 m circles, and the reference's 9 × 9 / 19 × 19 px squares.
DEFAULT_WINDOWS = (100.0, 200.0)
REFERENCE_WINDOWS = (-45.0, -95.0)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a run (the defaults are the method's; ``PRESETS`` names them)."""

    epochs: int = 100
    batch_size: int = 512
    #: "even": ceil(n / batch) near-equal batches, every pair every epoch; "drop_last":
    #: shuffled batches of exactly ``batch_size``, the remainder dropped (the reference).
    batching: str = "even"
    lr: float = 1e-3
    lr_min_ratio: float = 0.01  # the cosine schedule ends at lr_min_ratio × lr
    weight_decay: float = 1e-4
    temperature: float = 0.07
    learn_temperature: bool = False
    multiscale_weight: float = 0.2
    same_text_positive: bool = False
    same_place_m: float = 0.0  # POIs closer than this are positives; 0 = off
    normalize_input: bool = False  # L2-normalise each 64-d mean before the head
    #: windows as ``poi_embeddings`` keys them: circles of a radius, or squares when negative
    #: (-45 / -95: the reference's 9 × 9 / 19 × 19 px, see ``aether.core.windows``). None
    #: (the paper preset): those squares when the table has them, else 100 / 200 m circles.
    base_radius_m: float | None = 100.0
    aug_radius_m: float | None = 200.0
    hidden_dim: int = 256
    out_dim: int = 128
    #: POIs held out (by a hash of the POI id) for held-out retrieval and tasks with
    #: ``holdout: true``; the paper preset trains on all of them, as the reference does.
    test_fraction: float = 0.1
    val_fraction: float = 0.0  # for early stopping / best checkpoint; 0 = keep last epoch
    split: str = "random"  # "random" (by POI) or "blocks" (square spatial blocks)
    block_m: float = 250.0
    patience: int = 20  # epochs without a better val MRR before stopping
    min_epochs_fraction: float = 0.5  # never stop in the first half of the cosine schedule
    text_model: str = DEFAULT_TEXT_MODEL
    #: On CUDA, TF32 matmuls (the reference's ``torch.set_float32_matmul_precision("high")``,
    #: about 10 bits of mantissa in the products); no effect on CPU.
    tf32: bool = False
    seed: int = 42
    #: PURE's relational distillation (``heads.relational_loss``): weight of the KL term
    #: between the frozen AlphaEarth inputs' and the base view's within-batch neighbour
    #: distributions; 0 = off, as in AETHER. ``relational_sample``: at most this many rows of a
    #: batch enter it (0 = all).
    relational_weight: float = 0.0
    relational_temperature: float = 0.1
    relational_sample: int = 0
    #: "random" or PURE's "rings" (``aether.ml.rings``): each batch drawn around one anchor
    #: POI, ``ring_shares`` of it from the square rings of ``ring_half_sides_m`` (Chebyshev
    #: distance in metres) and the last share from beyond them.
    batch_sampler: str = "random"
    ring_half_sides_m: tuple[float, ...] = PURE_RING_HALF_SIDES_M
    ring_shares: tuple[float, ...] = PURE_RING_SHARES

    def __post_init__(self) -> None:
        # a config read back from JSON has lists; keep the fields hashable and comparable
        for name in ("ring_half_sides_m", "ring_shares"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def lr_min(self) -> float:
        """Where the cosine schedule ends: the reference's 1 % of ``lr``."""
        return self.lr * self.lr_min_ratio


PRESETS: dict[str, TrainConfig] = {
    # The reference's batching, input normalisation and 9 × 9 / 19 × 19 px windows (when the
    # extract has them: `aether extract --window square:4,9`; else 100 / 200 m circles); like
    # it, training on every POI (no hold-out) and TF32 matmuls on CUDA.
    "paper": TrainConfig(batching="drop_last", normalize_input=True, base_radius_m=None,
                         aug_radius_m=None, test_fraction=0.0, tf32=True),
    # Only what proved better on the sample city's held-out POIs: same-text and same-place
    # pairs as positives (recall@1/@10 and MRR equal or higher for every seed tried). A learnt
    # temperature (learn_temperature=true) and best-epoch selection with early stopping
    # (val_fraction=0.1) are options: on ~2k POIs both did worse (a noisy 200-POI validation
    # set, 10% less training data).
    "default": TrainConfig(same_text_positive=True, same_place_m=10.0),
    # PURE's additions to AETHER (inwind0212/PURE @ fddee25: code/configs/train_pure.yaml and
    # PROTOCOL.md's city experiments): relational distillation 0.5 at temperature 0.1 over at
    # most 512 rows, distance-ring batches 0.5/0.2/0.2/0.1, and its optimisation: 10 epochs of
    # batches of 512 (its city runs; 2,048 globally) at a fixed lr 1e-4, weight decay 1e-4,
    # hidden width 2,048, diagonal targets, every POI trains. docs/training.md lists what it
    # sets that aether does not (position encoding, text model, windows, anchor regions).
    "pure": TrainConfig(relational_weight=0.5, relational_temperature=0.1,
                        relational_sample=512, batch_sampler="rings", epochs=10, lr=1e-4,
                        lr_min_ratio=1.0, hidden_dim=2048, test_fraction=0.0),
}

#: Options added after runs were made, by the switch that puts them to use: a run's
#: ``hyperparameters`` (and so its config hash) leave them out while they hold their default
#: and their switch is off, so earlier runs keep their hashes.
_LATER_OPTIONS = {
    "relational_weight": ("relational_weight", "relational_temperature", "relational_sample"),
    "batch_sampler": ("batch_sampler", "ring_half_sides_m", "ring_shares"),
}


def hyperparameters(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a run records it: every field but later options left as they were."""
    default, out = TrainConfig(), dataclasses.asdict(cfg)
    for switch, names in _LATER_OPTIONS.items():
        if getattr(cfg, switch) == getattr(default, switch):
            for k in names:
                if out[k] == getattr(default, k):
                    del out[k]
    return out


#: Options that must be > 0 and >= 0 (a zero temperature divides by zero in the loss).
_POSITIVE = ("lr", "temperature", "block_m")  # radii: None or negative (squares) too
_NON_NEGATIVE = ("weight_decay", "multiscale_weight", "same_place_m", "patience",
                 "min_epochs_fraction", "relational_sample")
_LISTS = ("ring_half_sides_m", "ring_shares")  # comma-separated floats on the command line


def parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to typed TrainConfig overrides (``--set`` on the CLI)."""
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in dataclasses.fields(TrainConfig)}
    types.update(base_radius_m=float, aug_radius_m=float)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"bad training option {item!r}",
                              f"use KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        kind = types[key]
        try:
            if key in _LISTS:
                out[key] = tuple(float(v) for v in value.split(","))
                if not all(math.isfinite(v) for v in out[key]):
                    raise ValueError(value)
            elif kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            else:
                out[key] = kind(value)
                if kind is float and not math.isfinite(out[key]):
                    raise ValueError(value)
        except ValueError as e:
            example = getattr(TrainConfig(), key)
            if key in _LISTS:
                example = ",".join(f"{v:g}" for v in example)
            want = "list of numbers" if key in _LISTS else kind.__name__
            raise ConfigError(f"{key} wants a {want}, not {value!r}",
                              f"e.g. --set {key}={example}") from e
    return out


def check_epochs(epochs: int | None) -> int | None:
    """An epoch count from 1 to MAX_EPOCHS (None: the preset's)."""
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or not 1 <= epochs <= MAX_EPOCHS):
        raise ConfigError(f"epochs {str(epochs)[:30]} is out of range",
                          f"use 1 to {MAX_EPOCHS} epochs, e.g. --epochs 100")
    return epochs


def resolve_config(preset: str, epochs: int | None, seed: int, **overrides: Any) -> TrainConfig:
    """A preset with explicit overrides applied; unknown names are ConfigErrors."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown training option(s) {', '.join(bad)}",
                          f"known: {', '.join(sorted(fields))}")
    if epochs is not None:
        overrides["epochs"] = epochs
    cfg = dataclasses.replace(PRESETS[preset], seed=seed, **overrides)
    if (cfg.base_radius_m is None) != (cfg.aug_radius_m is None):  # one set: circles
        cfg = dataclasses.replace(cfg, base_radius_m=cfg.base_radius_m or DEFAULT_WINDOWS[0],
                                  aug_radius_m=cfg.aug_radius_m or DEFAULT_WINDOWS[1])
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) \
            or not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed {str(cfg.seed)[:30]} is out of range",
                          f"use a seed from 0 to {MAX_SEED}, e.g. --seed 42")
    check_epochs(cfg.epochs)
    if cfg.batch_size < 2:
        raise ConfigError("batch_size must be >= 2", "e.g. --set batch_size=512")
    for name in _POSITIVE:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, not {getattr(cfg, name)}",
                              f"e.g. --set {name}={getattr(TrainConfig(), name)}")
    for name in _NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, not {getattr(cfg, name)}",
                              f"e.g. --set {name}={getattr(TrainConfig(), name)}")
    if 0 in (cfg.base_radius_m, cfg.aug_radius_m):
        raise ConfigError("a window of 0 m is empty",
                          "e.g. base_radius_m=100, aug_radius_m=200 (squares: -45, -95)")
    if cfg.base_radius_m is not None and cfg.aug_radius_m is not None and (
            abs(cfg.base_radius_m) >= abs(cfg.aug_radius_m)
            or (cfg.base_radius_m < 0) != (cfg.aug_radius_m < 0)):
        raise ConfigError("the augmented window must be larger than the base one, same shape",
                          "e.g. base_radius_m=100, aug_radius_m=200 (squares: -45, -95)")
    if not 0 <= cfg.test_fraction + cfg.val_fraction < 1:
        raise ConfigError("test_fraction + val_fraction must be in [0, 1)", "e.g. 0.1 + 0.1")
    if cfg.batching not in BATCHING:
        raise ConfigError(f"unknown batching {cfg.batching!r}", f"use one of {', '.join(BATCHING)}")
    if min(cfg.hidden_dim, cfg.out_dim) < 1 or not 0 <= cfg.lr_min_ratio <= 1:
        raise ConfigError("hidden_dim and out_dim must be >= 1, lr_min_ratio in [0, 1]",
                          "e.g. --set out_dim=128")
    check_pure(cfg)
    return cfg


def check_pure(cfg: TrainConfig) -> None:
    """PURE's options: a finite weight >= 0 and temperature > 0, a known sampler, finite rings
    that grow, one share per ring plus one for beyond them, none negative, summing to 1."""
    if not (math.isfinite(cfg.relational_weight) and cfg.relational_weight >= 0):
        raise ConfigError(f"relational_weight must be >= 0, not {cfg.relational_weight}",
                          "e.g. --set relational_weight=0.5 (0: off)")
    if not (math.isfinite(cfg.relational_temperature) and cfg.relational_temperature > 0):
        raise ConfigError(f"relational_temperature must be > 0, not {cfg.relational_temperature}",
                          "e.g. --set relational_temperature=0.1")
    if cfg.relational_sample == 1:
        raise ConfigError("relational_sample must be 0 (the whole batch) or >= 2",
                          "e.g. --set relational_sample=512")
    if cfg.batch_sampler not in SAMPLERS:
        raise ConfigError(f"unknown batch_sampler {cfg.batch_sampler!r}",
                          f"use one of {', '.join(SAMPLERS)}")
    sides, shares = cfg.ring_half_sides_m, cfg.ring_shares
    if not sides or not math.isfinite(sides[-1]) or any(
            not b > a for a, b in zip((0.0, *sides[:-1]), sides, strict=True)):
        raise ConfigError(f"ring_half_sides_m must grow from > 0, not {list(sides)}",
                          "e.g. --set ring_half_sides_m=10000,100000,1000000")
    if (len(shares) != len(sides) + 1 or min(shares) < 0
            or not math.isclose(sum(shares), 1.0, abs_tol=1e-6)):
        raise ConfigError(f"ring_shares must be {len(sides) + 1} shares >= 0 summing to 1 (one "
                          f"per ring and one beyond), not {list(shares)}",
                          "e.g. --set ring_shares=0.5,0.2,0.2,0.1")


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it learns: none of these is in the config hash,
    none changes the weights (the same bytes on any device count of threads).

    Parameters
    ----------
    device
        ``cpu`` or ``cuda`` (default: cuda when torch has one).
    threads
        torch's CPU threads; 0 picks the faster of 1 and 2 on a few steps at start; None
        leaves torch's own choice. One is about as fast on an idle machine (the heads are
        small) and far faster on a busy one.
    checkpoint_every
        Epochs between resume checkpoints (one is always written after the last).
    overwrite
        Replace a finished run of the same name trained with another config.
    on_epoch
        Called with each epoch's metrics row (progress, early stops in tests).
    """

    device: str | None = None
    threads: int | None = 1
    checkpoint_every: int = 1
    overwrite: bool = False
    on_epoch: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise InputError("checkpoint_every must be >= 1", "e.g. checkpoint_every=5")
        if self.threads is not None and not 0 <= self.threads <= 1024:
            raise InputError(f"threads {self.threads} is out of range",
                             "use 0 (measured) to 1024")
