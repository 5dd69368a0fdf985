import math
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cyclegan_keras import data, metrics
from cyclegan_keras.metrics import MetricError

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import fid_reference  # noqa: E402


def write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(np.asarray(image, np.uint8)))
    return str(path)


# -- FID --------------------------------------------------------------------------------


def test_frechet_distance_of_one_dimensional_gaussians_is_the_closed_form():
    # d^2 = (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2) for variances s1, s2.
    assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 4 + 9 - 2 * 6)
    sigma = np.diag([1.0, 4.0])
    assert metrics.frechet_distance([0, 0], sigma, [0, 0], sigma) == pytest.approx(0.0, abs=1e-12)


def test_fid_equals_pytorch_fids_scipy_computation_at_2048_dimensions():
    # Two 2048-d feature sets (300 and 200 samples: rank-deficient
    # covariances, as with real test sets). The expected value was computed
    # by pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm) in
    # tests/fid_reference.py.
    reference = np.load(TESTS / "fixtures" / "fid_inception_random.npz")
    set_a, set_b = fid_reference.fid_feature_sets(int(reference["fid_set_seed"]))
    assert metrics.fid(set_a, set_b) == pytest.approx(float(reference["fid_scipy"]), rel=1e-3)


def numpy_frechet_distance(mu1, s1, mu2, s2):
    """The square-root trace from the eigenvalues of S1 S2 (general eigensolver)."""
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
    return (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt


@pytest.mark.parametrize("count_a, count_b", [(60, 40), (400, 300)])
def test_both_fid_routes_equal_a_numpy_reference(count_a, count_b):
    # Fewer samples than dimensions: fid() takes the SVD route; more: the
    # eigendecomposition of the covariances (frechet_distance).
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((32, 256))
    set_a = rng.standard_normal((count_a, 32)) @ basis + 0.1 * rng.standard_normal((count_a, 256))
    set_b = rng.standard_normal((count_b, 32)) @ (0.8 * basis) + 0.2 + 0.1 * rng.standard_normal((count_b, 256))
    stats = metrics.feature_statistics(set_a) + metrics.feature_statistics(set_b)
    expected = numpy_frechet_distance(*stats)
    assert metrics.fid(set_a, set_b) == pytest.approx(expected, rel=1e-3)
    assert metrics.frechet_distance(*stats) == pytest.approx(expected, rel=1e-3)
    scipy = pytest.importorskip("scipy")
    assert scipy
    assert metrics.fid(set_a, set_b) == pytest.approx(fid_reference.frechet_distance_scipy(*stats), rel=1e-3)


@pytest.mark.slow
def test_covariance_route_at_2048_dimensions_equals_scipy():
    reference = np.load(TESTS / "fixtures" / "fid_inception_random.npz")
    set_a, set_b = fid_reference.fid_feature_sets(int(reference["fid_set_seed"]))
    stats = metrics.feature_statistics(set_a) + metrics.feature_statistics(set_b)
    assert metrics.frechet_distance(*stats) == pytest.approx(float(reference["fid_scipy"]), rel=1e-3)


def test_fid_needs_two_images_per_set():
    with pytest.raises(MetricError, match="at least 2 images per set; the real set has 1"):
        metrics.fid(np.zeros((3, 4)), np.zeros((1, 4)))


# -- KID --------------------------------------------------------------------------------


def clean_fid_kernel_distance(feats1, feats2, num_subsets, max_subset_size, rng):
    """clean-fid's kernel_distance, with its np.random.choice calls taken from `rng`."""
    n = feats1.shape[1]
    m = min(min(feats1.shape[0], feats2.shape[0]), max_subset_size)
    t = 0
    for _ in range(num_subsets):
        x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
        y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def test_kid_mean_is_clean_fids_kernel_distance():
    rng = np.random.default_rng(1)
    fake = rng.normal(0.3, 1.0, (40, 16))
    real = rng.normal(0.0, 1.0, (30, 16))
    mean, std = metrics.kid(fake, real, num_subsets=7, subset_size=20, seed=5)
    expected = clean_fid_kernel_distance(fake, real, 7, 20, np.random.default_rng(5))
    assert mean == pytest.approx(expected, rel=1e-12)
    assert mean > 0 and std > 0
    # subset size capped by the smaller set: one subset of all 30 real
    # features gives no spread over subsets for the real side only
    capped_mean, _ = metrics.kid(fake, real, num_subsets=3, subset_size=1000, seed=0)
    assert capped_mean == pytest.approx(clean_fid_kernel_distance(fake, real, 3, 1000, np.random.default_rng(0)))


def test_kid_of_a_set_with_itself_is_near_zero_and_bad_sizes_are_refused():
    features = np.random.default_rng(2).normal(size=(50, 8))
    mean, std = metrics.kid(features, features, num_subsets=20, subset_size=25)
    far, _ = metrics.kid(features + 3.0, features, num_subsets=20, subset_size=25)
    assert abs(mean) < 0.05 * far
    with pytest.raises(MetricError, match="at least 2 images per set"):
        metrics.kid(features[:1], features)
    with pytest.raises(MetricError, match="subset_size >= 2"):
        metrics.kid(features, features, subset_size=1)


# -- Paired scores ----------------------------------------------------------------------


def test_psnr_mae_ssim_by_hand():
    image = np.random.default_rng(0).integers(1, 255, (16, 16, 3)).astype(np.uint8)
    brighter = image + 1
    assert metrics.psnr(image, brighter) == pytest.approx(20 * math.log10(255))
    assert metrics.mae(image, brighter) == pytest.approx(1.0)
    assert metrics.psnr(image, image) == math.inf
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    # Constant images: SSIM reduces to the luminance term (2 m1 m2 + C1) /
    # (m1^2 + m2^2 + C1), C1 = (0.01 * 255)^2 on the 0..255 range (0.8 on [0, 1]).
    c1 = (0.01 * 255) ** 2
    flat_a, flat_b = np.full((16, 16, 1), 10, np.uint8), np.full((16, 16, 1), 20, np.uint8)
    expected = (2 * 10 * 20 + c1) / (10**2 + 20**2 + c1)
    assert metrics.ssim(flat_a, flat_b) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(MetricError, match="11x11"):
        metrics.ssim(image[:8, :8], image[:8, :8])


# -- Label scores -----------------------------------------------------------------------


def test_cityscapes_palette_and_palette_files(tmp_path):
    palette = metrics.Palette.cityscapes()
    assert len(palette.names) == 19 and palette.colours[0] == (128, 64, 128) and palette.ignore == ((0, 0, 0),)
    path = tmp_path / "palette.txt"
    path.write_text("# facades\n255 0 0 wall\n#00ff00 window\n  0 0 255   door frame \n0 0 0 void\n")
    parsed = metrics.Palette.from_file(path)
    assert parsed.names == ("wall", "window", "door frame")
    assert parsed.colours == ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    assert parsed.ignore == ((0, 0, 0),)
    for text, message in (
        ("255 0 0 a\n255 0 0 b\n", "appears twice"),
        ("255 0 0 only\n", "at least 2 classes"),
        ("255 0 a\n0 0 0 b\n", r"palette.txt:1: expected 'R G B name'"),
        ("300 0 0 a\n0 0 0 b\n", "0..255"),
    ):
        path.write_text(text)
        with pytest.raises(MetricError, match=message):
            metrics.Palette.from_file(path)
    with pytest.raises(MetricError, match="palette file not found"):
        metrics.Palette.from_file(tmp_path / "missing.txt")


def test_label_scores_by_hand():
    palette = metrics.Palette(("a", "b", "c"), ((255, 0, 0), (0, 255, 0), (0, 0, 255)), ((0, 0, 0),), "test")
    colours = np.array(palette.colours + palette.ignore, np.int16)
    # Truth: 6 pixels of a, 2 of b, 0 of c, 2 ignored. Output: a a a a b b | b a | c c
    truth = colours[[0, 0, 0, 0, 0, 0, 1, 1, 3, 3]]
    output = colours[[0, 0, 0, 0, 1, 1, 1, 0, 2, 2]]
    noise = np.random.default_rng(0).integers(-12, 13, truth.shape)  # JPEG-like noise stays nearest
    scores = metrics.LabelScores(palette)
    scores.update(np.clip(output + noise, 0, 255)[None], np.clip(truth - noise, 0, 255)[None])
    np.testing.assert_array_equal(scores.hist, [[4, 2, 0], [1, 1, 0], [0, 0, 0]])
    result = scores.result()
    assert result["pixel_accuracy"] == pytest.approx(5 / 8)
    assert result["class_accuracy"] == pytest.approx((4 / 6 + 1 / 2 + 0) / 3)  # absent class c counts 0
    assert result["class_iou"] == pytest.approx((4 / 7 + 1 / 4 + 0) / 3)
    assert result["per_class_iou"]["b"] == pytest.approx(1 / 4)


def test_a_truth_in_another_palette_is_refused():
    scores = metrics.LabelScores(metrics.Palette.cityscapes())
    other = np.full((1, 20, 3), (255, 255, 255), np.uint8)  # white: far from every Cityscapes colour
    with pytest.raises(MetricError, match="100% of the pixels of t.png are farther than 40"):
        scores.update(other, other, "t.png")


# -- Streaming --------------------------------------------------------------------------


def test_features_are_extracted_in_bounded_batches_of_one_size(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(8, 8)] * 5 + [(6, 10)] * 2 + [(8, 8)]
    paths = [write_png(tmp_path / f"{i:02d}.png", rng.integers(0, 256, (*s, 3))) for i, s in enumerate(sizes)]
    seen = []

    def mean_colour(images):
        seen.append(images.shape)
        return images.reshape(len(images), -1, 3).mean(axis=1)

    features = metrics.extract_features(paths, mean_colour, batch_size=3, verbose=False)
    assert seen == [(3, 8, 8, 3), (2, 8, 8, 3), (2, 6, 10, 3), (1, 8, 8, 3)]
    expected = [np.asarray(data.read_image(p)).reshape(-1, 3).mean(0) for p in paths]
    np.testing.assert_allclose(features, expected, rtol=1e-6)


def mean_colour_features(images):
    """A stand-in feature extractor for wiring tests: per-image colour statistics."""
    flat = images.reshape(len(images), -1, 3).astype(np.float64)
    return np.concatenate([flat.mean(1), flat.std(1)], axis=1)


def test_evaluate_generator_pairs_by_name_and_scores_the_inputs_as_baseline(tmp_path):
    # The synthetic domains' true mapping as the "model": paired scores are
    # perfect for it, and not for the inputs left unchanged.
    rng = np.random.default_rng(0)
    inputs = data.synthetic_images("A", 4, size=16, seed=1)
    input_paths = [write_png(tmp_path / "in" / f"img{i}.png", image) for i, image in enumerate(inputs)]
    truth_paths = [
        write_png(tmp_path / "truth" / f"img{i}.png", data.synthetic_mapping(image)) for i, image in enumerate(inputs)
    ]
    real_paths = [
        write_png(tmp_path / "real" / f"r{i}.png", image) for i, image in enumerate(data.synthetic_images("B", 5, 16))
    ]
    rng.shuffle(truth_paths)  # order must not matter: names do

    def true_mapping(images):
        return data.synthetic_mapping(images)

    settings = metrics.EvalSettings(batch_size=3, kid_subsets=5, verbose=False)
    scores = metrics.evaluate_generator(
        true_mapping, input_paths, real_paths, truth_paths, mean_colour_features, settings=settings
    )
    assert scores["psnr"] == math.inf and scores["mae"] == 0.0 and scores["ssim"] == pytest.approx(1.0)
    assert scores["identity"]["mae"] > 20
    assert scores["fid"] < scores["identity"]["fid"]
    assert scores["settings"]["images"] == 4 and scores["settings"]["real_images"] == 5
    assert scores["settings"]["kid_subset_size"] == 4


def test_evaluate_folders_matches_the_references_fake_suffix_and_refuses_missing_pairs(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (12, 12, 3))
    fakes = [write_png(tmp_path / "fake" / f"x{i}_fake_B.png", image) for i in range(2)]
    truth = [write_png(tmp_path / "truth" / f"x{i}.png", image) for i in range(2)]
    settings = metrics.EvalSettings(verbose=False)
    scores = metrics.evaluate_folders(fakes, truth_paths=truth, settings=settings)
    assert scores["mae"] == 0.0 and "fid" not in scores
    with pytest.raises(MetricError, match="No --truth image is named like the output 'x1_fake_B'"):
        metrics.evaluate_folders(fakes, truth_paths=truth[:1], settings=settings)


def test_channel_mismatch_is_refused(tmp_path):
    gray = [write_png(tmp_path / "gray" / f"g{i}.png", np.full((12, 12, 1), 9 * i)) for i in range(2)]
    colour = [write_png(tmp_path / "colour" / f"g{i}.png", np.full((12, 12, 3), 9 * i)) for i in range(2)]
    with pytest.raises(MetricError, match="outputs are grayscale .1 channel. but the --truth images are colour"):
        metrics.evaluate_folders(gray, truth_paths=colour, settings=metrics.EvalSettings(verbose=False))
    with pytest.raises(MetricError, match="outputs are colour .3 channels. but the --real images are grayscale"):
        metrics.evaluate_folders(colour, gray, features=mean_colour_features)
