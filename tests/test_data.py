import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan_keras import data
from cyclegan_keras.data import DataError, Preprocessing


def save(path, array, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


def rgb(value, height=40, width=48):
    return np.full((height, width, 3), value, np.uint8)


@pytest.fixture
def messy_folder(tmp_path):
    """Good images in every format users have, and three broken files."""
    folder = tmp_path / "trainA"
    save(folder / "good.jpg", rgb(200))
    save(folder / "nested" / "UPPER.PNG", rgb(100))
    save(folder / "gray.png", np.full((40, 48), 50, np.uint8))
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    save(folder / "rgba.png", rgba)
    save(folder / "sixteen.png", np.full((40, 48), 65535, np.uint16))
    save(folder / "palette.gif", rgb(30)[..., 0], mode="L")
    Image.fromarray(np.full((40, 48, 3), [10, 200, 30], np.uint8)).convert("P", palette=Image.ADAPTIVE).save(
        folder / "indexed.png"
    )
    save(folder / "plain.bmp", rgb(70))
    good_jpeg = (folder / "good.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(good_jpeg[:200] + bytes(range(256)) * 4)
    (folder / "truncated.png").write_bytes((folder / "gray.png").read_bytes()[:60])
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


BAD = {"corrupt.jpg", "truncated.png", "notes.jpg"}


def test_bad_files_are_reported_and_skipped(messy_folder):
    p = Preprocessing(mode="none")
    domain = data.folder_domain(messy_folder, p)
    assert len(domain) == 8
    assert {path.split("/")[-1] for path, _ in domain.bad} == BAD
    assert all("cannot decode" in reason for _, reason in domain.bad)
    report = data.report_bad_files([domain])
    assert "Skipped 3" in report and str(messy_folder / "notes.jpg") in report
    images = {image.shape for image in domain.images}
    assert images == {(40, 48, 3)}
    # The whole epoch runs without an error.
    batches = list(data.unpaired_dataset(domain, domain, p, epochs=1).as_numpy_iterator())
    assert len(batches) == 8


def test_strict_mode_fails_before_training_with_the_list(messy_folder):
    with pytest.raises(DataError) as error:
        data.folder_domain(messy_folder, Preprocessing(mode="none"), strict_data=True)
    for name in BAD:
        assert name in str(error.value)


def test_formats_convert_to_rgb_and_gray(messy_folder):
    cases = [
        ("gray.png", [50, 50, 50]),
        ("rgba.png", [255, 0, 0]),
        ("sixteen.png", [255] * 3),
        ("plain.bmp", [70] * 3),
        ("indexed.png", [10, 200, 30]),
    ]
    for name, expected in cases:
        image = data.decode_image(tf.io.read_file(str(messy_folder / name)), 3).numpy()
        np.testing.assert_array_equal(image[0, 0], expected, err_msg=name)
    gray = data.decode_image(tf.io.read_file(str(messy_folder / "good.jpg")), 1).numpy()
    assert gray.shape == (40, 48, 1)
    half = data.decode_image(tf.io.encode_png(tf.constant(np.full((2, 2, 1), 32896, np.uint16))), 1)
    assert int(half[0, 0, 0]) == 128  # 16-bit values scaled, not truncated
    assert data.folder_domain(messy_folder, Preprocessing(mode="none", channels=1)).images[0].shape == (40, 48, 1)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("resize_and_crop", (32, 32)),
        ("crop", (32, 32)),
        ("scale_width", (36, 48)),  # width 48 -> 48, height kept at 36
        ("scale_width_and_crop", (32, 32)),
        ("none", (36, 48)),  # rounded to multiples of 4
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_preprocess_modes_shape_and_range(mode, expected, training):
    image = np.random.default_rng(0).integers(0, 256, (37, 49, 3), np.uint8)
    image[0, 0], image[1, 1] = 0, 255
    p = Preprocessing(mode=mode, load_size=48 if "width" in mode else 40, crop_size=32)
    output = data.augment(data.resize_for(tf.constant(image), p), p, tf.constant([1, 2]), training).numpy()
    assert output.shape == (*expected, 3) and output.dtype == np.float32
    assert -1.0 <= output.min() < -0.5 and 0.5 < output.max() <= 1.0


def test_images_smaller_than_the_crop_are_resized_up():
    p = Preprocessing(mode="crop", crop_size=32)
    small = data.resize_for(tf.zeros((10, 20, 3), tf.uint8), p)
    assert small.shape == (32, 64, 3)


def test_invalid_preprocessing_is_named():
    with pytest.raises(ValueError, match="crop_size \\(300\\) cannot be larger than load_size \\(286\\)"):
        Preprocessing(crop_size=300)
    with pytest.raises(ValueError, match="preprocess"):
        Preprocessing(mode="zoom")


def identified_domain(name, values, size=40):
    """A domain whose image i is constant `values[i]`, with a gradient to show flips."""
    images = []
    for value in values:
        image = rgb(value, size, size)
        image[:, : size // 2, 1] = 0
        images.append(image)
    return data.array_domain(images, Preprocessing(load_size=size, crop_size=size), name)


def ids(batch):
    return [int(round((v + 1) * 127.5)) for v in batch[:, :, :, 0].mean(axis=(1, 2))]


def test_pairing_epoch_length_and_every_a_once():
    a = identified_domain("A", [10, 20, 30, 40, 50, 60])
    b = identified_domain("B", [100, 110, 120, 130])
    p = Preprocessing(load_size=40, crop_size=32)
    assert data.steps_per_epoch(a, b, 2) == 3
    stream = data.unpaired_dataset(a, b, p, batch_size=2, seed=3)
    assert stream.element_spec[0].shape == (2, 32, 32, 3)
    epochs = []
    for epoch in range(3):
        batches = list(stream.skip(3 * epoch).take(3).as_numpy_iterator())
        seen_a = sorted(i for real_a, _ in batches for i in ids(real_a))
        assert seen_a == [10, 20, 30, 40, 50, 60]
        epochs.append([i for real_a, _ in batches for i in ids(real_a)])
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    seen_b = {i for real_a, real_b in stream.take(30).as_numpy_iterator() for i in ids(real_b)}
    assert seen_b == {100, 110, 120, 130}


def test_randomness_in_training_only_and_resumable():
    a = identified_domain("A", [10, 20])
    p = Preprocessing(load_size=40, crop_size=32)
    train = [x for x, _ in data.unpaired_dataset(a, a, p, seed=0).take(40).as_numpy_iterator()]
    flipped = {bool(x[0, 0, 0, 1] > x[0, 0, -1, 1]) for x in train}
    assert flipped == {True, False}
    assert len({x[0, :, :, 1].tobytes() for x in train}) > 4  # crops vary
    test = [list(data.unpaired_dataset(a, a, p, training=False).as_numpy_iterator()) for _ in range(2)]
    for (x1, y1), (x2, y2) in zip(*test):
        np.testing.assert_array_equal(x1, x2)
    # Epoch 1 rebuilt on its own equals epoch 1 of one long stream.
    long = list(data.unpaired_dataset(a, a, p, seed=5).take(4).as_numpy_iterator())
    resumed = list(data.unpaired_dataset(a, a, p, seed=5, start_epoch=1).skip(1).take(1).as_numpy_iterator())
    np.testing.assert_array_equal(long[3][0], resumed[0][0])
    np.testing.assert_array_equal(long[3][1], resumed[0][1])


def test_streaming_equals_cached(messy_folder):
    p = Preprocessing(load_size=40, crop_size=32)
    cached = data.folder_domain(messy_folder, p)
    streamed = data.folder_domain(messy_folder, p, cache_bytes=0)
    assert cached.images is not None and streamed.paths is not None and len(streamed) == len(cached)
    for (x1, y1), (x2, y2) in zip(
        data.unpaired_dataset(cached, cached, p, seed=1).take(5).as_numpy_iterator(),
        data.unpaired_dataset(streamed, streamed, p, seed=1).take(5).as_numpy_iterator(),
    ):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_reference_layout_and_folder_errors(tmp_path):
    for d in "AB":
        save(tmp_path / "ds" / f"train{d}" / "x.png", rgb(1))
    a, b = data.reference_folder_domains(tmp_path / "ds", "train", Preprocessing(mode="none"))
    assert (a.name, b.name, len(a), len(b)) == ("trainA", "trainB", 1, 1)
    with pytest.raises(DataError, match="Missing: .*testA"):
        data.reference_folder_domains(tmp_path / "ds", "test")
    with pytest.raises(DataError, match="not found: .*nowhere"):
        data.reference_folder_domains(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images .* in folder: .*empty"):
        data.folder_domain(tmp_path / "empty", Preprocessing())


def test_synthetic_domains_are_deterministic_and_related():
    p = Preprocessing(load_size=32, crop_size=32)
    a1, b1 = data.synthetic_domains(4, 32, preprocessing=p, seed=2)
    a2, _ = data.synthetic_domains(4, 32, preprocessing=p, seed=2)
    np.testing.assert_array_equal(a1.images[0], a2.images[0])
    raw_a = data.synthetic_images("A", 8, 32)
    red, blue = raw_a[..., 0].mean(), raw_a[..., 2].mean()
    assert blue > red + 10  # a navy background
    assert (raw_a[..., 0] > 150).mean() > 0.05  # warm shapes on it
    b = data.synthetic_images("B", 8, 32)
    assert b[..., 0].mean() > b[..., 2].mean() + 10  # the channel roll makes B's background red
    np.testing.assert_array_equal(data.synthetic_mapping(data.synthetic_mapping(b, "b2a"), "a2b"), b)
    assert data.synthetic_images("A", 1, (24, 40), channels=1).shape == (1, 24, 40, 1)


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    p = Preprocessing(load_size=40, crop_size=32)
    with tfds.testing.mock_data(num_examples=3):
        a, b = data.tfds_domains("horse2zebra", "train", p)
    assert len(a) == len(b) == 3
    batch = next(iter(data.unpaired_dataset(a, b, p)))
    assert batch[0].shape == (1, 32, 32, 3)


def test_tfds_offline_fails_fast_with_advice(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError, match="needs a download.*--dataroot"):
        data.tfds_domains("monet2photo", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 30
    with pytest.raises(DataError, match="Unknown dataset 'zebra2horse'.*horse2zebra"):
        data.tfds_domains("zebra2horse")


def test_unbatchable_mode_is_named():
    a = data.array_domain([rgb(1, 40, 40), rgb(1, 40, 44)], Preprocessing(mode="none"), "A")
    with pytest.raises(DataError, match="batch_size=1"):
        data.unpaired_dataset(a, a, Preprocessing(mode="none"), batch_size=2)


# -- Paired data (pix2pix) ------------------------------------------------------------


@pytest.fixture
def aligned_folder(tmp_path, rng):
    """A|B files whose B half is the synthetic mapping of its A half (noise, so any shift shows)."""
    folder = tmp_path / "facades" / "train"
    for i in range(3):
        a = rng.integers(0, 256, (24, 24 + 4 * i, 3), dtype=np.uint8)
        save(folder / f"{i}.png", np.concatenate([a, data.synthetic_mapping(a)], axis=1))
    save(folder / "odd.png", rgb(9, 24, 49))
    return folder


def test_pairs_get_the_same_crop_and_flip(aligned_folder):
    p = Preprocessing(mode="crop", crop_size=16)
    a, b = data.aligned_domains(aligned_folder, p)
    assert (len(a), len(b)) == (3, 3) and a.images is not None
    assert [(Path(path).name, reason) for path, reason in a.bad] == [
        ("odd.png", "width 49 is odd: an A|B file splits at the middle into two halves of one size")
    ]
    assert not b.bad and "without a pair" in data.report_bad_files([a, b])
    pairs = list(data.paired_dataset(a, b, p, seed=1).take(15).as_numpy_iterator())
    for real_a, real_b in pairs:
        np.testing.assert_array_equal(real_b, data.synthetic_mapping(real_a))  # pixel for pixel
    assert len({real_a.tobytes() for real_a, _ in pairs}) > 8  # crops and flips vary
    # Files decoded on the fly (past the cache budget) give the same batches; two shards make an epoch.
    streamed = data.aligned_domains(aligned_folder, p, cache_bytes=0)
    assert streamed[0].paths is not None and streamed[1].half == "right"
    again = data.paired_dataset(*streamed, p, seed=1).take(3).as_numpy_iterator()
    for (x1, y1), (x2, y2) in zip(pairs, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    shards = [
        x.tobytes()
        for index in (0, 1)
        for x, _ in data.paired_dataset(a, b, p, seed=1, epochs=1, shard=(2, index)).as_numpy_iterator()
    ]
    assert sorted(shards) == sorted(x.tobytes() for x, _ in pairs[:3])


def test_paired_folders_match_by_name_and_list_what_they_leave_out(tmp_path, rng):
    def image(height=24, width=24):
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

    a_dir, b_dir = tmp_path / "trainA", tmp_path / "trainB"
    for name in ("0", "1_A", "sub/5"):  # trainA/1_A.jpg pairs with trainB/1_B.jpg, as in the CycleGAN zips
        save(a_dir / f"{name}.png", image())
    for name in ("0", "1_B", "sub/5"):
        save(b_dir / f"{name}.png", image())
    save(a_dir / "4.jpg", image())
    save(a_dir / "4.png", image())  # the same name twice
    save(b_dir / "4.png", image())
    save(a_dir / "sizes.png", image())
    save(b_dir / "sizes.png", image(20, 24))
    save(a_dir / "only_a.png", image())
    save(b_dir / "only_b.png", image())
    (a_dir / "broken.png").write_bytes(b"not an image")
    save(b_dir / "broken.png", image())
    p = Preprocessing(mode="none")
    a, b = data.paired_folder_domains(a_dir, b_dir, p)
    assert len(a) == len(b) == 4  # 0, 1, 4 (the .jpg, first by name), sub/5
    for real_a, real_b in zip(a.images, b.images):
        assert real_a.shape == real_b.shape
    np.testing.assert_array_equal(a.images[3], np.asarray(Image.open(a_dir / "sub/5.png")))
    np.testing.assert_array_equal(b.images[3], np.asarray(Image.open(b_dir / "sub/5.png")))
    reasons = {Path(path).name: reason for path, reason in a.bad + b.bad}
    assert set(reasons) == {"4.png", "sizes.png", "only_a.png", "only_b.png", "broken.png"}
    assert reasons["4.png"].startswith("has the name of ") and "4.jpg" in reasons["4.png"]
    assert reasons["sizes.png"] == f"is 24x24 but its pair {b_dir / 'sizes.png'} is 24x20: a pair needs one size"
    assert reasons["only_a.png"].startswith(f"no file named like it in {b_dir}")
    assert (
        reasons["broken.png"].startswith("cannot decode")
        and f"its pair {b_dir / 'broken.png'}" in reasons["broken.png"]
    )
    assert [Path(path).name for path, _ in b.bad] == ["only_b.png"]
    report = data.report_bad_files([a, b])
    assert report.startswith("Skipped 5 image file(s), unreadable or without a pair:") and "[trainB]" in report
