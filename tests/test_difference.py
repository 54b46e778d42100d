"""Difference detectors: hand-checked MSEs, and the detectors' behaviour on synthetic
fixed-camera video (static textured scene + noise; a bright square present in some runs)."""

import math

import numpy as np
import pytest
import yaml

from noscope import difference as df
from noscope.errors import NoscopeError

S = 50


def roc_auc(scores, labels):
    """P(score of a random positive > score of a random negative), ties half."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return greater + ties / 2


def scene(size=S):
    yy, xx = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(1234)
    img = 100 + 40 * np.sin(xx / 5.0)[..., None] * np.array([1.0, 0.6, 0.3])
    img = img + 30 * np.cos(yy / 7.0)[..., None] * np.array([0.3, 0.8, 1.0]) + rng.normal(0, 10, (size, size, 3))
    return img


def synthetic_video(n, seed, moving=True, noise=4.0, size=S):
    """(frames uint8, labels bool): the object appears in runs; `moving=False` parks it."""
    rng = np.random.default_rng(seed)
    bg = scene(size)
    frames = np.empty((n, size, size, 3), np.float32)
    labels = np.zeros(n, bool)
    t, present = 0, False
    while t < n:
        run = int(rng.integers(5, 25))
        lane, park = int(rng.integers(size // 3, size - 10)), int(rng.integers(0, size - 10))
        for k in range(min(run, n - t)):
            f = bg.copy()
            if present:
                x = (k * 3) % (size - 10) if moving else park
                f[lane : lane + 10, x : x + 10] = [230, 210, 60]
                labels[t] = True
            frames[t] = f + rng.normal(0, noise, (size, size, 3))
            t += 1
        present = not present and rng.random() < 0.7
    return np.clip(frames, 0, 255).round().astype(np.uint8), labels


# --------------------------------------------------------------------------- MSEs by hand


def test_global_mse_hand_computed():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = np.zeros((2, 4, 4, 3), np.uint8)
    b[0, 0, 0, 0] = 12  # one element of 48 differs by 12: 144 / 48 = 3
    a[1] = 255  # everything differs by 255 (uint8 must not wrap around)
    np.testing.assert_allclose(df.global_mse(a, b), [3.0, 255.0**2])
    np.testing.assert_allclose(df.global_mse(b, a), [3.0, 255.0**2])
    assert df.global_mse(a, b).dtype == np.float32


def test_block_mse_hand_computed():
    a = np.zeros((1, 4, 4, 1), np.uint8)
    b = np.zeros((1, 4, 4, 1), np.uint8)
    b[0, 0, 0, 0] = 4  # top-left block: 16 / 4 px = 4
    b[0, 3, 2:4, 0] = 2  # bottom-right block: (4 + 4) / 4 = 2
    np.testing.assert_allclose(df.block_mse(a, b, 2), [[4.0, 0.0, 0.0, 2.0]])
    # grid 1 is the global MSE; greyscale (N, S, S) works the same as one channel
    np.testing.assert_allclose(df.block_mse(a[..., 0], b[..., 0], 1)[:, 0], df.global_mse(a, b))


def test_block_features_are_log_block_and_frame_mse():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    f = df.block_features(a, b, 2)
    assert f.shape == (4, 5) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, :4], np.log1p(df.block_mse(a, b, 2)), rtol=1e-6)
    np.testing.assert_allclose(f[:, 4], np.log1p(df.global_mse(a, b)), rtol=1e-6)


def test_block_mse_uneven_blocks_and_broadcast_reference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    ref = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    got = df.block_mse(a, ref, 2)  # 5 px in 2 blocks: rows/cols 0-1 and 2-4
    d2 = (a.astype(float) - ref.astype(float)) ** 2
    want = [[d2[n, :2, :2].mean(), d2[n, :2, 2:].mean(), d2[n, 2:, :2].mean(), d2[n, 2:, 2:].mean()] for n in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(df.global_mse(a, ref), d2.reshape(3, -1).mean(1), rtol=1e-6)
    with pytest.raises(NoscopeError):
        df.block_mse(a, ref, 6)  # more blocks than pixels


# --------------------------------------------------------------------------- empty scene


def test_empty_scene_is_the_background():
    frames, labels = synthetic_video(300, seed=1, noise=3.0)
    ref = df.empty_scene(frames, labels)
    assert ref.dtype == np.uint8 and ref.shape == (S, S, 3)
    bg = np.clip(scene(), 0, 255)
    assert np.abs(ref.astype(float) - bg).mean() < 2.0
    # Fallback with (almost) no negatives: the median of everything is still mostly background.
    ref_all = df.empty_scene(frames, np.ones(len(frames), bool))
    assert np.abs(ref_all.astype(float) - bg).mean() < 3.0


# --------------------------------------------------------------------------- detectors


@pytest.fixture(scope="module")
def fitted():
    frames, labels = synthetic_video(1200, seed=2)
    blocks = np.arange(len(frames)) // 300
    dets = df.fit_detectors(frames[:800], labels[:800], blocks[:800], skips=(1, 5), grid=5)
    return {d.name: d for d in dets}, frames[800:], labels[800:], blocks[800:]


def test_fit_builds_the_four_detectors(fitted):
    dets, *_ = fitted
    assert sorted(dets) == ["prev-blocked", "prev-global", "ref-blocked", "ref-global"]
    for d in dets.values():
        assert d.kind == d.name.split("-")[0] and d.mode == d.name.split("-")[1]
        assert (d.weights is not None) == (d.mode == "blocked")
        assert (d.reference_image is not None) == (d.kind == "ref")
    assert dets["ref-blocked"].weights.shape == (26,)  # 5x5 blocks + the whole frame


def test_ref_detectors_separate_empty_from_object_frames(fitted):
    dets, frames, labels, _ = fitted
    for name in ("ref-global", "ref-blocked"):
        s = dets[name].score(frames)
        assert s.dtype == np.float32 and s.shape == (len(frames),)
        assert roc_auc(s, labels) > 0.99, name
    # The blocked regression says "changed" (logit > 0) for object frames and not for empty ones.
    s = dets["ref-blocked"].score(frames)
    assert ((s > 0) == labels).mean() > 0.97


def test_prev_scores_nan_at_block_starts_and_never_across_blocks(fitted):
    dets, frames, _, _ = fitted
    blocks = np.array([7] * 6 + [3] * 2 + [7] * 5)  # id 7 reappears: still two separate blocks
    x = frames[: len(blocks)]
    for name in ("prev-global", "prev-blocked"):
        out = df.diff_scores(dets[name], x, blocks, skips=(1, 3))
        assert sorted(out) == [1, 3]
        nan1, nan3 = np.isnan(out[1]), np.isnan(out[3])
        np.testing.assert_array_equal(np.flatnonzero(nan1), [0, 6, 8])
        np.testing.assert_array_equal(np.flatnonzero(nan3), [0, 1, 2, 6, 7, 8, 9, 10])
        # and each defined score is the score against the frame s earlier
        np.testing.assert_allclose(out[3][3:6], dets[name].score(x[3:6], x[0:3]), rtol=1e-6)


def test_prev_scores_near_zero_for_identical_frames(fitted):
    dets, frames, _, _ = fitted
    still = np.repeat(frames[:1], 6, axis=0)  # a frozen camera
    blocks = np.zeros(6, int)
    out = df.diff_scores(dets["prev-global"], still, blocks, skips=(1, 2))
    np.testing.assert_array_equal(out[1][1:], 0.0)
    np.testing.assert_array_equal(out[2][2:], 0.0)
    # blocked: no change at all gives the lowest score the regression can give, well below a real change
    blocked = dets["prev-blocked"]
    same = df.diff_scores(blocked, still, blocks, skips=(1,))[1][1:]
    changed = blocked.score(frames[1:6], np.repeat(frames[:1], 5, axis=0) // 2)
    np.testing.assert_allclose(same, blocked.bias, rtol=1e-6)
    assert same.max() < changed.min()


def test_prev_blocked_predicts_label_changes():
    # Parked objects: consecutive frames differ (beyond noise) only when one arrives or leaves.
    frames, labels = synthetic_video(900, seed=3, moving=False)
    blocks = np.arange(len(frames)) // 300
    det = {d.name: d for d in df.fit_detectors(frames[:600], labels[:600], blocks[:600], skips=(1,))}["prev-blocked"]
    x, y, b = frames[600:], labels[600:], blocks[600:]
    s = df.diff_scores(det, x, b, skips=(1,))[1]
    changed = np.zeros(len(y), bool)
    changed[1:] = y[1:] != y[:-1]
    ok = ~np.isnan(s)
    assert changed[ok].sum() >= 5
    assert roc_auc(s[ok], changed[ok]) > 0.99


def test_ref_scores_are_shared_across_skips(fitted):
    dets, frames, _, blocks = fitted
    out = df.diff_scores(dets["ref-blocked"], frames[:20], blocks[:20], skips=(1, 4))
    assert out[1] is out[4] and not np.isnan(out[1]).any()
    np.testing.assert_array_equal(out[1], dets["ref-blocked"].score(frames[:20]))


def test_single_class_falls_back_to_the_global_detector():
    frames, _ = synthetic_video(60, seed=4)
    dets = {d.name: d for d in df.fit_detectors(frames, np.zeros(60, bool), np.zeros(60, int), skips=(1, 2), grid=4)}
    for name in ("prev-blocked", "ref-blocked"):
        np.testing.assert_array_equal(dets[name].weights, [0] * 16 + [1])  # log1p(frame MSE) alone
        assert dets[name].bias == 0.0
    x, prev = frames[1:9], frames[:8]
    np.testing.assert_allclose(dets["prev-blocked"].score(x, prev), np.log1p(df.global_mse(x, prev)), rtol=1e-6)
    # Blocks shorter than every skip: no pairs at all, still a usable detector.
    dets = df.fit_detectors(frames[:4], np.array([0, 1, 0, 1], bool), np.arange(4), skips=(1,))
    assert all(np.isfinite(d.score(frames[:2], frames[2:4])).all() for d in dets if d.kind == "prev")


def test_bundle_round_trip(tmp_path, fitted):
    dets, frames, _, _ = fitted
    for d in dets.values():
        text = yaml.safe_dump(d.to_dict())  # plain numbers/lists only
        ref = None
        if d.reference_image is not None:
            df.save_npy(tmp_path / f"{d.name}.npy", d.reference_image)
            ref = df.load_npy(tmp_path / f"{d.name}.npy")
            assert ref.dtype == np.uint8 and np.array_equal(ref, d.reference_image)
        again = df.DiffDetector.from_dict(yaml.safe_load(text), ref)
        prev = frames[:10][::-1].copy()
        np.testing.assert_array_equal(again.score(frames[:10], prev), d.score(frames[:10], prev))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref-blocked.npy", "ref-global.npy"]  # no temp files
    no_image = df.DiffDetector.from_dict(dets["ref-global"].to_dict())  # image to be set later...
    with pytest.raises(NoscopeError, match="reference image"):
        no_image.score(frames[:2])  # ...and a clear error if it never is
    no_image.reference_image = df.load_npy(tmp_path / "ref-global.npy")
    np.testing.assert_array_equal(no_image.score(frames[:5]), dets["ref-global"].score(frames[:5]))


def test_load_npy_refuses_pickles_and_reports_missing(tmp_path):
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NoscopeError):
        df.load_npy(evil)
    with pytest.raises(NoscopeError, match="not found"):
        df.load_npy(tmp_path / "missing.npy")


def test_measure_cost_is_positive_and_finite(fitted):
    dets, *_ = fitted
    for d in dets.values():
        cost = df.measure_cost(d, S, batch_size=64, repeats=2)
        assert math.isfinite(cost) and 0 < cost < 0.01


def test_several_objects_fit_one_set_of_detectors():
    """(N, K) labels: "empty" is no object of any kind, "changed" is any object's label changing."""
    frames, labels = synthetic_video(600, seed=4)
    blocks = np.arange(len(frames)) // 300
    one = df.fit_detectors(frames, labels, blocks, skips=(1, 5))
    # A second object that is never there changes nothing.
    same = df.fit_detectors(frames, np.stack([labels, np.zeros_like(labels)], axis=1), blocks, skips=(1, 5))
    for a, b in zip(one, same):
        assert a.to_dict() == b.to_dict()
        assert (a.reference_image is None) == (b.reference_image is None)
        if a.reference_image is not None:
            assert np.array_equal(a.reference_image, b.reference_image)
    # Two objects on different frames: the empty scene leaves out the frames of either.
    other = np.roll(labels, 150)
    both = {d.name: d for d in df.fit_detectors(frames, np.stack([labels, other], axis=1), blocks, skips=(1,))}
    union = {d.name: d for d in df.fit_detectors(frames, labels | other, blocks, skips=(1,))}
    assert np.array_equal(both["ref-global"].reference_image, union["ref-global"].reference_image)
    assert both["ref-blocked"].to_dict() == union["ref-blocked"].to_dict()
