"""Specialized CNNs on synthetic fixed-camera video: a textured static scene, sensor noise and
exposure drift, and a small bright "car" that drives through in some frames."""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from noscope.cheap import cnn as sp
from noscope.cheap.common import roc_auc
from noscope.errors import NoscopeError

S = 50


def synthetic_video(n: int, seed: int, size: int = S) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, size, size, 3) frames and bool labels (object present), in runs like real video."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    # The same scene for every seed (it is one camera); only the traffic and noise differ.
    scene_rng = np.random.default_rng(1234)
    scene = 100 + 40 * np.sin(xx / 5.0)[..., None] * np.array([1.0, 0.6, 0.3])
    scene = scene + 30 * np.cos(yy / 7.0)[..., None] * np.array([0.3, 0.8, 1.0])
    scene = scene + scene_rng.normal(0, 10, (size, size, 3))
    frames = np.empty((n, size, size, 3), np.float32)
    labels = np.zeros(n, bool)
    t, present = 0, False
    while t < n:
        run = int(rng.integers(4, 20))
        lane = int(rng.integers(size // 3, size - 10))
        colour = rng.uniform(150, 250, 3)
        for k in range(min(run, n - t)):
            f = scene.copy()
            if present:
                x = (k * 3 + int(rng.integers(0, 3))) % (size - 8)
                f[lane : lane + 8, x : x + 8] = colour
                labels[t] = True
            frames[t] = f + rng.normal(0, 5, (size, size, 3)) + rng.normal(0, 4)  # noise + exposure
            t += 1
        present = not present and rng.random() < 0.7
    return np.clip(frames, 0, 255).round().astype(np.uint8), labels


@pytest.fixture(scope="module")
def data():
    # Small on purpose (the suite must stay fast on two busy cores); still a real train/val/test split.
    x, y = synthetic_video(720, seed=7)
    return {"xtr": x[:320], "ytr": y[:320], "xva": x[320:420], "yva": y[320:420], "xte": x[420:], "yte": y[420:]}


@pytest.fixture(scope="module")
def trained(data):
    arch = sp.Arch.parse("c2f16d32s50")
    mean = sp.mean_frame(data["xtr"])
    model, info = sp.train_candidate(
        arch, data["xtr"], data["ytr"], data["xva"], data["yva"], mean, epochs=3, batch_size=32, seed=0, device="cpu"
    )
    return arch, mean, model, info


# --------------------------------------------------------------------------- architectures


def test_arch_name_round_trips_and_rejects_nonsense():
    a = sp.Arch(convs=4, filters=32, dense=128, size=64)
    assert a.name == "c4f32d128s64"
    assert sp.Arch.parse(a.name) == a
    assert sp.Arch.parse(" C2F16D32S50 ") == sp.Arch(2, 16, 32, 50)
    for bad in ["c3f16d32s50", "c2f24d32s50", "c2f16d512s50", "conv2", ""]:
        with pytest.raises(NoscopeError):
            sp.Arch.parse(bad)


def test_grids():
    grid = sp.default_grid()
    assert len(grid) == 24 and len({a.name for a in grid}) == 24
    assert {a.convs for a in grid} == {2, 4} and {a.filters for a in grid} == {16, 32, 64}
    assert {a.dense for a in grid} == {32, 64, 128, 256} and {a.size for a in grid} == {50}
    assert {a.size for a in sp.default_grid(64)} == {64}
    assert 1 <= len(sp.small_grid()) < len(grid)


@pytest.mark.parametrize("name", ["c2f16d32s50", "c4f16d64s50", "c2f16d32s64"])
def test_network_shapes(name):
    arch = sp.Arch.parse(name)
    model = sp.SpecializedCNN(arch).eval()
    with torch.inference_mode():
        out = model(torch.zeros(3, 3, arch.size, arch.size))
    assert out.shape == (3,)


def test_mean_frame_is_per_pixel_mean():
    frames = np.zeros((4, 6, 6, 3), np.uint8)
    frames[:, 0, 0, 0] = [0, 1, 2, 255]
    m = sp.mean_frame(frames)
    assert m.dtype == np.float32 and m.shape == (6, 6, 3)
    assert m[0, 0, 0] == pytest.approx(64.5) and m[1, 1, 1] == 0


def test_roc_auc_hand_values():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts half
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


# --------------------------------------------------------------------------- training


def test_trained_candidate_is_accurate_on_held_out_frames(data, trained):
    arch, mean, model, info = trained
    p = sp.predict_scores(model, data["xte"], mean)
    assert p.dtype == np.float32 and p.shape == (len(data["xte"]),)
    assert np.all((p >= 0) & (p <= 1))
    assert roc_auc(p, data["yte"]) > 0.95
    assert ((p >= 0.5) == data["yte"]).mean() > 0.9
    assert 1 <= info["epochs"] <= 3 and 1 <= info["best_epoch"] <= info["epochs"]
    assert info["val_auc"] > 0.95 and math.isfinite(info["val_loss"]) and info["train_seconds"] > 0
    assert info["device"] == "cpu" and info["n_train"] == 320


def test_same_seed_gives_identical_weights_and_leaves_global_rng_alone(data):
    arch = sp.Arch(2, 16, 32, S)
    x, y = data["xtr"][:96], data["ytr"][:96]
    mean = sp.mean_frame(x)

    def train(seed):
        torch.manual_seed(99)
        model, _ = sp.train_candidate(arch, x, y, x[:32], y[:32], mean, epochs=1, batch_size=32, seed=seed, device="cpu")
        after = torch.rand(1)  # the caller's RNG stream must be where it would be without training
        return model.state_dict(), after

    (a, ra), (b, rb), (c, _) = train(0), train(0), train(1)
    torch.manual_seed(99)
    assert torch.equal(ra, torch.rand(1)) and torch.equal(ra, rb)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_soft_labels_and_rare_positives_are_accepted(data):
    arch = sp.Arch(2, 16, 32, S)
    x = data["xtr"][:64]
    soft = np.linspace(0, 1, 64).astype(np.float32) ** 4  # mostly near 0: few "positives"
    _, info = sp.train_candidate(arch, x, soft, x[:16], soft[:16], sp.mean_frame(x), epochs=1, device="cpu")
    assert info["pos_weight"] > 1 and math.isfinite(info["val_loss"])


def test_bad_training_inputs_are_one_line_errors(data):
    arch = sp.Arch(2, 16, 32, 64)  # frames are 50x50
    x, y = data["xtr"][:8], data["ytr"][:8]
    with pytest.raises(NoscopeError, match="expects 64x64"):
        sp.train_candidate(arch, x, y, x, y, np.zeros((64, 64, 3), np.float32))
    arch = sp.Arch(2, 16, 32, S)
    with pytest.raises(NoscopeError, match="labels"):
        sp.train_candidate(arch, x, y[:5], x, y, sp.mean_frame(x))
    with pytest.raises(NoscopeError, match="validation"):
        sp.train_candidate(arch, x, y, x[:0], y[:0], sp.mean_frame(x))


# --------------------------------------------------------------------------- inference, cost, bundles


def test_predict_batches_agree_and_empty_input_works(data, trained):
    arch, mean, model, _ = trained
    x = data["xte"][:50]
    np.testing.assert_allclose(sp.predict_scores(model, x, mean, batch_size=7), sp.predict_scores(model, x, mean), atol=1e-6)
    # Read-only frames (a memory-mapped frame cache) work, without torch's non-writable warning.
    ro = x.copy()
    ro.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(sp.predict_scores(model, ro, mean), sp.predict_scores(model, x, mean))
    assert sp.predict_scores(model, x[:0], mean).shape == (0,)


def test_measure_cost_is_positive_and_finite(trained):
    arch, _, model, _ = trained
    cost = sp.measure_cost(model, arch.size, device="cpu", batch_size=8, repeats=2)
    assert math.isfinite(cost) and 0 < cost < 1


def test_save_load_round_trip(tmp_path, data, trained):
    arch, mean, model, _ = trained
    path = tmp_path / "sub" / "model.pt"
    sp.save_model(model, arch, mean, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded, arch2, mean2 = sp.load_model(path, device="cpu")
    assert arch2 == arch and np.array_equal(mean2, mean)
    assert not loaded.training
    x = data["xte"][:64]
    np.testing.assert_array_equal(sp.predict_scores(loaded, x, mean2), sp.predict_scores(model, x, mean))
    sp.save_model(model, arch, mean, path)  # overwriting an existing bundle works
    assert sp.load_model(path)[1] == arch


_side_effects = []


def _mark(what):
    _side_effects.append(what)
    return what


class _Evil:
    """Unpickling this would call _mark: a stand-in for a file that runs code when loaded."""

    def __reduce__(self):
        return (_mark, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_refuses_pickled_objects(tmp_path, trained):
    arch, mean, model, _ = trained
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": "noscope-specialized-v1", "arch": arch.name, "mean_frame": torch.zeros(S, S, 3),
         "state_dict": model.state_dict(), "payload": _Evil()},
        path,
    )
    with pytest.raises(NoscopeError, match="refusing"):
        sp.load_model(path)
    assert _side_effects == []
    # A plain pickle (not a torch file at all) is refused too.
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(NoscopeError):
        sp.load_model(path)
    assert _side_effects == []


def test_load_errors_are_clear(tmp_path, trained):
    arch, mean, model, _ = trained
    with pytest.raises(NoscopeError, match="not found"):
        sp.load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(NoscopeError):
        sp.load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(NoscopeError, match="not a noscope"):
        sp.load_model(other)
    wrong = tmp_path / "wrong.pt"
    sp.save_model(model, arch, mean, wrong)
    bundle = torch.load(wrong, weights_only=True)
    bundle["arch"] = "c4f16d32s50"  # weights do not fit this arch
    torch.save(bundle, wrong)
    with pytest.raises(NoscopeError, match="damaged"):
        sp.load_model(wrong)


def test_several_objects_train_one_model_with_one_output_each(tmp_path, data):
    """K labels -> one network, K sigmoid outputs; each output learns its own object."""
    arch = sp.Arch.parse("c2f16d32s50")
    mean = sp.mean_frame(data["xtr"])
    # Object 0 is the synthetic car; object 1 is "no car", so a shared feature must be read both ways.
    y2 = lambda y: np.stack([y, ~y], axis=1)  # noqa: E731
    model, info = sp.train_candidate(arch, data["xtr"], y2(data["ytr"]), data["xva"], y2(data["yva"]), mean,
                                     epochs=3, batch_size=32, seed=0, device="cpu")
    assert model.outputs == 2 and len(info["val_auc"]) == 2 and len(info["pos_weight"]) == 2
    p = sp.predict_scores(model, data["xte"], mean)
    assert p.shape == (len(data["xte"]), 2) and p.dtype == np.float32
    assert roc_auc(p[:, 0], data["yte"]) > 0.9 and roc_auc(p[:, 1], ~data["yte"]) > 0.9
    path = tmp_path / "two.pt"
    sp.save_model(model, arch, mean, path)
    again, _, _ = sp.load_model(path, device="cpu")
    assert again.outputs == 2
    assert np.array_equal(sp.predict_scores(again, data["xte"][:16], mean), p[:16])
    assert sp.measure_cost(again, arch.size, repeats=1) > 0
    with pytest.raises(NoscopeError, match="disagree"):
        sp.train_candidate(arch, data["xtr"], y2(data["ytr"]), data["xva"], data["yva"], mean, epochs=1, device="cpu")


def test_one_output_files_have_no_outputs_field(tmp_path, trained):
    arch, mean, model, _ = trained
    sp.save_model(model, arch, mean, tmp_path / "one.pt")
    assert "outputs" not in torch.load(tmp_path / "one.pt", weights_only=True)
