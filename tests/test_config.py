import pytest

from noscope.config import load_config
from noscope.errors import UsageError


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\nlabels:\n  min_score: 0.3\n")
    cfg = load_config(f, ["train.lr=0.01", "optimizer.skips=[1, 2]", "labels.min_score=1"])
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.01
    assert cfg["optimizer"]["skips"] == [1, 2]
    assert cfg["labels"]["min_score"] == 1.0 and isinstance(cfg["labels"]["min_score"], float)
    assert cfg["reference"]["name"] == "yolov3-tiny"


@pytest.mark.parametrize("item,word", [("train.epoch=3", "train.epoch"), ("train.epochs=many", "train.epochs"),
                                       ("nosuch=1", "nosuch"), ("train=3", "train")])
def test_rejects_unknown_and_mistyped(item, word):
    with pytest.raises(UsageError) as e:
        load_config(None, [item])
    assert word in str(e.value)


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_every_key_has_a_range_and_the_defaults_are_in_it():
    from noscope.config import RULES, check_range, defaults

    leaves = dict(_leaves(defaults()))
    assert set(RULES) == set(leaves)
    for key, value in leaves.items():
        check_range(key, value)


@pytest.mark.parametrize("item", [
    "query.batch_size=0", "reference.batch_size=0", "labels.min_score=1.5", "labels.min_score=0", "labels.smooth=2",
    "reference.runtime=tensorflow", "reference.runtime=null",
    "seed=-1", "device=gpu", "optimizer.skips=[]", "optimizer.skips=[0, 1]", "optimizer.confidence=1",
    "optimizer.min_saving=1", "train.grid=[c3f16d32s50]", "train.grid=fast", "train.epochs=0", "train.epochs=true",
    "train.lr=.nan", "train.val_fraction=0", "train.heldout_fraction=1", "train.max_frames=99", "train.diff_grid=51",
    "reference.input_size=[0, 416]", "decode.backend=gpu", "decode.prefetch=-1", "query.verify=-1",
    "query.verify_rounds=0", "query.target_fpr=1", "query.batch_size=", "optimizer.window=0", "train.split=random"])
def test_values_out_of_range_name_the_key(item):
    key = item.split("=")[0]
    with pytest.raises(UsageError) as e:
        load_config(None, [item])
    assert str(e.value).startswith(f"config key {key} must be ") and "\n" not in str(e.value)


def test_values_in_range_are_kept(tmp_path):
    cfg = load_config(None, ["labels.min_score=1", "optimizer.min_auc=2", "reference.batch_size=1", "seed=0",
                             "reference.input_size=320x320", "train.grid=[c2f16d32s50]", "device=cuda:1"])
    assert cfg["labels"]["min_score"] == 1.0 and cfg["optimizer"]["min_auc"] == 2.0 and cfg["device"] == "cuda:1"
    f = tmp_path / "c.yaml"
    f.write_text("query:\n  batch_size: 0\n")  # a config file is checked like --set
    with pytest.raises(UsageError, match=r"config key query.batch_size must be an integer in \[1, 2147483647\], got 0"):
        load_config(f)


@pytest.mark.parametrize("given", ["640x352", "[640, 352]"])
def test_reference_input_size_works_in_both_accepted_forms(given):
    """`reference.input_size` passes the config check as WxH or [w, h]; both must reach the reference."""
    from noscope.reference import configured_reference

    from noscope.settings import Settings

    ref, key = configured_reference(Settings.from_config(load_config(None, [f"reference.input_size={given}"])).reference)
    assert ref.input_size == (640, 352) and "640x352" in key


def test_training_runs_never_read_past_the_segment():
    """A train.run_length longer than the sample: the runs still lie inside [start, end)."""
    from noscope.split import sample_frames

    frames, runs = sample_frames(100, 25_100, 20_000, 30_000)
    assert frames.min() >= 100 and frames.max() < 25_100 and len(frames) <= 20_000 and len(runs) == len(frames)
