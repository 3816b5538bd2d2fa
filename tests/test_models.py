"""lib.models: Table 1's parameter counts, shapes, overrides, errors, and train/eval behaviour of the regularisers."""
import json

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from lib.models import REPORTED, build_model, count_parameters, count_weight_layers, list_models, model_summary

NAMES = ["light_resnet18", "light_resnet18_v2", "light_resnet18_v2_b45", "robust_resnet64"]


def _convs(model):
    """(name, kernel size) of every conv outside the SE gates."""
    return [(n, m.kernel_size) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".se." not in n]


def test_registry_lists_the_four_table1_models():
    assert list_models() == NAMES
    assert set(REPORTED) == set(NAMES)


# #Params (M) as printed in the original report's Table 1
TABLE1_PARAMS_M = {"light_resnet18": 2.81, "light_resnet18_v2": 4.39, "light_resnet18_v2_b45": 5.00,
                   "robust_resnet64": 3.80}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_table1(name):
    params = count_parameters(build_model(name))
    assert abs(params / 1e6 - TABLE1_PARAMS_M[name]) < 0.02, params


@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        small = build_model(name, num_classes=7, blocks_per_group=1, base_channels=8).eval()
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_robust_resnet64_has_62_weight_layers():
    counts = count_weight_layers(build_model("robust_resnet64"))
    assert counts["total"] == 62 and counts["conv"] == 61 and counts["fc"] == 1  # stem + 3 x 10 x 2 + FC
    assert counts["shortcut"] == 2  # the 1x1 projections entering groups 2 and 3, counted apart


def test_table1_columns_come_from_the_config():
    rows = {n: model_summary(n) for n in NAMES}
    assert [(r["N"], r["B"], r["C"]) for r in rows.values()] == [
        (4, 2, "32, 64, 128, 256"), (4, 2, "40, 80, 160, 320"), (4, 2, "45, 90, 170, 340"), (3, 10, "32, 64, 128")]
    assert rows["robust_resnet64"]["params_m"] == 3.80


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_rebuilds_the_same_architecture(name):
    torch.manual_seed(0)
    model = build_model(name, dropout=0.3, blocks_per_group=1)  # overrides must survive the round trip too
    config = json.loads(json.dumps(model.config))  # JSON-serialisable
    for key in ("name", "num_classes", "widths", "blocks_per_group", "kernel_size", "dropout",
                "stochastic_depth_rate", "se_reduction", "preact", "num_groups"):
        assert key in config
    again = build_model(**config)
    assert again.config == model.config and count_parameters(again) == count_parameters(model)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_kernel_size_changes_convs_but_not_shortcuts():
    convs = _convs(build_model("light_resnet18_v2", kernel_size=5, blocks_per_group=1))
    shortcuts = [k for n, k in convs if "shortcut" in n]
    assert shortcuts and all(k == (1, 1) for k in shortcuts)
    assert all(k == (5, 5) for n, k in convs if "shortcut" not in n)
    model = build_model("robust_resnet64", kernel_size=5, blocks_per_group=1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # padding keeps the size


def test_base_channels_and_widths_and_depth():
    model = build_model("robust_resnet64", base_channels=16, blocks_per_group=2)
    assert model.config["widths"] == [16, 32, 64]
    assert [len(g) for g in model.groups] == [2, 2, 2]
    assert count_weight_layers(model)["total"] == 14  # stem + 3 groups x 2 blocks x 2 convs + FC
    assert build_model("light_resnet18", base_channels=16).config["widths"] == [16, 32, 64, 128]
    model = build_model("light_resnet18", widths=[8, 16], blocks_per_group=3)
    assert model.config["num_groups"] == 2 and [len(g) for g in model.groups] == [3, 3]
    assert model.head[-1].in_features == 16
    assert build_model("robust_resnet64", dropout=None, widths=None).config == build_model("robust_resnet64").config


@pytest.mark.parametrize("name, overrides, option", [
    ("resnet50", {}, "resnet50"),
    ("robust_resnet64", {"depth": 3}, "depth"),
    ("robust_resnet64", {"widths": [32, -64, 128]}, "widths"),
    ("robust_resnet64", {"widths": [32, 0, 128]}, "widths"),
    ("robust_resnet64", {"widths": []}, "widths"),
    ("robust_resnet64", {"base_channels": 0}, "base_channels"),
    ("robust_resnet64", {"base_channels": 16, "widths": [16, 32]}, "base_channels"),
    ("robust_resnet64", {"kernel_size": 4}, "kernel_size"),
    ("robust_resnet64", {"kernel_size": -3}, "kernel_size"),
    ("robust_resnet64", {"blocks_per_group": 0}, "blocks_per_group"),
    ("robust_resnet64", {"blocks_per_group": 2.5}, "blocks_per_group"),
    ("robust_resnet64", {"dropout": 1.0}, "dropout"),
    ("robust_resnet64", {"dropout": -0.1}, "dropout"),
    ("robust_resnet64", {"stochastic_depth_rate": 1.5}, "stochastic_depth_rate"),
    ("robust_resnet64", {"se_reduction": 16}, "se_reduction"),
    ("light_resnet18_v2", {"se_reduction": 0}, "se_reduction"),
    ("light_resnet18", {"preact": True}, "preact"),
    ("light_resnet18", {"widths": [8, 16], "num_groups": 3}, "num_groups"),
    ("light_resnet18", {"num_classes": 0}, "num_classes"),
])
def test_bad_override_is_a_value_error_naming_the_option(name, overrides, option):
    with pytest.raises(ValueError, match=option):
        build_model(name, **overrides)


def _outputs_in(model, train, n=2):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    model.train(train)
    with torch.no_grad():
        return [model(x) for _ in range(n)]


def test_stochastic_depth_drops_branches_only_in_training():
    model = build_model("light_resnet18_v2", stochastic_depth_rate=0.9, base_channels=8)
    drop_paths = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    rates = [m.p for m in drop_paths]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.9)  # linear rule, full rate at the last block
    dropped = []
    hooks = [m.register_forward_hook(lambda m, i, o: dropped.extend((o.flatten(1) == 0).all(1).tolist()))
             for m in drop_paths]
    a, b = _outputs_in(model, train=True)
    assert not torch.allclose(a, b) and any(dropped) and not all(dropped)
    dropped.clear()
    a, b = _outputs_in(model, train=False)
    assert torch.equal(a, b) and not any(dropped)
    for h in hooks:
        h.remove()
    # identity at eval: the same weights without stochastic depth give the very same outputs
    plain = build_model("light_resnet18_v2", stochastic_depth_rate=0.0, base_channels=8)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(_outputs_in(plain, train=False)[0], a)


def test_stochastic_depth_keeps_the_expectation():
    torch.manual_seed(0)
    drop_path = build_model("light_resnet18_v2", stochastic_depth_rate=0.5).groups[-1][-1].drop_path
    out = drop_path.train()(torch.ones(20000, 3))
    assert set(out[:, 0].unique().tolist()) == {0.0, 2.0}  # a whole row dropped or scaled by 1 / (1 - p)
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)


def test_dropout_only_in_training():
    small = {"blocks_per_group": 2, "base_channels": 8}
    a, b = _outputs_in(build_model("robust_resnet64", dropout=0.0, **small), train=True)
    assert torch.equal(a, b)  # without dropout, training-mode outputs are deterministic...
    model = build_model("robust_resnet64", dropout=0.5, **small)
    a, b = _outputs_in(model, train=True)
    assert not torch.allclose(a, b)  # ...so the variation is dropout's
    a, b = _outputs_in(model, train=False)
    assert torch.equal(a, b)
    plain = build_model("robust_resnet64", dropout=0.0, **small)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(_outputs_in(plain, train=False)[0], a)
