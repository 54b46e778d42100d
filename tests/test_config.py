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
