"""A night is decoded once, and cheaply (the cheap stages read the decoder's luma plane; RGB is
made only for the frames a model or the reference sees; a repair re-decides from what the pass kept).

The drift scene (tests/test_drift.py) and its colour-blind test reference: a bundle trained on the
first half, the second half queried; the first answers miss the blue squares, so the check repairs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import yaml

from noscope.plans import Targets

from .conftest import default_settings
from .test_drift import HALF, N, SaturatedSquares

FAST = ("train.grid=small", "train.epochs=4", "train.block=40", "train.augment=1")


def trained(path, root, *sets):
    from noscope.train import train

    train(path, "square", root, default_settings(*FAST, *sets), end=f"{HALF}f", quiet=True, say=lambda *a: None)
    return root


def test_a_query_whose_check_repairs_decodes_each_frame_once(drift_video, tmp_path):
    """The check finds misses and repairs the model (its threshold, a refit: no new frame to process),
    and the whole answer decodes the segment in one pass: summary.json says one pass and how many
    frames it decoded, never more than the video has. (No frame skip or difference detector here: a
    repair of those sends new frames to the model, whose pictures no pass kept: the next test.)"""
    from noscope.query import query_video

    path, _ = drift_video
    bundle = without_difference_detectors(trained(path, tmp_path / "bundle", "optimizer.skips=[1]"))
    summary = query_video(path, default_settings("optimizer.skips=[1]"), Targets(0.05, 0.05), model=str(bundle),
                          out=tmp_path / "q", start=f"{HALF}f", plot=False, quiet=True)
    v = summary["verified"]
    assert v["escalated"] and v["escalations"], "the scene must make the check repair, or this test checks nothing"
    assert all(e.startswith("model") for e in v["escalations"]), v["escalations"]
    d = summary["decoding"]
    assert d["passes"] == 1 and d["each"][0]["step"] == "first pass", d
    assert 0 < d["frames"] <= N  # each frame of the file decoded at most once (a counted file decodes from its start)
    saved = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert saved["decoding"] == d


def test_a_repair_that_sends_new_frames_to_the_model_decodes_the_segment_once_more(drift_video, tmp_path):
    """A repaired frame skip or difference threshold sends frames to the model that the first pass
    settled without it: their pictures are decoded again, in one sequential pass over the segment per
    answer, and no more (a model-only repair of the same round adds none)."""
    from noscope.query import query_video

    path, _ = drift_video
    summary = query_video(path, default_settings(), Targets(0.05, 0.05), model=str(trained(path, tmp_path / "b")),
                          out=tmp_path / "q", start=f"{HALF}f", plot=False, quiet=True)
    esc = summary["verified"]["escalations"]
    new_frames = [e for e in esc if e.startswith(("frame skip", "difference detector"))]
    assert new_frames, ("the scene must repair the skip or the difference detector, or this test checks nothing", esc)
    d = summary["decoding"]
    assert 1 < d["passes"] <= 1 + len(new_frames), d
    assert [x["step"] for x in d["each"]] == ["first pass"] + ["answer again"] * (d["passes"] - 1), d
    assert all(x["decoded"] <= N for x in d["each"]), d  # once each (a counted file decodes from its start)
    # RGB only for the frames the model (those the difference detector let through) and the reference saw
    assert d["each"][0]["converted"] < 2 * (N - HALF), d


def without_difference_detectors(root):
    """The bundle at `root` with no difference detector to offer (as if none had been fitted), and
    a reference as dear as a real detector (the test's own costs next to nothing: without a
    difference detector the optimizer would ask it everything)."""
    from noscope.bundle import save_npz, write_manifest

    meta = yaml.safe_load((root / "bundle.yaml").read_text())
    meta["diffs"] = []
    meta["costs"]["reference"] = 100 * float(meta["costs"]["reference"])
    z = dict(np.load(root / "heldout.npz"))
    save_npz(root / "heldout.npz", **{k: v for k, v in z.items() if not k.startswith("diff__")})
    shutil.rmtree(root / "diff", ignore_errors=True)
    write_manifest(root, {k: v for k, v in meta.items() if k not in ("files", "format", "noscope_version")}, meta["format"])
    return root


def rgb_detectors(root, video) -> None:
    """Make the bundle at `root` as noscope made one before the luma plane: difference detectors
    fitted on RGB frames at their size (bundle.yaml's diffs without `plane`), held-out scores to match."""
    from noscope import bundle as B
    from noscope import difference
    from noscope.video import open_video

    meta = yaml.safe_load((root / "bundle.yaml").read_text())
    z = dict(np.load(root / "heldout.npz"))
    size = int(meta["diffs"][0]["size"])
    frames = z["frames"].astype(np.int64)
    v = open_video(video)
    rgb = np.concatenate([b.frames["d"] for b in v.batches({"d": (size, size)}, frames=frames)])
    parts = type("Parts", (), {"train": np.ones(len(frames), bool), "heldout": np.ones(len(frames), bool)})
    skips = sorted({int(k.rsplit("@", 1)[1]) for k in z if k.startswith("diff__")})
    fitted = difference.fit_and_score(rgb, z["truth"].reshape(len(frames), -1).any(axis=1), z["blocks"], parts, skips,
                                      int(meta["train"]["diff_grid"]), size)
    shutil.rmtree(root / "diff")
    (root / "diff").mkdir()
    for d in fitted.detectors:
        if d.reference_image is not None:
            difference.save_npy(root / "diff" / f"{d.name}.npy", d.reference_image)
    meta["diffs"] = fitted.meta
    meta["costs"]["diff"] = fitted.costs
    z = {k: v for k, v in z.items() if not k.startswith("diff__")} | {f"diff__{k}": v for k, v in fitted.heldout_scores.items()}
    B.save_npz(root / "heldout.npz", **z)
    B.write_manifest(root, {k: v for k, v in meta.items() if k not in ("files", "format", "noscope_version")},
                     meta["format"])
    assert all("plane" not in d for d in yaml.safe_load((root / "bundle.yaml").read_text())["diffs"])


def test_a_bundle_from_before_the_luma_plane_keeps_working_and_the_luma_path_is_as_accurate(drift_video, tmp_path):
    """A bundle whose difference detectors compare RGB frames (bundle.yaml says no plane) still loads
    and answers, its detectors fed RGB as before; and the luma plane's answers agree with the
    reference on every frame at least as well as that RGB path's (same bundle otherwise)."""
    from noscope.bundle import load_bundle
    from noscope.labels import label_frames
    from noscope.query import query_video
    from noscope.reference import reference_key
    from noscope.video import open_video

    path, _ = drift_video
    luma = trained(path, tmp_path / "luma")
    rgb = tmp_path / "rgb"
    shutil.copytree(luma, rgb)
    rgb_detectors(rgb, path)
    for root, plane in ((rgb, "rgb"), (luma, "luma")):
        b = load_bundle(root)
        assert {b.diff(d.name).plane for d in b.diffs} == {plane}
    ref = SaturatedSquares()
    lab = label_frames(open_video(path), ref, reference_key(ref), np.arange(HALF, N), use_cache=False, quiet=True)
    truth = dict(zip(lab.frames.tolist(), (lab.scores[:, 0] >= 0.5).tolist()))
    errors = {}
    for name, bundle in (("luma", luma), ("rgb", rgb)):
        s = query_video(path, default_settings(), Targets(0.05, 0.05), model=str(bundle), out=tmp_path / f"q-{name}",
                        start=f"{HALF}f", plot=False, quiet=True)
        rows = np.loadtxt(tmp_path / f"q-{name}" / "frames.csv", delimiter=",", skiprows=1, usecols=(0, 2), dtype=np.int64)
        errors[name] = float(np.mean([bool(a) != truth[f] for f, a in rows.tolist()]))
        assert s["decoding"]["passes"] >= 1
    assert errors["luma"] <= errors["rgb"] + 0.02, errors
