"""Each RunConfig field declares its kind once; what --resume may change, what a reproduction does not count, what
names a run folder and the --help groups come from it. Checked against what these sets were when each was kept by
hand (lib.train, lib.runs, notebook 03's run names) and against --help as a user reads it."""
import dataclasses
import re

import pytest

from lib.common import ArgumentParser, UserError
from lib.config import (KINDS, MODEL_FIELDS, NOT_COUNTED, NOT_IN_RUN_NAME, RESUME_MAY_CHANGE, RunConfig,
                        add_config_arguments, fields_of, make_config)
from lib.models import OPTIONS


def test_every_field_has_one_known_kind():
    kinds = [f.metadata.get("kind") for f in dataclasses.fields(RunConfig)]
    assert all(k in KINDS for k in kinds)
    assert sorted(sum((list(fields_of(k)) for k in KINDS), [])) == sorted(f.name for f in dataclasses.fields(RunConfig))


def test_derived_sets_equal_the_lists_once_kept_by_hand():
    # lib.train.RESUME_MAY_CHANGE as it was written out by hand
    assert RESUME_MAY_CHANGE == {"out", "resume", "device", "progress", "num_workers", "compile", "cuda_graphs",
                                 "download", "data_dir", "stop_after_epochs", "time_limit"}
    # lib.runs.EXECUTION_ONLY (that set plus the same recipe by another route), with amp, which Table 1 names apart
    assert NOT_COUNTED == RESUME_MAY_CHANGE | {"loader", "channels_last", "sync_bn", "seed", "amp"}
    # notebook 03's run names skipped RESUME_MAY_CHANGE and the model and profile, which lead the name
    assert NOT_IN_RUN_NAME == RESUME_MAY_CHANGE | {"model", "profile"}
    # the architecture options are lib.models' options but the two derived from widths
    assert set(MODEL_FIELDS) == set(OPTIONS) - {"num_groups"} and "model" not in MODEL_FIELDS


def test_help_shows_each_option_once_under_its_kind():
    parser = ArgumentParser(prog="x")
    add_config_arguments(parser)
    text = parser.format_help()
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        assert len(re.findall(rf"^  {re.escape(flag)}(?=[ ,\n])", text, flags=re.M)) == 1, flag
    sections = {title: text.index(title + ":") for title in KINDS.values()}
    assert text.index("--dropout", sections[KINDS["architecture"]]) < sections[KINDS["data"]]
    assert sections[KINDS["execution"]] < text.index("  --device ", sections[KINDS["execution"]])


def test_architecture_settings_are_checked_once_by_the_architecture_and_named_as_given():
    # the ranges live in lib.models alone; the error names the setting as the user gave it, not the model
    cases = [(dict(dropout=1.5), "--dropout 1.5: must be in [0, 1)"),
             (dict(stochastic_depth_rate=-0.1), "--stochastic-depth-rate -0.1: must be in [0, 1)"),
             (dict(kernel_size=4), "--kernel-size 4: must be odd"),
             (dict(model="robust_resnet64", se_reduction=8),
              "--se-reduction 8: robust_resnet64 has no Squeeze-and-Excitation blocks")]
    for settings, line in cases:
        with pytest.raises(UserError) as err:
            make_config("paper", **settings)
        assert str(err.value).startswith(line), str(err.value)
    with pytest.raises(UserError, match=r"^--model resnet9000: unknown model"):
        make_config("paper", model="resnet9000")
