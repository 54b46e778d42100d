"""Heads on the reference's first layers (noscope.cheap.heads, on noscope.cheap.prefix), with the real YOLOv3-tiny weights,
on synthetic fixed-camera video: a textured static scene, sensor noise and exposure drift, and a
small coloured "car" that drives through in some runs of frames."""

import pickle

import numpy as np
import pytest
import torch

from noscope.cheap import cnn as sp
from noscope.cheap import heads as ph
from noscope.cheap import prefix as pf
from noscope.cheap.common import roc_auc
from noscope.errors import NoscopeError
from noscope.reference import load_reference, reference_key
from noscope.reference.weights import yolov3_tiny_files

W, H = 96, 64  # a 3:2 camera's prefix size (multiples of 32)


def traffic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, H, W, 3) frames and bool (n, 2) labels: column 0 a car (a coloured 12x8 box
    in the lower half), column 1 a "sign" (a dark 6x10 bar in the upper right), in runs."""
    rng = np.random.default_rng(seed)
    scene_rng = np.random.default_rng(1234)  # one camera: the same scene for every seed
    yy, xx = np.mgrid[0:H, 0:W]
    scene = 110 + 35 * np.sin(xx / 6.0)[..., None] * np.array([1.0, 0.7, 0.4])
    scene = scene + 25 * np.cos(yy / 5.0)[..., None] * np.array([0.3, 0.8, 1.0]) + scene_rng.normal(0, 8, (H, W, 3))
    frames = np.empty((n, H, W, 3), np.float32)
    labels = np.zeros((n, 2), bool)
    state = [False, False]
    t = 0
    while t < n:
        run = int(rng.integers(5, 15))
        state = [bool(rng.random() < 0.45), bool(rng.random() < 0.3)]
        lane, colour = int(rng.integers(34, H - 10)), rng.uniform(170, 250, 3) * rng.permutation([1.0, 0.5, 0.2])
        for k in range(min(run, n - t)):
            f = scene.copy()
            if state[0]:
                x = (k * 5 + int(rng.integers(0, 4))) % (W - 12)
                f[lane : lane + 8, x : x + 12] = colour
            if state[1]:
                f[6:16, 70:76] = 20
            labels[t] = state
            frames[t] = f + rng.normal(0, 4, (H, W, 3)) + rng.normal(0, 6)  # noise + exposure
            t += 1
    return np.clip(frames, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def ref():
    return load_reference("yolov3-tiny", device="cpu", weights=yolov3_tiny_files(fetch=True)[1])


@pytest.fixture(scope="module")
def key(ref):
    return reference_key(ref)


@pytest.fixture(scope="module")
def data():
    x, y = traffic(360, seed=3)
    tr, va, te = np.arange(360) < 220, (np.arange(360) >= 220) & (np.arange(360) < 260), np.arange(360) >= 260
    return x, y, tr, va, te


@pytest.fixture(scope="module")
def prefix(ref, key):
    return pf.build_prefix(ref, pf.PrefixPoint(key, 6, W, H))


@pytest.fixture(scope="module")
def maps(prefix, data):
    return pf.extract(prefix, data[0])[6]


def trained(kind, prefix, maps, data, seed=0):
    x, y, tr, va, _ = data
    return ph.train_head(kind, prefix, {"train": maps[tr], "val": maps[va]}, {"train": y[tr], "val": y[va]}, seed=seed)


@pytest.fixture(scope="module")
def linear(prefix, maps, data):
    return trained("linear", prefix, maps, data)


def test_prefix_size_keeps_the_aspect_in_multiples_of_32():
    assert pf.prefix_size(640, 360, 160) == (160, 96)
    assert pf.prefix_size(1280, 720, 320) == (320, 192)
    assert pf.prefix_size(320, 240, 320) == (320, 256)
    assert pf.prefix_size(768, 576, 160) == (160, 128)
    with pytest.raises(NoscopeError):
        pf.prefix_size(640, 360, 100)


def test_the_prefix_is_the_references_own_first_layers(ref, key, prefix):
    """The prefix's output equals the reference net's own layers run on the same input (so the
    head sees what the reference computes), and nothing in it can be trained."""
    x = np.random.default_rng(0).integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    got = pf.extract(prefix, x, dtype=torch.float32)[6]
    with torch.inference_mode():
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        for layer in ref.net.layers[:6]:
            t = layer(t)
    assert got.shape == (2, 64, H // 8, W // 8)
    torch.testing.assert_close(got, t, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in prefix.parameters())
    prefix.train()
    assert not prefix.training  # stays in inference mode


def test_a_prefix_cannot_cross_a_route(ref, key):
    with pytest.raises(NoscopeError, match="plain chain"):
        pf.build_prefix(ref, pf.PrefixPoint(key, 18, W, H))
    with pytest.raises(NoscopeError, match="must be uint8"):
        pf.extract(pf.build_prefix(ref, pf.PrefixPoint(key, 4, W, H)), np.zeros((1, 32, 32, 3), np.uint8))


def test_pooling_spec():
    assert pf.parse_pooling("mean+max+grid2x3") == [("mean", 1, 1), ("max", 1, 1), ("grid", 2, 3)]
    m = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    z = pf.pool(m, "mean+max+grid2x3")
    assert z.shape == (2, 3 * 8) and pf.pooled_size("mean+max+grid2x3", 3) == 24
    assert torch.equal(z[:, 3:6], m.amax(dim=(2, 3)))
    with pytest.raises(NoscopeError):
        pf.parse_pooling("mean+median")


@pytest.mark.parametrize("kind", ["linear", "spatial"])
def test_a_head_learns_the_objects_on_later_frames(kind, prefix, maps, data, linear):
    """Trained on the first 220 frames, stopped on the next 40: the last 100 frames (new runs of
    traffic) are ranked well for both objects, through the frames-in API."""
    x, y, _, _, te = data
    model, info = linear if kind == "linear" else trained(kind, prefix, maps, data)
    p = model.predict(x[te])
    assert p.shape == (te.sum(), 2) and p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1
    aucs = [roc_auc(p[:, k], y[te, k]) for k in range(2)]
    assert min(aucs) > 0.95, aucs
    assert info["seconds"] < 60 and info["kind"] == kind
    np.testing.assert_allclose(model.predict_maps(maps[te]), p, atol=2e-3)  # maps stored as float16


def test_a_head_learns_from_the_references_scores(prefix, maps, data):
    """Soft targets (what the reference scored, not its yes/no) train a head as well."""
    x, y, tr, va, te = data
    soft = np.where(y, 0.8, 0.1) + np.random.default_rng(0).uniform(-0.05, 0.05, y.shape)
    model, info = ph.train_head("linear", prefix, {"train": maps[tr], "val": maps[va]}, {"train": soft[tr], "val": soft[va]})
    p = model.predict_maps(maps[te])
    assert min(roc_auc(p[:, k], y[te, k]) for k in range(2)) > 0.95


def test_bad_labels_are_refused(prefix, maps, data):
    x, y, tr, va, _ = data
    m = {"train": maps[tr], "val": maps[va]}
    for bad in ({"train": y[tr] * 2.0, "val": y[va]}, {"train": y[tr][:-1], "val": y[va]},
                {"train": y[tr], "val": y[va][:, :1]}):
        with pytest.raises(NoscopeError):
            ph.train_head("linear", prefix, m, bad)
    with pytest.raises(NoscopeError, match="validation frames"):
        ph.train_head("spatial", prefix, {"train": maps[tr], "val": maps[:0]}, {"train": y[tr], "val": y[:0]})


def test_cost_is_measured(linear):
    model, _ = linear
    whole = ph.measure_cost(model, batch_size=16, repeats=3)
    head = ph.measure_cost(model, batch_size=16, repeats=3, head_only=True)
    assert 0 < head < whole < 1.0


def test_training_is_deterministic_for_a_seed(prefix, maps, data):
    a, _ = trained("spatial", prefix, maps, data, seed=5)
    b, _ = trained("spatial", prefix, maps, data, seed=5)
    c, _ = trained("spatial", prefix, maps, data, seed=6)
    sa, sb, sc = (m.head.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("kind", ["linear", "spatial"])
def test_save_load_round_trips_exactly(kind, ref, key, prefix, maps, data, linear, tmp_path):
    model, _ = linear if kind == "linear" else trained(kind, prefix, maps, data)
    path = tmp_path / "head.pt"
    ph.save_head(model, path)
    back = ph.load_head(path, ref, key)
    assert back.point == model.point and back.kind == kind and back.outputs == 2
    x = data[0][-40:]
    assert np.array_equal(back.predict(x), model.predict(x))
    meta = ph.read_head_meta(path)
    assert (meta["reference"], meta["layers"], meta["size"], meta["kind"]) == (key, 6, [W, H], kind)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_and_damaged_files_are_refused(ref, key, linear, tmp_path):
    model, _ = linear
    path = tmp_path / "head.pt"
    ph.save_head(model, path)
    with pytest.raises(NoscopeError, match="trained on the layers of reference"):
        ph.load_head(path, ref, "yolov4-416x416-0000abcd")
    # one weight changed, everything else (format, meta, digest) kept: the digest catches it
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["linear.weight"][0, 0] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(NoscopeError, match="digest"):
        ph.load_head(tmp_path / "tampered.pt", ref, key)
    # a specialized CNN's file, a pickle that would run code, random bytes
    sp.save_model(sp.SpecializedCNN(sp.Arch(2, 16, 32, 50)), sp.Arch(2, 16, 32, 50), np.zeros((50, 50, 3), np.float32),
                  tmp_path / "cnn.pt")
    with pytest.raises(NoscopeError, match="not a noscope prefix head"):
        ph.load_head(tmp_path / "cnn.pt", ref, key)
    ran = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": ph.FORMAT, "x": Evil()}))
    with pytest.raises(NoscopeError, match="refusing"):
        ph.load_head(tmp_path / "evil.pt", ref, key)
    assert not ran.exists()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(NoscopeError):
        ph.load_head(tmp_path / "flipped.pt", ref, key)


def test_the_grid_trains_scores_times_and_resumes(ref, key, data, tmp_path):
    """What a bundle's training calls: every (point, kind) trained, held-out scores and AUC per object,
    a cost; a second run finds the saved heads in `work` and gives the same scores."""
    from types import SimpleNamespace

    x, y, tr, va, te = data
    parts = SimpleNamespace(train=tr, val=va, heldout=te)
    points = [pf.PrefixPoint(key, 4, W, H), pf.PrefixPoint(key, 6, W, H)]
    say = []
    grid = ph.train_heads(ref, points, {(W, H): x}, y, parts, ["car", "sign"], tmp_path, "k1", kinds=("linear",), batch_size=16,
                         say=say.append)
    names = [c.name for c in grid.candidates]
    assert names == ["ref-L4-96x64-linear", "ref-L6-96x64-linear"] and len(say) == 2
    c = grid.candidates[1]
    assert c.spec["prefix"] == dict(reference=key, layers=6, size=[W, H]) and c.cost_s > 0
    assert min(c.heldout_aucs.values()) == c.heldout_auc > 0.95
    assert grid.heldout_scores[c.name].shape == (te.sum(), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{n}-k1.pt" for n in names]
    again = ph.train_heads(ref, points, {(W, H): x}, y, parts, ["car", "sign"], tmp_path, "k1", kinds=("linear",))
    assert all(again.candidates[i].train == {"resumed": True} for i in range(2))
    assert all(np.array_equal(again.heldout_scores[n], grid.heldout_scores[n]) for n in names)
    # frames in decoded batches; linear heads only keep pooled features (pooled from float32 maps,
    # not float16 ones: the scores move by a few percent, not more)
    batches = lambda: (x[s : s + 50] for s in range(0, len(x), 50))  # noqa: E731
    one = ph.train_heads(ref, points, {(W, H): batches}, y[:, 0], parts, ["car"], tmp_path / "one", "k2",
                        kinds={6: ("linear",)}, batch_size=16)
    assert [c.name for c in one.candidates] == ["ref-L6-96x64-linear"]
    p1, p2 = one.heldout_scores["ref-L6-96x64-linear"], grid.heldout_scores["ref-L6-96x64-linear"][:, 0]
    assert np.allclose(p1, p2, rtol=0.05, atol=1e-3)
    assert one.heldout_scores["ref-L6-96x64-linear"].shape == (te.sum(),) and "heldout_aucs" not in one.candidates[0].to_dict()


def test_a_torchvision_backbone_gives_a_prefix_too():
    """Random weights (no download): the prefix is the backbone body's first children, fed the
    frames scaled by the model's own mean and std."""
    tv = load_reference("fasterrcnn_mobilenet_v3_large_fpn", device="cpu", random_weights=True)
    point = pf.PrefixPoint(reference_key(tv), 4, W, H)
    prefix = pf.build_prefix(tv, point)
    x = np.random.default_rng(1).integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    got = pf.extract(prefix, x, dtype=torch.float32)[4]
    t = tv.model.transform
    with torch.inference_mode():
        ref = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(t.image_mean).view(1, 3, 1, 1)) \
            / torch.tensor(t.image_std).view(1, 3, 1, 1)
        for layer in list(tv.model.backbone.body.children())[:4]:
            ref = layer(ref)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(NoscopeError, match="stages"):
        pf.build_prefix(tv, pf.PrefixPoint(point.reference, 99, W, H))
