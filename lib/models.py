"""The report's CIFAR-10 ResNets, built by name: ``build_model("robust_resnet64", dropout=0.2)``.

The defaults are the networks of the original team's notebooks (AlperMumcular/DL-Project1, the code that made the
report's numbers). Read top-down: the pre-activation block and the network every Table 1 model is, the registry
(one line per Table 1 row), the block's parts (SE, stochastic depth), the options and their checks, and last the
post-activation block of the earlier variants.
Every model accepts the same overrides and carries ``model.config``, the fully resolved architecture:
``build_model(**model.config)`` rebuilds it. Trainable parameters (10 classes), as the notebooks print them:

    light_resnet18          2,811,192  (report 2.81M)    light_resnet18_v2_b45   4,998,947  (report 5.00M)
    light_resnet18_v2       4,389,826  (report 4.39M)    robust_resnet64         3,799,978  (report 3.80M)

Options that rebuild this repository's earlier reading of the report's prose (documented, not defaults):
``se_position="output"`` (torchvision's SqueezeExcitation on the branch output, squeeze width max(c // r, 8), as
MobileNetV3), ``stochastic_depth_mode="row"`` (torchvision's per-sample StochasticDepth, kept rows scaled by
1/(1-p)), ``init="default"`` (PyTorch's own initialisation), ``preact=False`` (post-activation blocks, kuangliu's
ResNet-18; with ``se_reduction=0, stochastic_depth_rate=0`` the earlier light_resnet18).
"""
from __future__ import annotations

import json
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation, StochasticDepth


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016), as the notebooks: BN-ReLU [-SE], conv, BN-ReLU-dropout-conv, add.

    se_position "input" (the notebooks' LightResNet18s): SE rescales the pre-activated input, and both the first
    conv and the 1x1 projection shortcut take its output; "output": SE on the branch output before the addition.
    'BN after each conv' holds: every conv's output is next normalised by a BN (this block's bn2, the next
    block's bn1 after the addition, or the network's final BN).
    """

    def __init__(self, cin, cout, stride=1, kernel_size=3, dropout=0.0, drop_path=0.0, se_reduction=None,
                 se_position="input", stochastic_depth_mode="batch"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.se_in = se_position == "input"
        self.se = _se(cin if self.se_in else cout, se_reduction, se_position)
        self.conv1 = _conv(cin, cout, kernel_size, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv(cout, cout, kernel_size)
        self.dropout = nn.Dropout(dropout)  # between the two convs, as the notebooks' RobustResNet64
        self.drop_path = _drop_path(drop_path, stochastic_depth_mode)
        self.shortcut = None
        if stride != 1 or cin != cout:  # 1x1 projection without BN, on the pre-activated input; not in the 62 layers
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def branch_parameters(self) -> list[nn.Parameter]:
        """What only the residual branch uses: with a projection shortcut, all but bn1, the input SE and the
        projection, which the shortcut takes too; with the identity, all (x itself is the shortcut)."""
        if self.shortcut is None:
            return list(self.parameters())
        shared = [*self.bn1.parameters(), *self.shortcut.parameters(), *(self.se.parameters() if self.se_in else [])]
        return _without(self.parameters(), shared)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if self.se_in:
            out = self.se(out)
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(out)))))
        if not self.se_in:
            out = self.se(out)
        return self.drop_path(out) + skip


class ResNet(nn.Module):
    """CIFAR ResNet: kxk stem (stride 1, no max-pool: 32x32 input), groups of blocks, global average pool, FC."""

    def __init__(self, preact, widths, blocks_per_group, num_classes=10, kernel_size=3, dropout=0.0,
                 stochastic_depth_rate=0.0, se_reduction=None, se_position="input", stochastic_depth_mode="batch",
                 init="kaiming", **_):  # **_: config's name, num_groups
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        # pre-activation: the first block's BN-ReLU follows the stem conv, and the net ends with BN-ReLU
        self.stem = nn.Sequential(_conv(3, widths[0], kernel_size),
                                  *([] if preact else [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]))
        cin, groups = widths[0], []
        for g, width in enumerate(widths, 1):
            blocks = []
            for b in range(1, blocks_per_group + 1):
                # the notebooks' rule: rate x (group / groups) x (block / blocks), the full rate at the last block
                p = stochastic_depth_rate * (g / len(widths)) * (b / blocks_per_group)
                blocks.append(block(cin, width, 2 if g > 1 and b == 1 else 1, kernel_size, dropout, p,
                                    se_reduction, se_position, stochastic_depth_mode))
                cin = width
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.head = nn.Sequential(*([nn.BatchNorm2d(cin), nn.ReLU(inplace=True)] if preact else []),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        if init == "kaiming":
            init_weights(self)

    def forward(self, x):
        return self.head(self.groups(self.stem(x)))


def init_weights(model: nn.Module) -> None:
    """The notebooks' initialisation: Conv2d kaiming_normal_ (fan_out, ReLU gain), BatchNorm weight 1 and bias 0,
    Linear N(0, 0.01) with zero bias (the SE block's Linear layers included)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)  # k // 2 keeps the size for odd k


# ----------------------------------------------------------------------------------------------------------------------
# The registry: one line per Table 1 row, as the original notebooks built them; every model takes the same
# overrides (timm's create_model idea)
# ----------------------------------------------------------------------------------------------------------------------
DEFAULTS = dict(kernel_size=3, dropout=0.0, stochastic_depth_rate=0.0, se_reduction=0, se_position="input",
                stochastic_depth_mode="batch", init="kaiming")  # 3x3 convs and Kaiming init: the notebooks'
# LightResNet18 (base 32) and LightResNet18_v2 are one network: SE r=16 on each block's input, stochastic depth 0.1
LIGHT = dict(preact=True, blocks_per_group=2, stochastic_depth_rate=0.1, se_reduction=16)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "light_resnet18": dict(LIGHT, widths=[32, 64, 128, 256]),
    "light_resnet18_v2": dict(LIGHT, widths=[40, 80, 160, 320]),
    "light_resnet18_v2_b45": dict(LIGHT, widths=[45, 90, 170, 340]),  # sic: 170 is not 2 x 90 (Table 1, notebook)
    "robust_resnet64": dict(preact=True, widths=[32, 64, 128], blocks_per_group=10, dropout=0.1),
}

# Table 1 of the report, as printed (the reproduction's own numbers come from runs, never from here).
REPORTED: dict[str, dict[str, Any]] = {
    "light_resnet18": {"label": "LightResNet18", "params_m": 2.81, "val_acc": 93.12},
    "light_resnet18_v2": {"label": "LightResNet18_v2 (base=40)", "params_m": 4.39, "val_acc": 94.35},
    "light_resnet18_v2_b45": {"label": "LightResNet18_v2 (base=45)", "params_m": 5.00, "val_acc": 94.88},
    "robust_resnet64": {"label": "RobustResNet64", "params_m": 3.80, "val_acc": 96.93},
}


def build_model(name: str, num_classes: int = 10, **overrides: Any) -> nn.Module:
    """The one door to every architecture. Bad overrides raise ValueError naming the option and the reason."""
    return build(resolve_config(name, num_classes, **overrides))


def build(config: dict[str, Any]) -> nn.Module:
    """The network of an already resolved ``config`` (``resolve_config``'s; a run resolves its own once)."""
    model = ResNet(**config)
    model.config = config
    return model


def list_models() -> list[str]:
    return list(ARCHITECTURES)


def model_summary(name_or_model: str | nn.Module, **overrides: Any) -> dict[str, Any]:
    """One Table 1 row's architecture columns (N, B, C, #Params) plus the report's own figures."""
    model = build_model(name_or_model, **overrides) if isinstance(name_or_model, str) else name_or_model
    c, reported = model.config, REPORTED.get(model.config["name"], {})
    params = count_parameters(model)
    return {"name": c["name"], "label": reported.get("label", c["name"]), "parameters": params,
            "params_m": round(params / 1e6, 2), "N": c["num_groups"], "B": c["blocks_per_group"],
            "C": ", ".join(map(str, c["widths"])), "weight_layers": count_weight_layers(model)["total"],
            "reported_params_m": reported.get("params_m"), "reported_val_acc": reported.get("val_acc")}


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_weight_layers(model: nn.Module) -> dict[str, int]:
    """Conv and linear layers by role; ``total`` = stem + block convs + FC, as the report counts (62)."""
    counts = {"conv": 0, "fc": 0, "shortcut": 0, "se": 0}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            role = ("shortcut" if "shortcut" in name else "se" if ".se." in name
                    else "conv" if isinstance(m, nn.Conv2d) else "fc")
            counts[role] += 1
    return {**counts, "total": counts["conv"] + counts["fc"]}


# ----------------------------------------------------------------------------------------------------------------------
# The block's parts: Squeeze-and-Excitation, stochastic depth
# ----------------------------------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    """The notebooks' SE block: global average pool, Linear(c, c // r) + ReLU, Linear(c // r, c) + sigmoid, scale.
    torchvision's SqueezeExcitation computes the same with 1x1 convolutions; Linear layers keep the notebooks'
    Linear initialisation, N(0, 0.01)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        squeezed = max(channels // reduction, 1)  # c // r as the notebooks; the floor only for narrow test models
        self.fc1, self.fc2 = nn.Linear(channels, squeezed), nn.Linear(squeezed, channels)

    def forward(self, x):
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


def _se(channels: int, reduction: int | None, position: str) -> nn.Module:
    if not reduction:
        return nn.Identity()
    if position == "input":
        return SqueezeExcite(channels, reduction)
    return SqueezeExcitation(channels, max(channels // reduction, 8))  # floor of 8 units, as MobileNetV3


class DropBranch(nn.Module):
    """The notebooks' stochastic depth: in training the residual branch is dropped for the whole batch with
    probability p (one coin per forward pass), kept branches are not rescaled; identity at evaluation.

    The coin is a 0/1 tensor on the branch's device: no host sync and no Python branch on data (torch.compile).
    By itself the block draws it (``torch.rand``, the global generator); in training,
    ``lib.recipe.StochasticDepthCoins`` draws every block's coin on the host per step and fills ``keep`` before the
    step (``host_coins``)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.host_coins = False
        self.register_buffer("keep", torch.ones(()), persistent=False)  # 1: kept, 0: dropped (host_coins)

    def forward(self, branch):
        if not self.training or self.p == 0:
            return branch
        keep = self.keep if self.host_coins else torch.rand((), device=branch.device) >= self.p
        return branch * keep.to(branch.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode=batch, no rescaling"


def _drop_path(p: float, mode: str) -> nn.Module:
    # "row": per sample, kept rows scaled by 1/(1-p) (torchvision, Huang et al.'s expectation-preserving form)
    return DropBranch(p) if mode == "batch" else StochasticDepth(p, mode="row")


def _without(params, shared) -> list[nn.Parameter]:
    shared_ids = {id(p) for p in shared}
    return [p for p in params if id(p) not in shared_ids]


# ----------------------------------------------------------------------------------------------------------------------
# The options and their checks
# ----------------------------------------------------------------------------------------------------------------------
OPTIONS = ("preact", "num_groups", "base_channels", "widths", "blocks_per_group", "kernel_size", "dropout",
           "stochastic_depth_rate", "se_reduction", "se_position", "stochastic_depth_mode", "init")
SE_POSITIONS = ("input", "output")
STOCHASTIC_DEPTH_MODES = ("batch", "row")
INITS = ("kaiming", "default")


def resolve_config(name: str, num_classes: int = 10, **overrides: Any) -> dict[str, Any]:
    """The architecture's defaults with ``overrides`` on top, checked; ``None`` means the default."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(ARCHITECTURES)}")
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(map(repr, unknown))} for {name}; "
                         f"expected {', '.join(OPTIONS)}")
    o = {k: v for k, v in overrides.items() if v is not None}
    arch = {**DEFAULTS, **ARCHITECTURES[name]}
    c = {**arch, **o}
    if not isinstance(c["preact"], bool):
        _fail("preact", c["preact"], "must be true or false")
    if not c["preact"] and "se_position" not in o:
        c["se_position"] = "output"  # post-activation blocks take SE on their output only
    for option, check in _CHECKS.items():
        c[option] = check(option, c[option])
    if "se_reduction" in o and c["se_reduction"] and not arch["se_reduction"]:
        _fail("se_reduction", o["se_reduction"], f"{name} has no Squeeze-and-Excitation blocks")
    if not c["preact"] and c["se_position"] == "input" and c["se_reduction"]:
        _fail("se_position", "input", "post-activation blocks (preact=False) take SE on the output only")
    widths = _widths(arch["widths"], o)
    # se_reduction 0: no SE blocks (kept as 0, so model.config rebuilds without them)
    return {"name": name, "num_classes": _int("num_classes", num_classes), "preact": c["preact"],
            "num_groups": len(widths), "widths": widths, **{k: c[k] for k in _CHECKS}}


def _widths(default: list[int], o: dict[str, Any]) -> list[int]:
    """Explicit ``widths``, or ``base_channels`` doubling per group over ``num_groups``, or the default."""
    if "base_channels" in o and "widths" in o:
        _fail("base_channels", o["base_channels"], "give either base_channels or widths, not both")
    num_groups = _int("num_groups", o.get("num_groups", len(default)))
    if "widths" in o:
        widths = o["widths"]
        if not isinstance(widths, (list, tuple)) or not widths:
            _fail("widths", widths, "must be a non-empty list of channel counts, one per group")
        if not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths):
            _fail("widths", widths, "every width must be an integer >= 1")
        if "num_groups" in o and num_groups != len(widths):
            _fail("num_groups", num_groups, f"widths {list(widths)} give {len(widths)} groups")
        return [int(w) for w in widths]
    if "base_channels" in o or num_groups != len(default):
        base = _int("base_channels", o.get("base_channels", default[0]))
        return [base * 2 ** g for g in range(num_groups)]  # widths double per group
    return list(default)


class OptionError(ValueError):
    """A value an architecture cannot take, naming the option (lib.config turns it into the CLI's words)."""

    def __init__(self, option: str, value: Any, why: str):
        super().__init__(f"{option}={value!r}: {why}")
        self.option, self.value, self.why = option, value, why


def _fail(option: str, value: Any, why: str):
    raise OptionError(option, value, why)


def _int(option, value, low=1):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        _fail(option, value, f"must be an integer >= {low}")
    return int(value)


def _rate(option, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < 1:
        _fail(option, value, "must be in [0, 1)")
    return float(value)


def _choice(option, value, choices):
    if value not in choices:
        _fail(option, value, f"expected one of {', '.join(choices)}")
    return value


def _odd(option, value):
    if _int(option, value) % 2 == 0:
        _fail(option, value, "must be odd (padding k // 2 keeps the 32x32 size only for odd k)")
    return int(value)


# The options checked one by one (widths and preact, which others depend on, are checked in resolve_config)
_CHECKS = {"blocks_per_group": _int, "kernel_size": _odd, "dropout": _rate, "stochastic_depth_rate": _rate,
           "se_reduction": lambda option, value: _int(option, value, low=0),
           "se_position": lambda option, value: _choice(option, value, SE_POSITIONS),
           "stochastic_depth_mode": lambda option, value: _choice(option, value, STOCHASTIC_DEPTH_MODES),
           "init": lambda option, value: _choice(option, value, INITS)}


# ----------------------------------------------------------------------------------------------------------------------
# The earlier variants: post-activation blocks (kuangliu's ResNet-18), format-1 checkpoints
# ----------------------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Post-activation block of ResNet-18 (as kuangliu/pytorch-cifar): conv-BN-ReLU-conv-BN, add, ReLU."""

    def __init__(self, cin, cout, stride=1, kernel_size=3, dropout=0.0, drop_path=0.0, se_reduction=None,
                 se_position="output", stochastic_depth_mode="row"):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, kernel_size, stride), nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2, self.bn2 = _conv(cout, cout, kernel_size), nn.BatchNorm2d(cout)
        self.se = _se(cout, se_reduction, "output")  # resolve_config allows only "output" here
        self.drop_path = _drop_path(drop_path, stochastic_depth_mode)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:  # 1x1 projection + BN (ResNet's option B, as kuangliu)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def branch_parameters(self) -> list[nn.Parameter]:
        """What only the residual branch uses: all but the shortcut's."""
        return _without(self.parameters(), self.shortcut.parameters())

    def forward(self, x):
        out = self.dropout(F.relu(self.bn1(self.conv1(x))))
        out = self.drop_path(self.se(self.bn2(self.conv2(out))))
        return F.relu(out + self.shortcut(x))


# model_config of checkpoints written before these options existed (checkpoint format 1): the earlier models
LEGACY_OPTIONS = {"se_position": "output", "stochastic_depth_mode": "row", "init": "default"}


def as_recorded(model_config: dict[str, Any]) -> dict[str, Any]:
    """A model_config as config.json and checkpoints hold it, whenever it was written, so that two compare equal
    exactly when they build the same network: JSON's types (lists, not tuples), options absent from an earlier
    record at their earlier behaviour (LEGACY_OPTIONS), and no SE as 0 (recorded as null before)."""
    config = json.loads(json.dumps(model_config))
    for option, value in LEGACY_OPTIONS.items():
        config.setdefault(option, value)
    if "se_reduction" in config:
        config["se_reduction"] = config["se_reduction"] or 0
    return config
