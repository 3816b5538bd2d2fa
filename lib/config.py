"""A run's whole configuration: one dataclass, written to ``config.json``, read back by predict and report.

Defaults are the report's recipe (the ``paper`` profile); ``smoke`` is a tiny profile for tests and laptops.
Model fields left at ``None`` mean "the architecture's own default" (see ``lib.models``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import numbers
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .common import UserError, atomic_write_text
from .models import resolve_config

# Warm-up is at most this share of a run: the report's 5 epochs are 1.7% of its 300 (Goyal et al.'s 5 of 90,
# 5.6%); capped at 10%, every run of 50+ epochs keeps the full 5, and a 2-epoch run warms up for 0.2 epochs
# instead of spending all of it raising the learning rate.
WARMUP_MAX_SHARE = 0.1
AUGMENT_OPS = ("crop", "flip", "jitter", "rotation", "randaugment", "autoaugment", "erasing")
AUGMENT_PRESETS = {
    # the report's pipeline: crop+flip, colour jitter, rotation, RandAugment, random erasing (+ MixUp/CutMix per batch)
    "full": ("crop", "flip", "jitter", "rotation", "randaugment", "erasing"),
    "standard": ("crop", "flip"),
    "none": (),
}


_TYPE_CHECKS = {"int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
                "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
                "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}


def _opt(help: str, **kw):
    return field(metadata={"help": help}, **kw)


@dataclass
class RunConfig:
    # --- what to train -------------------------------------------------------------------------
    model: str = _opt("architecture name (lib.models.list_models())", default="robust_resnet64")
    profile: str = _opt("paper (the report's recipe) or smoke (tiny, CPU-friendly)", default="paper")
    dropout: Optional[float] = _opt("dropout inside residual blocks (model default if unset)", default=None)
    stochastic_depth_rate: Optional[float] = _opt("max residual-branch drop rate (model default if unset)",
                                                  default=None)
    base_channels: Optional[int] = _opt("width of the first group; widths double per group", default=None)
    widths: Optional[list[int]] = _opt("explicit widths per group, e.g. 45,90,170,340", default=None)
    blocks_per_group: Optional[int] = _opt("residual blocks per group (depth)", default=None)
    kernel_size: Optional[int] = _opt("conv kernel size ('filter size'); shortcuts stay 1x1", default=None)
    se_reduction: Optional[int] = _opt("Squeeze-and-Excitation reduction ratio", default=None)

    # --- data ----------------------------------------------------------------------------------
    data_dir: str = _opt("folder holding cifar-10-batches-py/ (or that folder itself)", default="data")
    val_source: str = _opt("test (official test batch, as the report) or holdout", default="test")
    holdout_fraction: float = _opt("fraction of the training batches held out (val_source=holdout)",
                                   default=0.1)
    train_size: Optional[int] = _opt("seeded class-balanced subset of the training split", default=None)
    val_size: Optional[int] = _opt("seeded class-balanced subset of the validation split", default=None)
    download: bool = _opt("download the official CIFAR-10 archive (MD5-checked) when absent", default=False)

    # --- the recipe (0.1 / 0.9 / 5e-4 / 128 / 300: the report's settings) -----------------------
    epochs: int = _opt("training epochs", default=300)
    batch_size: int = _opt("batch size", default=128)
    lr: float = _opt("peak learning rate (after warm-up)", default=0.1)
    momentum: float = _opt("SGD Nesterov momentum", default=0.9)
    weight_decay: float = _opt("SGD weight decay", default=5e-4)
    warmup_epochs: float = _opt("linear warm-up epochs before cosine annealing ('a few': 5); at most "
                                "a tenth of a short run", default=5.0)
    label_smoothing: float = _opt("cross-entropy label smoothing", default=0.1)

    # --- augmentation --------------------------------------------------------------------------
    augment: str = _opt("preset (full, standard, none) or a comma list of " + ",".join(AUGMENT_OPS),
                        default="full")
    mix_prob: float = _opt("probability a batch gets MixUp or CutMix (0.5: the report's)", default=0.5)
    mixup_alpha: float = _opt("MixUp Beta(alpha, alpha)", default=1.0)
    cutmix_alpha: float = _opt("CutMix Beta(alpha, alpha)", default=1.0)
    color_jitter: float = _opt("brightness/contrast/saturation jitter strength, 0-2 (hue: a quarter)",
                               default=0.2)
    rotation_degrees: float = _opt("RandomRotation range +-degrees", default=10.0)
    randaugment_ops: int = _opt("RandAugment operations per image", default=2)
    randaugment_magnitude: int = _opt("RandAugment magnitude (0-30)", default=9)
    erasing_prob: float = _opt("RandomErasing probability", default=0.25)

    # --- how to run ----------------------------------------------------------------------------
    out: str = _opt("run folder (history.csv, config.json, last.pt, best.pt)", default="runs/run")
    seed: int = _opt("random seed", default=0)
    device: str = _opt("auto, cpu or cuda", default="auto")
    loader: str = _opt("torchvision (per-sample DataLoader), device (batched, data on device), auto",
                       default="auto")
    num_workers: Optional[int] = _opt("DataLoader workers for the torchvision loader (auto if unset)",
                                      default=None)
    compile: bool = _opt("torch.compile the model's forward and backward (off by default)", default=False)
    cuda_graphs: bool = _opt("with --compile on CUDA: replay each step as CUDA graphs (inductor's "
                             "reduce-overhead mode)", default=False)
    sync_bn: bool = _opt("SyncBatchNorm: batch statistics over all torchrun processes (several processes only)",
                         default=False)
    # auto: on CUDA only (lib.augment.resolve_channels_last says why not on the CPU)
    channels_last: Optional[bool] = _opt("channels_last memory format (auto: on CUDA, off on the CPU)", default=None)
    amp: bool = _opt("mixed precision on CUDA (bf16 from compute capability 8.0, else fp16 + GradScaler)",
                     default=True)
    progress: bool = _opt("tqdm progress bar per epoch on a terminal (elsewhere one line per epoch)", default=True)
    resume: bool = _opt("continue from RUN_DIR/last.pt", default=False)

    # ----------------------------------------------------------------------------------------------
    def augment_ops(self) -> tuple[str, ...]:
        """The enabled per-image augmentations, in pipeline order."""
        if self.augment in AUGMENT_PRESETS:
            return AUGMENT_PRESETS[self.augment]
        ops = tuple(o.strip() for o in self.augment.split(",") if o.strip())
        unknown = [o for o in ops if o not in AUGMENT_OPS]
        if unknown:
            raise UserError(f"--augment: unknown operation(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(AUGMENT_PRESETS)} or {', '.join(AUGMENT_OPS)}")
        if "randaugment" in ops and "autoaugment" in ops:  # the pipeline applies one policy, never both
            raise UserError(f"--augment {self.augment}: randaugment and autoaugment are alternatives; choose one")
        return tuple(o for o in AUGMENT_OPS if o in ops)

    def model_overrides(self) -> dict[str, Any]:
        """Keyword overrides for ``lib.models.build_model`` (only the ones set)."""
        names = ("dropout", "stochastic_depth_rate", "base_channels", "widths", "blocks_per_group",
                 "kernel_size", "se_reduction")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def warmup_epochs_used(self) -> float:
        """The warm-up the schedule runs: ``warmup_epochs``, capped at WARMUP_MAX_SHARE of the run."""
        return min(self.warmup_epochs, WARMUP_MAX_SHARE * self.epochs)

    def validate(self) -> "RunConfig":
        """Check every setting, files untouched (the model by name and overrides); raise UserError naming it."""
        def need(ok: bool, opt: str, why: str):
            if not ok:
                raise UserError(f"--{opt.replace('_', '-')} {getattr(self, opt)!r}: {why}")
        for f in fields(self):  # types first (a notebook can pass anything), so the range checks can compare
            value, kind = getattr(self, f.name), f.type.removeprefix("Optional[").removesuffix("]")
            if value is not None or not f.type.startswith("Optional["):
                need(_TYPE_CHECKS.get(kind, lambda v: True)(value), f.name, f"expected {kind}")
        need(self.profile in PROFILES, "profile", f"expected one of {', '.join(PROFILES)}")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(0 <= self.mix_prob <= 1, "mix_prob", "must be in [0, 1]")
        need(self.mixup_alpha > 0, "mixup_alpha", "must be > 0")
        need(self.cutmix_alpha > 0, "cutmix_alpha", "must be > 0")
        # hue = j/4 must stay within torchvision ColorJitter's [0, 0.5]; brightness/contrast/saturation take any j >= 0
        need(0 <= self.color_jitter <= 2, "color_jitter", "must be in [0, 2] (the hue shift j/4 is at most 0.5)")
        need(self.rotation_degrees >= 0, "rotation_degrees", "must be >= 0")
        need(self.randaugment_ops >= 0, "randaugment_ops", "must be >= 0")
        need(0 <= self.randaugment_magnitude <= 30, "randaugment_magnitude", "must be in [0, 30]")
        need(0 <= self.erasing_prob <= 1, "erasing_prob", "must be in [0, 1]")
        need(self.val_source in ("test", "holdout"), "val_source", "expected test or holdout")
        need(0 < self.holdout_fraction < 1, "holdout_fraction", "must be in (0, 1)")
        need(self.train_size is None or self.train_size >= 10, "train_size", "must be >= 10 (one per class)")
        need(self.val_size is None or self.val_size >= 10, "val_size", "must be >= 10 (one per class)")
        need(self.loader in ("auto", "torchvision", "device"), "loader", "expected auto, torchvision or device")
        need(self.num_workers is None or self.num_workers >= 0, "num_workers", "must be >= 0")
        need(not self.cuda_graphs or self.compile, "cuda_graphs", "needs --compile")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None,
             "device", "expected auto, cpu, cuda or cuda:N")
        if self.dropout is not None:
            need(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        if self.stochastic_depth_rate is not None:
            need(0 <= self.stochastic_depth_rate < 1, "stochastic_depth_rate", "must be in [0, 1)")
        self.augment_ops()
        try:  # the architecture's own checks (name, widths, kernel size, ...), without building it
            resolve_config(self.model, **self.model_overrides())
        except ValueError as exc:
            raise UserError(f"--model {self.model}: {exc}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# A profile is a set of defaults laid over the dataclass defaults; explicit options win over both.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    # Tiny: a few hundred images, 2 epochs. Synthetic CIFAR-format data is generated when CIFAR-10 is absent.
    "smoke": {"epochs": 2, "train_size": 320, "val_size": 160, "batch_size": 32, "warmup_epochs": 0.5,
              "data_dir": "data/smoke", "out": "runs/smoke"},
}


def make_config(profile: str = "paper", **overrides: Any) -> RunConfig:
    """The profile's settings with ``overrides`` on top (``None`` values in overrides are ignored)."""
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r}: expected one of {', '.join(PROFILES)}")
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    values = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}, "profile": profile}
    return RunConfig(**values).validate()


def save_config(cfg: RunConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    atomic_write_text(path, json.dumps({**cfg.to_dict(), **(extra or {})}, indent=2, sort_keys=False) + "\n")


def load_config(path: Path) -> tuple[RunConfig, dict[str, Any]]:
    """Read ``config.json``: the RunConfig and the extra recorded fields (versions, data source, ...)."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    known = {f.name for f in fields(RunConfig)}
    return RunConfig.from_dict(d), {k: v for k, v in d.items() if k not in known}


def add_config_arguments(parser, skip: tuple[str, ...] = ()) -> None:
    """One ``--kebab-case`` option per RunConfig field; defaults are None so profiles can fill them."""
    for f in fields(RunConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.type in ("bool", bool) or f.type == "Optional[bool]":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.name == "widths":
            parser.add_argument(flag, dest=f.name, type=_int_list, default=None, metavar="W1,W2,...", help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=_arg_type(f.type), default=None, help=help_)


def _arg_type(t):
    t = str(t)
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")
