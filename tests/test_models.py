"""lib.models: Table 1's parameter counts, shapes, overrides, errors, and train/eval behaviour of the regularisers."""
import json

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from lib.models import (REPORTED, BasicBlock, DropBranch, OptionError, PreActBlock, build_model, count_parameters,
                        count_weight_layers, list_models, model_summary)

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


# "Total trainable parameters" as the original team's notebooks print them (AlperMumcular/DL-Project1)
NOTEBOOK_PARAMS = {"light_resnet18": 2_811_192, "light_resnet18_v2": 4_389_826, "light_resnet18_v2_b45": 4_998_947,
                   "robust_resnet64": 3_799_978}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_notebooks_exactly(name):
    assert count_parameters(build_model(name)) == NOTEBOOK_PARAMS[name]


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
                "stochastic_depth_rate", "se_reduction", "preact", "num_groups", "se_position",
                "stochastic_depth_mode", "init"):
        assert key in config
    again = build_model(**config)
    assert again.config == model.config and count_parameters(again) == count_parameters(model)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_a_model_with_se_turned_off_rebuilds_from_its_config():
    model = build_model("light_resnet18", se_reduction=0)
    assert not any(".se." in n for n, _ in model.named_parameters())
    again = build_model(**json.loads(json.dumps(model.config)))
    again.load_state_dict(model.state_dict())  # raises if SE came back
    assert count_parameters(again) == count_parameters(model) < 2_811_192


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
    ("light_resnet18_v2", {"se_reduction": -1}, "se_reduction"),
    ("light_resnet18", {"preact": "yes"}, "preact"),
    ("light_resnet18", {"se_position": "middle"}, "se_position"),
    ("light_resnet18", {"preact": False, "se_position": "input"}, "se_position"),
    ("light_resnet18", {"stochastic_depth_mode": "sample"}, "stochastic_depth_mode"),
    ("robust_resnet64", {"init": "xavier"}, "init"),
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


def test_stochastic_depth_rates_per_block_are_the_notebooks():
    # p = 0.1 x (group / 4) x (block / 2), by hand: groups 1..4, blocks 1..2
    model = build_model("light_resnet18_v2")
    rates = [m.p for m in model.modules() if isinstance(m, DropBranch)]
    assert rates == pytest.approx([0.0125, 0.025, 0.025, 0.05, 0.0375, 0.075, 0.05, 0.1])
    assert not any(isinstance(m, (DropBranch, StochasticDepth)) and m.p > 0 for m in build_model("robust_resnet64").modules())


def test_stochastic_depth_drops_the_whole_batch_without_rescaling():
    drop = build_model("light_resnet18_v2", stochastic_depth_rate=0.6).groups[1][1].drop_path  # p = 0.6 x 2/4 x 2/2
    assert drop.p == pytest.approx(0.3)
    torch.manual_seed(0)
    outs = [drop.train()(torch.ones(64, 3)) for _ in range(4000)]
    assert all(set(o.unique().tolist()) in ({0.0}, {1.0}) for o in outs)  # one coin for the batch; kept = unscaled
    dropped = sum(o[0, 0].item() == 0 for o in outs) / len(outs)
    assert dropped == pytest.approx(0.3, abs=3 * (0.3 * 0.7 / 4000) ** 0.5)  # within three standard errors
    assert torch.equal(drop.eval()(torch.ones(64, 3)), torch.ones(64, 3))  # identity at evaluation


def test_stochastic_depth_only_in_training_for_the_whole_model():
    model = build_model("light_resnet18_v2", stochastic_depth_rate=0.9, base_channels=8)
    a, b = _outputs_in(model, train=False)
    assert torch.equal(a, b)
    plain = build_model("light_resnet18_v2", stochastic_depth_rate=0.0, base_channels=8)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(_outputs_in(plain, train=False)[0], a)  # identity at eval: the same outputs without it
    outs = _outputs_in(model, train=True, n=6)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_row_mode_keeps_the_expectation():
    torch.manual_seed(0)
    model = build_model("light_resnet18_v2", stochastic_depth_rate=0.5, stochastic_depth_mode="row")
    drop_path = model.groups[-1][-1].drop_path
    assert isinstance(drop_path, StochasticDepth)
    out = drop_path.train()(torch.ones(20000, 3))
    assert set(out[:, 0].unique().tolist()) == {0.0, 2.0}  # a whole row dropped or scaled by 1 / (1 - p)
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)


def _bn_eval(x, bn):
    return (x - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps) \
        * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


def test_se_acts_on_the_pre_activated_input_before_conv_and_shortcut():
    torch.manual_seed(0)
    block = PreActBlock(16, 32, stride=2, se_reduction=4).eval()  # the notebooks' placement is the default
    for bn in (block.bn1, block.bn2):  # non-trivial statistics, so a misplaced BN would show
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 16, 8, 8)
    with torch.no_grad():
        a = torch.relu(_bn_eval(x, block.bn1))
        se = block.se  # by hand: squeeze (mean over H, W), Linear 16->4, ReLU, Linear 4->16, sigmoid, scale
        assert (se.fc1.in_features, se.fc1.out_features, se.fc2.out_features) == (16, 4, 16)
        assert se.fc1.bias is not None and se.fc2.bias is not None
        gate = torch.sigmoid(torch.relu(a.mean((2, 3)) @ se.fc1.weight.T + se.fc1.bias) @ se.fc2.weight.T + se.fc2.bias)
        a = a * gate[:, :, None, None]
        skip = nn.functional.conv2d(a, block.shortcut.weight, stride=2)
        h = torch.relu(_bn_eval(nn.functional.conv2d(a, block.conv1.weight, stride=2, padding=1), block.bn2))
        expected = nn.functional.conv2d(h, block.conv2.weight, padding=1) + skip
        assert torch.allclose(block(x), expected, atol=1e-5)
        moved = PreActBlock(16, 32, stride=2, se_reduction=4, se_position="output").eval()
        assert moved.se.fc1.in_channels == 32  # torchvision's SqueezeExcitation on the 32-channel branch output


def test_light_models_have_se_in_every_block_on_its_in_channels():
    model = build_model("light_resnet18")
    ses = [(b.bn1.num_features, b.se.fc1.in_features, b.se.fc1.out_features) for g in model.groups for b in g]
    assert ses == [(32, 32, 2), (32, 32, 2), (32, 32, 2), (64, 64, 4), (64, 64, 4), (128, 128, 8), (128, 128, 8),
                   (256, 256, 16)]  # in-channels of each block, reduction 16


def test_kaiming_initialisation_as_the_notebooks():
    torch.manual_seed(0)
    model = build_model("light_resnet18_v2")
    conv = model.groups[3][1].conv2  # 320 -> 320, 3x3: fan_out = 320 x 9
    assert conv.weight.std().item() == pytest.approx((2 / (320 * 9)) ** 0.5, rel=0.02)
    fc = model.head[-1]
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1) and not fc.bias.any()
    se = model.groups[3][1].se.fc1
    assert se.weight.std().item() == pytest.approx(0.01, rel=0.1) and not se.bias.any()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all()) and not m.bias.any() for m in bns)
    plain = build_model("light_resnet18_v2", init="default").head[-1]  # PyTorch's: U(-1/sqrt(320), 1/sqrt(320))
    assert plain.weight.abs().max().item() > 0.04 and plain.bias.any()


def test_post_activation_light_resnet18_is_an_option():
    model = build_model("light_resnet18", preact=False, se_reduction=0, stochastic_depth_rate=0, init="default")
    assert count_parameters(model) == 2_797_610  # kuangliu's ResNet18 at half width (this repo's earlier default)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


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


# Table 1 of the report: label, #Params (M) and validation accuracy (%) as printed
TABLE1 = {"light_resnet18": ("LightResNet18", 2.81, 93.12),
          "light_resnet18_v2": ("LightResNet18_v2 (base=40)", 4.39, 94.35),
          "light_resnet18_v2_b45": ("LightResNet18_v2 (base=45)", 5.00, 94.88),
          "robust_resnet64": ("RobustResNet64", 3.80, 96.93)}


def test_model_summary_is_the_whole_table1_row():
    """Every key of the row, by hand: ResNet-18's 18 weight layers (stem + 4 x 2 x 2 convs + FC), the report's 62."""
    row = model_summary("light_resnet18")
    assert row == {"name": "light_resnet18", "label": "LightResNet18", "parameters": 2_811_192, "params_m": 2.81,
                   "N": 4, "B": 2, "C": "32, 64, 128, 256", "weight_layers": 18, "reported_params_m": 2.81,
                   "reported_val_acc": 93.12}
    for name, (label, params_m, val_acc) in TABLE1.items():
        row = model_summary(build_model(name))  # a model as well as a name
        assert (row["label"], row["reported_params_m"], row["reported_val_acc"]) == (label, params_m, val_acc)
    assert model_summary("robust_resnet64")["weight_layers"] == 62
    small = model_summary("robust_resnet64", base_channels=16, blocks_per_group=2)  # the overrides are applied
    assert (small["B"], small["C"], small["weight_layers"]) == (2, "16, 32, 64", 14)  # stem + 3 x 2 x 2 + FC
    assert small["label"] == "RobustResNet64"


def test_weight_layers_count_the_se_gates_apart():
    """light_resnet18: stem + 16 block convs, 1 FC, 3 projections, 8 SE blocks of 2 Linear layers."""
    assert count_weight_layers(build_model("light_resnet18")) == {"conv": 17, "fc": 1, "shortcut": 3, "se": 16,
                                                                  "total": 18}
    assert count_weight_layers(build_model("light_resnet18", se_reduction=0))["se"] == 0


def test_a_bad_option_error_carries_the_option_value_and_reason():
    with pytest.raises(OptionError) as info:
        build_model("robust_resnet64", dropout=1.5)
    assert (info.value.option, info.value.value, info.value.why) == ("dropout", 1.5, "must be in [0, 1)")
    assert str(info.value) == "dropout=1.5: must be in [0, 1)"


def test_narrow_models_keep_at_least_one_se_unit():
    """c // 16 of each block's in-channels (8, 8, 8, 16, 16, 32, 32, 64 at base 8), at least 1."""
    model = build_model("light_resnet18", base_channels=8)
    assert [b.se.fc1.out_features for g in model.groups for b in g] == [1, 1, 1, 1, 1, 2, 2, 4]


def test_post_activation_blocks_take_se_on_the_output_and_batch_stochastic_depth():
    """preact=False with the light model's SE and stochastic depth: torchvision's SqueezeExcitation on each block's
    output, squeeze width max(c // 16, 8) (MobileNetV3's floor), and the notebooks' whole-batch DropBranch."""
    model = build_model("light_resnet18", preact=False)
    blocks = [b for g in model.groups for b in g]
    assert [b.se.fc1.out_channels for b in blocks] == [8, 8, 8, 8, 8, 8, 16, 16]  # widths 32, 32, 64, ... 256
    assert all(isinstance(b.drop_path, DropBranch) for b in blocks)
    assert [b.drop_path.p for b in blocks] == pytest.approx([0.0125, 0.025, 0.025, 0.05, 0.0375, 0.075, 0.05, 0.1])


def _closed_gate(se):
    with torch.no_grad():
        se.fc2.bias.fill_(-1e4)  # sigmoid(-1e4) = 0: the SE gate multiplies its input by zero


def test_an_output_se_gate_scales_the_branch_only():
    """A closed output gate leaves the shortcut alone: x for a pre-activation identity block, relu(x) for a
    post-activation one (the ReLU after the addition)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    block = PreActBlock(16, 16, se_reduction=4, se_position="output").eval()
    _closed_gate(block.se)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    post = BasicBlock(16, 16, se_reduction=4).eval()
    _closed_gate(post.se)
    with torch.no_grad():
        assert torch.equal(post(x), torch.relu(x))


def test_the_output_se_belongs_to_the_branch():
    """With a projection shortcut the branch owns conv1, bn2, conv2 and an output SE; bn1 and the projection are
    shared with the shortcut (and an input SE too)."""
    out = PreActBlock(16, 32, stride=2, se_reduction=4, se_position="output")
    names = {id(p): n for n, p in out.named_parameters()}
    assert sorted(names[id(p)] for p in out.branch_parameters()) == [
        "bn2.bias", "bn2.weight", "conv1.weight", "conv2.weight", "se.fc1.bias", "se.fc1.weight", "se.fc2.bias",
        "se.fc2.weight"]
    inp = PreActBlock(16, 32, stride=2, se_reduction=4, se_position="input")
    names = {id(p): n for n, p in inp.named_parameters()}
    assert sorted(names[id(p)] for p in inp.branch_parameters()) == ["bn2.bias", "bn2.weight", "conv1.weight",
                                                                     "conv2.weight"]


def test_a_branch_that_never_drops_draws_no_random_number():
    """p = 0 (RobustResNet64's blocks) is the identity in training and leaves the global generator alone, so the
    dropout masks that follow are what they would be without it."""
    drop = DropBranch(0.0).train()
    x = torch.randn(4, 3)
    state = torch.get_rng_state()
    assert torch.equal(drop(x), x)
    assert torch.equal(torch.get_rng_state(), state)


def test_linear_layers_start_centred_at_zero():
    """N(0, 0.01): the FC's 3,200 weights and an SE Linear's 6,400 average to 0 within 5 standard errors."""
    torch.manual_seed(0)
    model = build_model("light_resnet18_v2")
    for linear in (model.head[-1], model.groups[3][1].se.fc1):
        w = linear.weight
        assert abs(w.mean().item()) < 5 * 0.01 / w.numel() ** 0.5
        assert w.std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("name, overrides, option, value", [
    ("light_resnet18", {"base_channels": 16, "widths": [16, 32]}, "base_channels", 16),
    ("light_resnet18", {"widths": []}, "widths", []),
    ("light_resnet18", {"widths": "32, 64"}, "widths", "32, 64"),
    ("light_resnet18", {"widths": [32, 0, 128]}, "widths", [32, 0, 128]),
    ("light_resnet18", {"num_groups": 0}, "num_groups", 0),
    ("light_resnet18", {"widths": [8, 16], "num_groups": 3}, "num_groups", 3),
    ("light_resnet18", {"base_channels": 0}, "base_channels", 0),
    ("light_resnet18", {"num_classes": 0}, "num_classes", 0),
    ("light_resnet18", {"kernel_size": 4}, "kernel_size", 4),
    ("light_resnet18", {"blocks_per_group": 2.5}, "blocks_per_group", 2.5),
    ("light_resnet18", {"stochastic_depth_rate": 1.5}, "stochastic_depth_rate", 1.5),
    ("light_resnet18", {"dropout": "0.1"}, "dropout", "0.1"),  # a string, not a number
    ("light_resnet18", {"dropout": False}, "dropout", False),  # a bool is not a rate
    ("light_resnet18", {"preact": "yes"}, "preact", "yes"),
    ("light_resnet18", {"preact": False, "se_position": "input"}, "se_position", "input"),
    ("light_resnet18", {"se_position": "middle"}, "se_position", "middle"),
    ("light_resnet18", {"init": "xavier"}, "init", "xavier"),
    ("robust_resnet64", {"se_reduction": 16}, "se_reduction", 16),
])
def test_a_bad_override_names_its_option_and_value(name, overrides, option, value):
    """What lib.config turns into the CLI's words: --OPTION VALUE: reason."""
    with pytest.raises(OptionError) as info:
        build_model(name, **overrides)
    assert (info.value.option, info.value.value) == (option, value)
    assert isinstance(info.value.why, str) and info.value.why


def test_num_groups_alone_doubles_the_default_base():
    """num_groups=4 on RobustResNet64 (base 32): 32, 64, 128, 256; num_groups=2: 32, 64."""
    assert build_model("robust_resnet64", num_groups=4, blocks_per_group=1).config["widths"] == [32, 64, 128, 256]
    assert build_model("robust_resnet64", num_groups=2, blocks_per_group=1).config["widths"] == [32, 64]


def test_a_width_of_one_channel_is_allowed():
    """"every width must be an integer >= 1": 1 itself builds (and runs)."""
    model = build_model("light_resnet18", widths=[1, 2], blocks_per_group=1, se_reduction=0)
    assert model.config["widths"] == [1, 2]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_each_group_after_the_first_halves_the_feature_map():
    """Stride 2 entering groups 2 and 3: RobustResNet64's groups output 32x32, 16x16 and 8x8 maps."""
    model = build_model("robust_resnet64", blocks_per_group=1).eval()
    shapes = []
    for group in model.groups:
        group.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape)))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert shapes == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8)]


def test_the_stochastic_depth_coin_is_not_saved_in_checkpoints():
    """The coin buffer is per step, not a weight: a state_dict holds no drop_path entry, so checkpoints keep the
    keys they had before it existed."""
    assert not [k for k in build_model("light_resnet18").state_dict() if "drop_path" in k]


def test_a_post_activation_branch_is_all_but_its_projection():
    block = BasicBlock(16, 32, stride=2)
    names = {id(p): n for n, p in block.named_parameters()}
    assert sorted(names[id(p)] for p in block.branch_parameters()) == [
        "bn1.bias", "bn1.weight", "bn2.bias", "bn2.weight", "conv1.weight", "conv2.weight"]
