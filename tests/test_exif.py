"""Reading image files as viewers show them: EXIF orientation, and sizes refused before decoding."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from cyclegan_keras import data, networks, translation
from cyclegan_keras.cli.export import load_representative
from cyclegan_keras.data import DataError, Preprocessing

ORIENTATIONS = range(1, 9)
# Four flat quadrants, so that each of the eight orientations gives another picture.
QUADRANTS = ([230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 230])


def quadrants(height, width):
    image = np.empty((height, width, 3), np.uint8)
    top, left = height // 2, width // 2
    image[:top, :left], image[:top, left:], image[top:, :left], image[top:, left:] = QUADRANTS
    return image


def save_oriented(path, orientation, height=6, width=8):
    """A `width` x `height` file (as stored) whose EXIF says `orientation`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 100, "subsampling": 0} if path.suffix == ".jpg" else {}
    Image.fromarray(quadrants(height, width)).save(path, exif=exif, **options)
    return path


def as_viewers_show(path):
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def assert_same_picture(actual, expected):
    assert actual.shape == expected.shape
    # TensorFlow's JPEG decoder (fast integer DCT) and PIL's differ by up to ~15 levels at edges;
    # a wrong orientation moves whole quadrants (210 levels).
    np.testing.assert_allclose(actual.astype(int), expected.astype(int), atol=40)


def png_declaring(path, width, height):
    """A PNG whose header declares `width` x `height` RGB pixels, with only a few bytes of pixel data."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096))))
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_read_image_shows_the_picture_as_viewers_do(tmp_path, orientation, suffix):
    path = save_oriented(tmp_path / f"photo{suffix}", orientation)
    image = data.read_image(path).numpy()
    assert image.shape == ((8, 6, 3) if orientation >= 5 else (6, 8, 3))
    assert_same_picture(image, as_viewers_show(path))


@pytest.fixture(scope="module")
def oriented_folder(tmp_path_factory):
    """One 16x12 (as stored) JPEG per orientation: o1.jpg ... o8.jpg."""
    folder = tmp_path_factory.mktemp("oriented")
    for orientation in ORIENTATIONS:
        save_oriented(folder / f"o{orientation}.jpg", orientation, height=12, width=16)
    return folder


@pytest.mark.parametrize("cache_bytes", [data.DEFAULT_CACHE_BYTES, 0], ids=["cached", "streamed"])
def test_training_images_are_oriented(oriented_folder, cache_bytes):
    p = Preprocessing(mode="none", flip=False)
    domain = data.folder_domain(oriented_folder, p, cache_bytes=cache_bytes)
    assert (domain.images is None) == (cache_bytes == 0)
    # The streamed domain decodes inside the tf.data graph.
    pairs = data.unpaired_dataset(domain, domain, p, training=False).as_numpy_iterator()
    for orientation, (real_a, _) in zip(ORIENTATIONS, pairs, strict=True):
        pixels = np.round((real_a[0] + 1.0) * 127.5).astype(np.uint8)
        assert_same_picture(pixels, as_viewers_show(oriented_folder / f"o{orientation}.jpg"))


def test_export_representative_images_are_oriented(oriented_folder):
    # 16x12 resized to a 12x12 square: only the content shows the orientation.
    images = load_representative(oriented_folder, 3, 12)
    p = Preprocessing(load_size=12, crop_size=12, flip=False)
    for orientation, image in zip(ORIENTATIONS, images, strict=True):
        viewed = data.array_domain([as_viewers_show(oriented_folder / f"o{orientation}.jpg")], p, "viewed")
        np.testing.assert_allclose(image, data.domain_images(viewed, p)[0], atol=40 / 127.5)


def test_translate_writes_portrait_photos_upright(tmp_path):
    photo = save_oriented(tmp_path / "photos" / "portrait.jpg", 6)
    generator = networks.resnet_generator(n_blocks=1, filters=8)
    written, bad = translation.translate_files(generator, tmp_path / "photos", tmp_path / "out", verbose=False)
    assert bad == []
    for path in (written[0], tmp_path / "out" / "inputs" / "portrait.png"):
        with Image.open(path) as image:
            assert image.size == (6, 8)  # 6 wide, 8 tall, as viewers show it
    with Image.open(tmp_path / "out" / "inputs" / "portrait.png") as copy:
        assert_same_picture(np.asarray(copy), as_viewers_show(photo))


def test_a_training_image_too_large_to_decode_is_listed_and_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "trainA"
    save_oriented(folder / "good.jpg", 1)
    png_declaring(folder / "huge.png", 20000, 20000)
    decoded = []
    decode_image = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda *args: decoded.append(args) or decode_image(*args))
    domain = data.folder_domain(folder, Preprocessing(mode="none"))
    assert len(domain) == 1 and len(decoded) == 1  # the huge one was refused before decoding
    [(path, reason)] = domain.bad
    assert path.endswith("huge.png") and "20000x20000" in reason and f"{data.MAX_TRAINING_PIXELS:,}" in reason
    with pytest.raises(DataError, match="huge.png: declares 20000x20000"):
        data.folder_domain(folder, Preprocessing(mode="none"), strict_data=True)


def test_the_decode_limit_is_a_parameter_and_bombs_give_no_warning(tmp_path):
    photo = save_oriented(tmp_path / "photo.jpg", 6)
    assert data.read_image(photo, max_pixels=48).shape == (8, 6, 3)
    with pytest.raises(data.UnreadableImage, match=r"photo.jpg: declares 8x6 pixels .* limit of 47 pixels"):
        data.read_image(photo, max_pixels=47)
    # Past PIL's own limits (a warning from 89 MP, an error from 179 MP) the refusal is ours alone.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(data.UnreadableImage, match="declares 20000x20000"):
            data.read_image(png_declaring(tmp_path / "huge.png", 20000, 20000))
        with pytest.raises(data.UnreadableImage, match="cannot decode"):  # within the limit: decoding fails
            data.read_image(png_declaring(tmp_path / "large.png", 10000, 10000), max_pixels=10**8)


def test_every_frame_of_a_gif_counts(tmp_path):
    # TensorFlow decodes every frame of a GIF to return the first.
    frames = [Image.fromarray(np.full((10, 10, 3), value, np.uint8)) for value in (0, 80, 160, 240)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert data.read_image(path, max_pixels=400).shape == (10, 10, 3)
    with pytest.raises(data.UnreadableImage, match="declares 4 frames of 10x10"):
        data.read_image(path, max_pixels=399)


def test_lossless_files_decode_to_their_exact_bytes(tmp_path):
    # TensorFlow widens 8-bit JPEG/BMP/GIF pixels to 16 bits as x * 256: rounding that back gave x - 1 above 128.
    rows, columns = np.mgrid[0:256, 0:16]
    ramp = np.stack([rows, 255 - rows, columns * 17], -1).astype(np.uint8)  # every value, in each colour channel
    files = {
        "rgb.bmp": Image.fromarray(ramp),
        "rgb.png": Image.fromarray(ramp),
        "gray.png": Image.fromarray(ramp[..., 0]),
        "palette.gif": Image.fromarray(ramp).quantize(200),
        "palette.png": Image.fromarray(ramp).quantize(200),
        "rgba.png": Image.fromarray(np.concatenate([ramp, ramp[..., :1]], -1)),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
        channels = 4 if name.startswith("rgba") else 3
        with Image.open(tmp_path / name) as stored:
            expected = np.asarray(stored.convert("RGBA" if channels == 4 else "RGB"))
        np.testing.assert_array_equal(data.read_image(tmp_path / name, channels), expected, err_msg=name)


def metadata(kind):
    """JPEG save options that say Orientation 6 in the way of `kind`."""
    if kind == "big-endian":  # "MM" EXIF, as many cameras write it
        exif = Image.Exif()
        exif.endian, exif[0x0112] = ">", 6
        assert exif.tobytes()[6:8] == b"MM"
        return {"exif": exif.tobytes()}
    if kind == "xmp":  # no EXIF: the orientation in XMP only
        return {"xmp": b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><tiff:Orientation>6</tiff:Orientation></x:xmpmeta>'}
    # One IFD entry cut short after its tag: shown as stored.
    return {"exif": b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12"}


@pytest.mark.parametrize("kind, shape", [("big-endian", (8, 6, 3)), ("xmp", (8, 6, 3)), ("malformed", (6, 8, 3))])
def test_orientation_is_found_where_pil_finds_it(tmp_path, kind, shape):
    path = tmp_path / "photo.jpg"
    Image.fromarray(quadrants(6, 8)).save(path, quality=100, subsampling=0, **metadata(kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's own "Corrupt EXIF data"
        image, expected = data.read_image(path).numpy(), as_viewers_show(path)
    assert image.shape == shape
    assert_same_picture(image, expected)
