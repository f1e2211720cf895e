"""Metrics against closed forms, against clean-fid's and torchmetrics' own results, and reference statistics."""

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from samplebench.data import load_digits
from samplebench.errors import UsageError
from samplebench.metrics import scores
from samplebench.metrics.extractors import DigitsExtractor, get_extractor
from samplebench.metrics.images import load_folder
from samplebench.metrics.reference import Reference, get_reference
from samplebench.sampling import to_uint8


def _write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(to_uint8(images)):
        Image.fromarray(a[..., 0]).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    return (_write_pngs(root / "train", load_digits("train")[0][:300]),
            _write_pngs(root / "test", load_digits("test")[0][:300]))


@pytest.fixture(scope="module")
def digits():
    return DigitsExtractor()


class FakeInception(torch.nn.Module):
    """A cheap stand-in with the TorchScript Inception's interface: ``layers`` (299x299 in [-1, 1] -> 2048 features)
    and ``forward(x, return_features, no_output_bias)`` on [0, 255] images of any size (class probabilities)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                          torch.nn.Linear(48, 2048), torch.nn.Tanh())
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        f = self.layers((x - 128) / 128)
        if return_features:
            return f
        return torch.softmax(self.output(f), 1)


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inception")
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, but it is the format of the real file
        torch.jit.script(FakeInception()).save(str(folder / "inception-2015-12-05.pt"))
    return folder / "inception-2015-12-05.pt"


# closed forms ---------------------------------------------------------------------------------------------------

def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # commuting covariances: sqrt(S1 S2) = Q diag(sqrt(ab)) Q^T
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    exact = np.sum((m1 - m2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert scores.fid(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-9)
    assert scores.fid(m1, s1, m1, s1) == pytest.approx(0, abs=1e-9)
    # a non-commuting pair: W2^2 between N(0, diag(1, 4)) and N(0, [[2, 1], [1, 2]]) from the 2x2 formula
    s1, s2 = np.diag([1.0, 4.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    assert scores.fid(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(5 + 4 - 2 * tr_sqrt, rel=1e-9)


@pytest.mark.parametrize("k", [2, 10])
def test_inception_score_closed_forms(k):
    one_hot = np.full((10 * k, k), -50.0)
    one_hot[np.arange(10 * k), np.arange(10 * k) % k] = 50.0
    assert scores.inception_score(one_hot, splits=1)[0] == pytest.approx(k, rel=1e-9)
    same = np.tile(np.random.default_rng(0).normal(size=(1, k)), (10 * k, 1))
    assert scores.inception_score(same, splits=1)[0] == pytest.approx(1, abs=1e-9)
    # with splits, each split of balanced one-hot predictions scores at most k, and is seeded
    assert scores.inception_score(one_hot, splits=5) == scores.inception_score(one_hot, splits=5)


# agreement with clean-fid and torchmetrics -----------------------------------------------------------------------

def test_folder_fid_equals_clean_fid_with_digits_extractor(folders, digits):
    from cleanfid import fid as cfid

    ours = [scores.extract(load_folder(f), digits).feats for f in folders]
    value = scores.fid(*scores.statistics(ours[0]), *scores.statistics(ours[1]))
    theirs = cfid.compute_fid(str(folders[0]), str(folders[1]), mode="clean", custom_feat_extractor=digits,
                              custom_fn_resize=digits.resizer(), num_workers=0, batch_size=64,
                              device=torch.device("cpu"), verbose=False, use_dataparallel=False)
    assert value == pytest.approx(theirs, rel=1e-9)
    assert 0.1 < value < 5  # two real digit sets are close but not equal
    theirs_feats = cfid.get_folder_features(str(folders[0]), digits, num_workers=0, batch_size=64,
                                            device=torch.device("cpu"), custom_fn_resize=digits.resizer(),
                                            verbose=False)
    assert np.array_equal(ours[0], theirs_feats)  # the same features, bit for bit
    # KID subsets of all 300 samples are permutations, so clean-fid's unseeded subsets do not matter here; it sums
    # float32 kernels, we sum float64 ones
    assert scores.kid(ours[0], ours[1]) == pytest.approx(cfid.kernel_distance(ours[0], ours[1]), rel=1e-5)


def test_torchmetrics_agrees(folders, digits):
    real, fake = load_folder(folders[0]), load_folder(folders[1])
    f_real, f_fake = scores.extract(real, digits).feats, scores.extract(fake, digits).feats
    ours_fid = scores.fid(*scores.statistics(f_fake), *scores.statistics(f_real))
    tm = scores.torchmetrics_fid_kid(real, fake, digits, kid_subsets=3, kid_subset_size=300)
    # Same features; torchmetrics accumulates float64 sums and takes the trace of sqrt(S1 S2) from eigenvalues where
    # clean-fid uses scipy's sqrtm, so the two agree to float64 round-off amplified by the 128-d matrix root.
    assert tm["fid"] == pytest.approx(ours_fid, rel=1e-5)
    # With subsets of every sample (a permutation) the unbiased MMD estimate is the same number, up to float32.
    assert tm["kid"] == pytest.approx(scores.kid(f_fake, f_real), rel=1e-4)


def test_inception_extractor_matches_clean_fid(folders, fake_inception, monkeypatch):
    from cleanfid import features as cfeatures
    from cleanfid import fid as cfid
    from cleanfid.inception_torchscript import InceptionV3W

    small = []
    for f in folders[:1]:
        dst = f.parent / f"{f.name}-small"
        if not dst.exists():
            dst.mkdir()
            for p in sorted(f.iterdir())[:24]:
                shutil.copy(p, dst / p.name)
        small.append(dst)
    # clean-fid's own pipeline (its resizer and its extractor for the mode), its weights read from our folder
    monkeypatch.setattr(cfeatures, "InceptionV3W", lambda path, download=True, resize_inside=False:
                        InceptionV3W(str(fake_inception.parent), download=False, resize_inside=resize_inside))
    for mode in ("clean", "legacy_tensorflow"):
        ext = get_extractor("inception", mode, inception_weights_path=fake_inception)
        ours = scores.extract(load_folder(small[0]), ext, logits=True)
        model = cfeatures.build_feature_extractor(mode, torch.device("cpu"), use_dataparallel=False)
        theirs = cfid.get_folder_features(str(small[0]), model, num_workers=0, batch_size=8,
                                          device=torch.device("cpu"), mode=mode, verbose=False)
        # equal features give equal FID and KID (a 2048-d FID of 24 samples would only test scipy's sqrtm)
        assert np.allclose(ours.feats, theirs, rtol=0, atol=1e-6), mode
        assert ours.feats.shape == (24, 2048) and ours.logits.shape == (24, 1008)
        assert np.allclose(np.exp(ours.logits).sum(1), 1, atol=1e-4)


def test_inception_weights_resolution(fake_inception, monkeypatch, tmp_path):
    monkeypatch.setenv("SAMPLEBENCH_INCEPTION_WEIGHTS", str(fake_inception.parent))  # a folder holding the file
    assert get_extractor("inception").weights_file == fake_inception
    monkeypatch.setenv("SAMPLEBENCH_INCEPTION_WEIGHTS", str(tmp_path / "nope.pt"))
    with pytest.raises(UsageError, match="nope.pt.*SAMPLEBENCH_INCEPTION_WEIGHTS.*do not exist"):
        get_extractor("inception")
    monkeypatch.delenv("SAMPLEBENCH_INCEPTION_WEIGHTS")
    monkeypatch.setenv("SAMPLEBENCH_CACHE", str(tmp_path))
    if (tmp_path.parent / "inception-2015-12-05.pt").exists() or __import__("os").path.exists(
            "/tmp/inception-2015-12-05.pt"):
        pytest.skip("real Inception weights are installed in clean-fid's location on this machine")
    with pytest.raises(UsageError, match=r"not downloadable \(HF_HUB_OFFLINE is set\); put inception-2015-12-05.pt "
                                         r"from https://\S+ at " + str(tmp_path / "inception")):
        get_extractor("inception")


# reference statistics -------------------------------------------------------------------------------------------

def test_reference_files_work_in_clean_fid(folders, digits, tmp_path, monkeypatch):
    import cleanfid
    from cleanfid import fid as cfid

    ref = get_reference(str(folders[0]), digits, name="mytrain")
    assert ref.count == 300 and ref.feats.shape == (300, 128)
    assert (tmp_path.parent / "x").parent.exists()
    stats = tmp_path / "stats"
    stats.mkdir()
    for suffix in (".npz", "_kid.npz"):
        shutil.copy(ref.save(tmp_path / "ours").with_name(ref.stem + suffix), stats)
    monkeypatch.setattr(cleanfid, "__file__", str(tmp_path / "__init__.py"))  # clean-fid's stats folder -> ours
    theirs = cfid.compute_fid(str(folders[1]), dataset_name="mytrain", dataset_split="custom", mode="clean",
                              model_name="digits", custom_feat_extractor=digits, custom_fn_resize=digits.resizer(),
                              num_workers=0, device=torch.device("cpu"), verbose=False, use_dataparallel=False)
    f = scores.extract(load_folder(folders[1]), digits).feats
    assert scores.fid(*scores.statistics(f), ref.mu, ref.sigma) == pytest.approx(theirs, rel=1e-9)
    # cached: the name alone finds it again, and so does the stats file itself
    again = get_reference("mytrain", digits)
    assert again.sha256 == ref.sha256 and again.count == 300 and again.source == ref.source
    direct = get_reference(str(stats / f"{ref.stem}.npz"), digits)
    assert direct.sha256 == ref.sha256 and np.array_equal(direct.feats, ref.feats)


def test_builtin_and_npz_references(digits, tmp_path):
    train = get_reference("digits-train", digits)
    assert train.count == 1437 and train.name == "digits-train"
    assert get_reference("digits-train", digits).sha256 == train.sha256  # from the cache
    images, _ = load_digits("train")
    np.savez(tmp_path / "arrays.npz", images=images.numpy())  # float [-1, 1], as sample --save-npz writes
    assert get_reference(str(tmp_path / "arrays.npz"), digits).sha256 == train.sha256
    np.savez(tmp_path / "u8.npz", to_uint8(images))  # uint8 NHWC, one unnamed array
    assert get_reference(str(tmp_path / "u8.npz"), digits).sha256 == train.sha256
    gmm = get_reference("digits-gmm", digits)
    assert gmm.count == 10_000 and "exact samples" in gmm.source
    # the fitted mixture is close to the data it was fitted to, but not equal
    assert 0.5 < scores.fid(gmm.mu, gmm.sigma, train.mu, train.sigma) < 20


def test_reference_errors(digits, tmp_path):
    with pytest.raises(UsageError, match="unknown reference 'nosuch'"):
        get_reference("nosuch", digits)
    np.savez(tmp_path / "stats2048.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(UsageError, match="dimension 2048, but the digits extractor gives 128"):
        get_reference(str(tmp_path / "stats2048.npz"), digits)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="has no images"):
        get_reference(str(tmp_path / "empty"), digits)


def test_folder_errors(tmp_path, digits):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not an image")
    with pytest.raises(UsageError, match="has no images"):
        load_folder(tmp_path / "notes")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not a png")
    with pytest.raises(UsageError, match="x.png.*not a readable image"):
        load_folder(tmp_path / "bad")
    (tmp_path / "mixed").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "mixed" / "a.png")
    Image.new("L", (28, 28)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(UsageError, match=r"mixes image sizes: 16x16 \(a.png\) and 28x28 \(b.png\)"):
        load_folder(tmp_path / "mixed")
    with pytest.raises(UsageError, match="digits extractor takes 16x16 images, got 28x28"):
        scores.extract(np.zeros((2, 28, 28, 3), np.uint8), digits)
    with pytest.raises(UsageError, match="unknown feature extractor 'clip'; valid: digits, inception"):
        get_extractor("clip")
    with pytest.raises(UsageError, match="unknown mode 'fast'"):
        get_extractor("digits", "fast")


def test_kid_is_seeded_and_leaves_global_rng_alone(digits):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(0.3, 1, size=(300, 8))
    state = np.random.get_state()[1].copy()
    k1 = scores.kid(a, b, num_subsets=5, max_subset_size=100)
    assert np.array_equal(np.random.get_state()[1], state)
    assert k1 == scores.kid(a, b, num_subsets=5, max_subset_size=100) and k1 > 0
    assert k1 != scores.kid(a, b, num_subsets=5, max_subset_size=100, seed=1)


def test_reference_stem_is_clean_fids_name():
    r = Reference("Digits-Train", "digits", "clean", np.zeros(1), np.zeros((1, 1)), None, 0, "")
    assert r.stem == "digits-train_clean_digits_custom_na"
    r.extractor = "inception"
    assert r.stem == "digits-train_clean_custom_na"
