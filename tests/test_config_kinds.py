"""Each RunConfig field declares its kind once; what --resume may change, what a reproduction does not count, what
names a run folder and the --help groups come from it. Checked against what these sets were when each was kept by
hand (lib.train, lib.runs, notebook 03's run names) and against --help as a user reads it."""
import dataclasses
import re

from lib.common import ArgumentParser
from lib.config import (KINDS, MODEL_FIELDS, NOT_COUNTED, NOT_IN_RUN_NAME, RESUME_MAY_CHANGE, RunConfig,
                        add_config_arguments, fields_of)
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
