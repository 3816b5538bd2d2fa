"""A run's settings at their edges: every range check accepts its boundary values and refuses the first value beyond
them, with the one line a user reads; types, presets, profiles, recipes, config.json and the --options, by hand.
Nothing here touches a file except the config.json tests."""
import argparse
import json

import numpy as np
import pytest

from lib.common import UserError
from lib.config import RunConfig, add_config_arguments, fields_of, load_config, make_config, save_config

# option: (accepted values, refused values, the reason printed); the boundaries themselves are in both lists' ends
EDGES = {
    "epochs": ([1, 2], [0, -1], "must be >= 1"),
    "batch_size": ([1], [0], "must be >= 1"),
    "lr": ([1e-12, 5.0], [0.0, -0.1], "must be > 0"),
    "momentum": ([0.0, 0.999], [1.0, -0.01], "must be in [0, 1)"),
    "weight_decay": ([0.0], [-1e-9], "must be >= 0"),
    "warmup_epochs": ([0.0, 3.5], [-0.5], "must be >= 0"),
    "label_smoothing": ([0.0, 0.99], [1.0, -0.1], "must be in [0, 1)"),
    "mix_prob": ([0.0, 1.0], [-0.01, 1.01], "must be in [0, 1]"),
    "mixup_alpha": ([1e-6], [0.0, -1.0], "must be > 0"),
    "cutmix_alpha": ([1e-6], [0.0, -1.0], "must be > 0"),
    "color_jitter": ([0.0, 2.0], [-0.1, 2.01], "must be in [0, 2] (the hue shift j/4 is at most 0.5)"),
    "rotation_degrees": ([0.0, 180.0], [-1.0], "must be >= 0"),
    "randaugment_ops": ([0, 5], [-1], "must be >= 0"),
    "randaugment_magnitude": ([0, 30], [-1, 31], "must be in [0, 30]"),
    "erasing_prob": ([0.0, 1.0], [-0.1, 1.1], "must be in [0, 1]"),
    "erasing_max_area": ([0.021, 1.0], [0.02, 1.01], "must be in (0.02, 1]"),
    "erasing_value": (["zero", "random"], ["one", "Zero"], "expected zero or random"),
    "lr_step": (["epoch", "iteration"], ["step", "Epoch"], "expected epoch or iteration"),
    "time_limit": ([0.01, None], [0.0, -5.0], "must be > 0 (minutes)"),
    "val_source": (["test", "holdout"], ["train", ""], "expected test or holdout"),
    "holdout_fraction": ([0.01, 0.99], [0.0, 1.0], "must be in (0, 1)"),
    "train_size": ([None, 10], [9, 0], "must be >= 10 (one per class)"),
    "val_size": ([None, 10], [9, 0], "must be >= 10 (one per class)"),
    "loader": (["auto", "torchvision", "device"], ["gpu", "Device"], "expected auto, torchvision or device"),
    "num_workers": ([None, 0, 8], [-1], "must be >= 0"),
    "seed": ([0, 2**31], [-1], "must be >= 0"),
    "device": (["auto", "cpu", "cuda", "cuda:0", "cuda:12"], ["gpu", "cuda:", "cuda:x", "cpu:0", "cuda:1 "],
               "expected auto, cpu, cuda or cuda:N"),
}


@pytest.mark.parametrize("option", sorted(EDGES))
def test_each_range_accepts_its_edges_and_refuses_beyond_them(option):
    ok, bad, why = EDGES[option]
    for value in ok:
        RunConfig(**{option: value}).validate()  # None: an optional setting left unset
    flag = "--" + option.replace("_", "-")
    for value in bad:
        with pytest.raises(UserError) as info:
            RunConfig(**{option: value}).validate()
        assert str(info.value) == f"{flag} {value!r}: {why}"
        with pytest.raises(UserError):
            make_config("smoke", **{option: value})  # make_config validates what it makes


def test_stop_after_epochs_lies_within_the_schedule():
    assert make_config("smoke", epochs=5, stop_after_epochs=1).stop_after_epochs == 1
    assert make_config("smoke", epochs=5, stop_after_epochs=5).stop_after_epochs == 5
    for n in (0, 6):
        with pytest.raises(UserError) as info:
            make_config("smoke", epochs=5, stop_after_epochs=n)
        assert str(info.value) == f"--stop-after-epochs {n}: must be in [1, --epochs 5] (epochs 1..N of the schedule)"


def test_cuda_graphs_need_compile():
    with pytest.raises(UserError) as info:
        make_config("smoke", cuda_graphs=True)
    assert str(info.value) == "--cuda-graphs True: needs --compile"
    assert make_config("smoke", cuda_graphs=True, compile=True).cuda_graphs is True


@pytest.mark.parametrize("option, value, kind", [
    ("epochs", 2.0, "int"), ("epochs", True, "int"), ("epochs", "3", "int"),
    ("lr", "0.1", "float"), ("lr", False, "float"),
    ("amp", 1, "bool"), ("model", 3, "str"),
    ("train_size", 100.0, "int"),  # Optional[int]: None passes, a float does not
    ("base_channels", "8", "int"),
])
def test_a_value_of_the_wrong_type_is_named_before_any_range_check(option, value, kind):
    cfg = RunConfig(**{option: value})
    with pytest.raises(UserError) as info:
        cfg.validate()
    assert str(info.value) == f"--{option.replace('_', '-')} {value!r}: expected {kind}"


def test_a_model_name_that_is_not_a_string_is_named_not_looked_up():
    """A notebook may pass anything: a list (unhashable) as the model is the same one line, not a TypeError."""
    for model in (["robust_resnet64"], {"name": 1}, 3):
        with pytest.raises(UserError) as info:
            make_config("smoke", model=model)
        assert str(info.value) == f"--model {model!r}: expected str"


def test_numbers_of_any_real_type_pass_the_type_check():
    cfg = RunConfig(epochs=np.int64(3), lr=np.float32(0.5), momentum=0)  # an int where a float is expected
    cfg.validate()


def test_the_first_bad_setting_in_field_order_is_named():
    with pytest.raises(UserError, match=r"^--epochs 0: "):
        RunConfig(epochs=0, batch_size=0, lr=0).validate()


def test_architecture_errors_name_the_model():
    with pytest.raises(UserError, match=r"^--model no_such_net: ") as info:
        make_config("smoke", model="no_such_net")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError) as info:
        make_config("smoke", base_channels=0)
    assert str(info.value).startswith("--base-channels 0: ")


# ---------------------------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("augment, ops", [
    ("paper", ("crop", "flip", "randaugment")),
    ("full", ("crop", "flip", "jitter", "rotation", "randaugment", "erasing")),
    ("standard", ("crop", "flip")),
    ("none", ()),
    ("erasing, flip ,crop", ("crop", "flip", "erasing")),  # pipeline order, spaces and order as typed ignored
    ("flip,,", ("flip",)),
    ("", ()),
    ("autoaugment,crop", ("crop", "autoaugment")),
])
def test_augment_presets_and_lists_in_pipeline_order(augment, ops):
    assert make_config("smoke", augment=augment).augment_ops() == ops


def test_unknown_or_conflicting_augmentations_are_refused():
    with pytest.raises(UserError) as info:
        make_config("smoke", augment="crop,blur,tilt")
    assert str(info.value) == ("--augment: unknown operation(s) blur, tilt; choose from paper, full, standard, none "
                               "or crop, flip, jitter, rotation, randaugment, autoaugment, erasing")
    with pytest.raises(UserError) as info:
        make_config("smoke", augment="randaugment,autoaugment")
    assert str(info.value) == ("--augment randaugment,autoaugment: randaugment and autoaugment are alternatives; "
                               "choose one")


# ---------------------------------------------------------------------------------------- derived settings
@pytest.mark.parametrize("warmup, epochs, used", [(5.0, 300, 5.0), (5.0, 50, 5.0), (5.0, 20, 2.0), (5.0, 2, 0.2),
                                                  (0.0, 300, 0.0), (1.0, 10, 1.0)])
def test_warm_up_is_capped_at_a_tenth_of_the_run(warmup, epochs, used):
    assert make_config("smoke", warmup_epochs=warmup, epochs=epochs).warmup_epochs_used() == pytest.approx(used)


@pytest.mark.parametrize("done, words", [(3, "3 of 300 epochs"), (0, "0 of 300 epochs"), (299, "299 of 300 epochs"),
                                         (300, "300 epochs"), (301, "300 epochs")])
def test_schedule_words(done, words):
    assert make_config("paper").schedule_words(done) == words


def test_model_overrides_are_only_the_settings_given():
    assert make_config("smoke").model_overrides() == {}
    assert make_config("smoke", dropout=0.0, widths=[8, 16], preact=False).model_overrides() == {
        "dropout": 0.0, "widths": [8, 16], "preact": False}


# ------------------------------------------------------------------------------------------------ profiles
def test_profiles_recipes_and_overrides_layer_in_that_order():
    paper = make_config()
    assert (paper.profile, paper.model, paper.epochs, paper.batch_size, paper.train_size) == \
        ("paper", "robust_resnet64", 300, 128, None)
    smoke = make_config("smoke", epochs=None, lr=None)  # None: not given
    assert (smoke.profile, smoke.epochs, smoke.train_size, smoke.val_size, smoke.batch_size, smoke.data_dir,
            smoke.out, smoke.lr) == ("smoke", 2, 320, 160, 32, "data/smoke", "runs/smoke", 0.1)
    b45 = make_config("smoke", model="light_resnet18_v2_b45")
    assert (b45.augment, b45.erasing_prob, b45.erasing_max_area, b45.erasing_value, b45.epochs) == \
        ("crop,flip,autoaugment,erasing", 0.5, 0.1, "random", 2)
    mine = make_config("smoke", model="light_resnet18_v2_b45", erasing_prob=0.3, epochs=7)
    assert (mine.erasing_prob, mine.erasing_value, mine.epochs) == (0.3, "random", 7)
    assert make_config("smoke", model="light_resnet18").augment == "paper"  # no recipe of its own


def test_unknown_profile_and_settings_are_named():
    with pytest.raises(UserError) as info:
        make_config("tiny")
    assert str(info.value) == "--profile 'tiny': expected one of paper, smoke"
    with pytest.raises(UserError) as info:
        make_config("smoke", epoch=3, bogus=1)
    assert str(info.value) == "unknown setting(s): bogus, epoch"
    with pytest.raises(UserError, match=r"^--profile 'tiny': expected one of paper, smoke$"):
        RunConfig(profile="tiny").validate()


# ------------------------------------------------------------------------------------------------ config.json
def test_config_json_round_trip_keeps_the_extra_fields_apart(tmp_path):
    cfg = make_config("smoke", widths=[8, 16, 32], seed=4)
    path = tmp_path / "config.json"
    save_config(cfg, path, extra={"n_val": 160, "versions": {"torch": "x"}})
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "model": "robust_resnet64",\n')
    back, extra = load_config(path)
    assert back == cfg and extra == {"n_val": 160, "versions": {"torch": "x"}}
    assert list(json.loads(text))[:3] == ["model", "profile", "dropout"]  # field order, not sorted


def test_from_dict_ignores_what_this_version_does_not_know():
    d = {**make_config("smoke").to_dict(), "retired_option": 1}
    assert RunConfig.from_dict(d) == make_config("smoke")


def test_config_json_errors_name_the_file(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(tmp_path / "absent.json")
    assert str(info.value) == f"{tmp_path / 'absent.json'}: no such file"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=r": not valid JSON \(Expecting property name") as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: ")


# ------------------------------------------------------------------------------------------------ --options
def parser(skip=()):
    p = argparse.ArgumentParser()
    add_config_arguments(p, skip=skip)
    return p


def test_options_parse_to_the_field_types_and_default_to_unset():
    args = parser().parse_args(["--epochs", "3", "--lr", "0.05", "--model", "light_resnet18", "--widths", "8,16,,32",
                                "--no-amp", "--preact", "--time-limit", "1.5", "--train-size", "100"])
    assert (args.epochs, args.lr, args.model, args.widths, args.amp, args.preact, args.time_limit,
            args.train_size) == (3, 0.05, "light_resnet18", [8, 16, 32], False, True, 1.5, 100)
    assert type(args.epochs) is int and type(args.lr) is float and type(args.time_limit) is float
    unset = parser().parse_args([])
    assert all(v is None for v in vars(unset).values()), "profiles fill what is not given"
    assert set(vars(unset)) == {f for f in RunConfig.__dataclass_fields__}


def test_skipped_options_do_not_exist_and_the_rest_do(capsys):
    with pytest.raises(SystemExit):
        parser(skip=("out", "resume")).parse_args(["--out", "x"])
    assert "unrecognized arguments: --out x" in capsys.readouterr().err
    args = vars(parser(skip=("model", "out")).parse_args(["--epochs", "4", "--resume"]))  # after a skipped one
    assert args["epochs"] == 4 and args["resume"] is True and "model" not in args and "out" not in args
    assert len(args) == len(RunConfig.__dataclass_fields__) - 2


def test_help_gives_each_option_its_own_text():
    """Each branch (on/off flags, the widths list, typed values): the field's help and the widths' metavar."""
    text = " ".join(parser().format_help().split())
    for flag, help_ in [("--amp, --no-amp", "mixed precision on CUDA (bf16 from compute capability 8.0, else fp16 + "
                                            "GradScaler)"),
                        ("--widths W1,W2,...", "explicit widths per group, e.g. 45,90,170,340"),
                        ("--epochs EPOCHS", "epochs of the schedule (the cosine annealing runs over all of them)"),
                        ("--model MODEL", "architecture name (lib.models.list_models())")]:
        assert f"{flag} {help_}" in text, flag


def test_widths_that_are_not_integers_are_named(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--widths", "8,a"])
    assert "argument --widths: expected integers separated by commas, got '8,a'" in capsys.readouterr().err


def test_options_sit_in_one_help_group_per_kind():
    titles = [g.title for g in parser()._action_groups]
    assert "architecture (lib.models options; unset: the model's own default)" in titles
    assert "where and how to run (may change when resuming)" in titles
    group = argparse.ArgumentParser().add_argument_group("outer")
    add_config_arguments(group)  # into a group: straight in, no nested groups
    assert {a.dest for a in group._group_actions} >= {"epochs", "model", "device"}


def test_fields_of_a_kind_in_definition_order():
    assert fields_of("data") == ("val_source", "holdout_fraction", "train_size", "val_size")
    assert fields_of("length", "run") == ("model", "profile", "stop_after_epochs", "time_limit")
    assert fields_of() == ()
    with pytest.raises(ValueError) as info:
        fields_of("data", "zz", "bogus")
    assert str(info.value) == ("unknown kind(s) ['bogus', 'zz']; expected run, architecture, data, recipe, "
                               "augmentation, length, numerics, execution")
