"""A run's whole configuration: one dataclass, written to ``config.json``, read back by predict and report.

Defaults are the recipe of the original team's notebooks (AlperMumcular/DL-Project1), the code that produced the
report's numbers (the ``paper`` profile): every batch MixUp or CutMix, crop + flip + RandAugment, no warm-up,
cosine annealing stepped per epoch. The report's prose describes more (colour jitter, rotation, erasing, a warm-up,
half the batches mixed): ``augment="full", mix_prob=0.5, warmup_epochs=5, lr_step="iteration"`` runs that.
``smoke`` is a tiny profile for tests and laptops. Model fields left at ``None`` mean "the architecture's own
default" (see ``lib.models``); ``MODEL_RECIPES`` holds a model's own departures from the recipe.
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
from .models import OptionError, resolve_config

# Warm-up is at most this share of a run: the report's 5 epochs are 1.7% of its 300 (Goyal et al.'s 5 of 90,
# 5.6%); capped at 10%, every run of 50+ epochs keeps the full 5, and a 2-epoch run warms up for 0.2 epochs
# instead of spending all of it raising the learning rate.
WARMUP_MAX_SHARE = 0.1
AUGMENT_OPS = ("crop", "flip", "jitter", "rotation", "randaugment", "autoaugment", "erasing")
AUGMENT_PRESETS = {
    # the notebooks' pipeline: RandomCrop(32, 4), RandomHorizontalFlip, RandAugment() (+ MixUp/CutMix per batch)
    "paper": ("crop", "flip", "randaugment"),
    # the report's prose: crop+flip, colour jitter, rotation, RandAugment, random erasing
    "full": ("crop", "flip", "jitter", "rotation", "randaugment", "erasing"),
    "standard": ("crop", "flip"),
    "none": (),
}


# Every RunConfig field declares its kind in its own definition; what depends on a kind is derived from it below.
KINDS = {
    "run": "what to train",
    "architecture": "architecture (lib.models options; unset: the model's own default)",
    "data": "which data",
    "recipe": "the recipe (0.1 / 0.9 / 5e-4 / 128 / 300: the report's settings)",
    "augmentation": "augmentation",
    "length": "how much of the schedule to run (the learning rates stay those of all --epochs)",
    "numerics": "the same recipe by another route (fixed for a run; not counted against a reproduction)",
    "execution": "where and how to run (may change when resuming)",
}

_TYPE_CHECKS = {"int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
                "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
                "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}


def _kind(kind: str):
    def opt(help: str, default: Any = None):
        return field(default=default, metadata={"help": help, "kind": kind})
    return opt


_run, _arch, _data, _recipe, _aug, _length, _numerics, _exec = map(_kind, KINDS)


@dataclass
class RunConfig:
    model: str = _run("architecture name (lib.models.list_models())", "robust_resnet64")
    profile: str = _run("paper (the report's recipe) or smoke (tiny, CPU-friendly)", "paper")

    dropout: Optional[float] = _arch("dropout inside residual blocks")
    stochastic_depth_rate: Optional[float] = _arch("max residual-branch drop rate (the last block's)")
    base_channels: Optional[int] = _arch("width of the first group; widths double per group")
    widths: Optional[list[int]] = _arch("explicit widths per group, e.g. 45,90,170,340")
    blocks_per_group: Optional[int] = _arch("residual blocks per group (depth)")
    kernel_size: Optional[int] = _arch("conv kernel size ('filter size'); shortcuts stay 1x1")
    se_reduction: Optional[int] = _arch("Squeeze-and-Excitation reduction ratio (0: no SE blocks)")
    se_position: Optional[str] = _arch("SE on the block's pre-activated input (the notebooks') or on the "
                                       "branch output")
    stochastic_depth_mode: Optional[str] = _arch("batch (one coin per step, no rescaling: the notebooks') or "
                                                 "row (per sample, rescaled by 1/(1-p))")
    init: Optional[str] = _arch("kaiming (the notebooks' initialisation) or default (PyTorch's)")
    preact: Optional[bool] = _arch("pre-activation blocks (every model's default); --no-preact: post-activation")

    val_source: str = _data("test (official test batch, as the report) or holdout", "test")
    holdout_fraction: float = _data("fraction of the training batches held out (val_source=holdout)", 0.1)
    train_size: Optional[int] = _data("seeded class-balanced subset of the training split")
    val_size: Optional[int] = _data("seeded class-balanced subset of the validation split")

    epochs: int = _recipe("epochs of the schedule (the cosine annealing runs over all of them)", 300)
    batch_size: int = _recipe("images per step (under torchrun the global batch, shared by the processes)", 128)
    lr: float = _recipe("initial (peak) learning rate", 0.1)
    momentum: float = _recipe("SGD Nesterov momentum", 0.9)
    weight_decay: float = _recipe("SGD weight decay", 5e-4)
    warmup_epochs: float = _recipe("linear warm-up epochs before cosine annealing (the notebooks: none; the "
                                   "report's text: 'a few'); at most a tenth of a run", 0.0)
    lr_step: str = _recipe("epoch (lr constant within an epoch, as CosineAnnealingLR stepped per epoch: the "
                           "notebooks') or iteration (a smooth curve)", "epoch")
    label_smoothing: float = _recipe("cross-entropy label smoothing", 0.1)

    augment: str = _aug("preset (paper, full, standard, none) or a comma list of " + ",".join(AUGMENT_OPS),
                        "paper")
    mix_prob: float = _aug("probability a batch gets MixUp or CutMix, 50/50 (the notebooks: every batch)", 1.0)
    mixup_alpha: float = _aug("MixUp Beta(alpha, alpha)", 1.0)
    cutmix_alpha: float = _aug("CutMix Beta(alpha, alpha)", 1.0)
    color_jitter: float = _aug("brightness/contrast/saturation jitter strength, 0-2 (hue: a quarter)", 0.2)
    rotation_degrees: float = _aug("RandomRotation range +-degrees", 10.0)
    randaugment_ops: int = _aug("RandAugment operations per image", 2)
    randaugment_magnitude: int = _aug("RandAugment magnitude (0-30)", 9)
    erasing_prob: float = _aug("RandomErasing probability", 0.25)
    erasing_max_area: float = _aug("RandomErasing largest area fraction (scale (0.02, this))", 0.33)
    erasing_value: str = _aug("RandomErasing fill after normalisation: zero, or random (per-pixel N(0, 1))", "zero")

    stop_after_epochs: Optional[int] = _length("train epochs 1..N of the schedule, then stop (resumable)")
    time_limit: Optional[float] = _length("minutes: stop after the last epoch predicted to fit (resumable)")

    # the original runs were unseeded: no seed is "the paper's", another seed is one more draw of the experiment
    seed: int = _numerics("random seed", 0)
    loader: str = _numerics("torchvision (per-sample DataLoader), device (batched, data on device), auto", "auto")
    sync_bn: bool = _numerics("batch statistics over all torchrun processes (several processes only)", False)
    # auto: on CUDA only (lib.augment.resolve_channels_last says why not on the CPU)
    channels_last: Optional[bool] = _numerics("channels_last memory format (auto: on CUDA, off on the CPU)")
    amp: bool = _numerics("mixed precision on CUDA (bf16 from compute capability 8.0, else fp16 + GradScaler)",
                          True)

    data_dir: str = _exec("folder holding cifar-10-batches-py/ (or that folder itself)", "data")
    download: bool = _exec("download the official CIFAR-10 archive (MD5-checked) when absent", False)
    out: str = _exec("run folder (history.csv, config.json, last.pt, best.pt)", "runs/run")
    device: str = _exec("auto, cpu or cuda", "auto")
    num_workers: Optional[int] = _exec("DataLoader workers for the torchvision loader (auto if unset)")
    compile: bool = _exec("torch.compile the model's forward and backward (off by default)", False)
    cuda_graphs: bool = _exec("with --compile on CUDA: replay each step as CUDA graphs (inductor's "
                              "reduce-overhead mode)", False)
    progress: bool = _exec("tqdm progress bar per epoch on a terminal (elsewhere one line per epoch)", True)
    resume: bool = _exec("continue from RUN_DIR/last.pt", False)

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
        return {n: getattr(self, n) for n in MODEL_FIELDS if getattr(self, n) is not None}

    def warmup_epochs_used(self) -> float:
        """The warm-up the schedule runs: ``warmup_epochs``, capped at WARMUP_MAX_SHARE of the run."""
        return min(self.warmup_epochs, WARMUP_MAX_SHARE * self.epochs)

    def validate(self) -> dict[str, Any]:
        """Check every setting, files untouched; raise UserError naming it. Returns the architecture the settings
        build (``lib.models.resolve_config``'s model_config): a run resolves it here, once."""
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
        need(0.02 < self.erasing_max_area <= 1, "erasing_max_area", "must be in (0.02, 1]")
        need(self.erasing_value in ("zero", "random"), "erasing_value", "expected zero or random")
        need(self.lr_step in ("epoch", "iteration"), "lr_step", "expected epoch or iteration")
        if self.stop_after_epochs is not None:
            need(1 <= self.stop_after_epochs <= self.epochs, "stop_after_epochs",
                 f"must be in [1, --epochs {self.epochs}] (epochs 1..N of the schedule)")
        if self.time_limit is not None:
            need(self.time_limit > 0, "time_limit", "must be > 0 (minutes)")
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
        self.augment_ops()
        try:  # the architecture's own checks (name, rates, widths, kernel size, ...), without building it
            return resolve_config(self.model, **self.model_overrides())
        except OptionError as exc:
            if exc.option in MODEL_FIELDS:  # a setting the user gave: named as they gave it
                raise UserError(f"--{exc.option.replace('_', '-')} {exc.value!r}: {exc.why}") from None
            raise UserError(f"--model {self.model}: {exc}") from None
        except ValueError as exc:  # an unknown model name
            raise UserError(f"--model {self.model}: {exc}") from None

    def schedule_words(self, epochs_done: int) -> str:
        """"300 epochs" for a whole schedule, "3 of 300 epochs" for a part of it."""
        return f"{self.epochs} epochs" if epochs_done >= self.epochs else f"{epochs_done} of {self.epochs} epochs"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def fields_of(*kinds: str) -> tuple[str, ...]:
    """The RunConfig fields of these kinds, in definition order."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kind(s) {sorted(unknown)}; expected {', '.join(KINDS)}")
    return tuple(f.name for f in fields(RunConfig) if f.metadata["kind"] in kinds)


# The lib.models options a run sets (None: the architecture's default); the resolved one is config.json's model_config.
MODEL_FIELDS = fields_of("architecture")
# What --resume may change: how much of the schedule runs, and where and how.
RESUME_MAY_CHANGE = frozenset(fields_of("length", "execution"))
# What does not count against a reproduction (lib.runs): the above and the same recipe by another route.
NOT_COUNTED = frozenset(fields_of("length", "numerics", "execution"))
# What does not name a run folder (lib.colab.notebook.default_run_name): the model and profile name it first.
NOT_IN_RUN_NAME = frozenset(fields_of("run", "length", "execution"))


# A profile is a set of defaults laid over the dataclass defaults, a model's recipe over the profile, explicit
# options over all three.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    # Tiny: a few hundred images, 2 epochs. Synthetic CIFAR-format data is generated when CIFAR-10 is absent.
    "smoke": {"epochs": 2, "train_size": 320, "val_size": 160, "batch_size": 32,
              "data_dir": "data/smoke", "out": "runs/smoke"},
}


# What the original notebook of a model ran differently from the recipe above.
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    # the base-45 notebooks (0.85674/086851.ipynb, 0.86771/086771.ipynb): AutoAugment(CIFAR10) in place of
    # RandAugment, then RandomErasing(p=0.5, scale=(0.02, 0.1), value='random') after Normalize
    "light_resnet18_v2_b45": {"augment": "crop,flip,autoaugment,erasing", "erasing_prob": 0.5,
                              "erasing_max_area": 0.1, "erasing_value": "random"},
}


def make_config(profile: str = "paper", **overrides: Any) -> RunConfig:
    """The profile's settings, the model's recipe (MODEL_RECIPES) and ``overrides`` on top (``None`` values in
    overrides are ignored)."""
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r}: expected one of {', '.join(PROFILES)}")
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    model = given.get("model", PROFILES[profile].get("model", RunConfig.model))
    recipe = MODEL_RECIPES.get(model, {}) if isinstance(model, str) else {}
    cfg = RunConfig(**{**PROFILES[profile], **recipe, **given, "profile": profile})
    cfg.validate()
    return cfg


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
    """One ``--kebab-case`` option per RunConfig field, in one --help group per kind; defaults are None so
    profiles can fill them."""
    nested = isinstance(parser, argparse._ArgumentGroup)  # a group in a group is deprecated: options go straight in
    groups = {kind: parser if nested else parser.add_argument_group(title) for kind, title in KINDS.items()}
    for f in fields(RunConfig):
        if f.name in skip:
            continue
        group, flag, help_ = groups[f.metadata["kind"]], "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.type in ("bool", bool) or f.type == "Optional[bool]":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.name == "widths":
            group.add_argument(flag, dest=f.name, type=_int_list, default=None, metavar="W1,W2,...", help=help_)
        else:
            group.add_argument(flag, dest=f.name, type=_arg_type(f.type), default=None, help=help_)


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
