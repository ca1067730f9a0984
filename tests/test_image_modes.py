"""Image modes read by ``load_image_file`` (the ``imagefolder`` dataset): every PIL mode is converted to exact RGB
pixels or refused by name — never silently wrong (16-bit grey turned white, transparency turned black, …).

Real files are written with PIL in each mode and read back at their own size, so pixels can be checked exactly."""

import numpy as np
import pytest
from PIL import Image

import ddpm.imagefolder as imagefolder
from ddpm.datasets import imagefolder_has_classes, load_split, prepare_dataset
from ddpm.imagefolder import ALPHA_BACKGROUND, load_image_file
from ddpm.features import train_classifier


def _over_white(colour, alpha):
    """Reference compositing in floating point: straight alpha over the documented white background."""
    return round(colour * alpha / 255 + 255 * (1 - alpha / 255))


def _rgb(array):
    """(3, H, W) → (H, W, 3) list for readable comparisons."""
    return array.transpose(1, 2, 0).tolist()


def test_background_is_white():
    assert ALPHA_BACKGROUND == 255


# --------------------------------------------------------------------------------------------
# Grey levels: 16-bit, 32-bit integer, 8-bit, 1-bit.


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 30000], [65535, 257 * 100]], dtype=np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"  # really a 16-bit file
    out = load_image_file(path, 2)
    assert out.shape == (3, 2, 2) and out.dtype == np.uint8
    expected = [[0, round(30000 / 65535 * 255)], [255, 100]]  # 30000 → 117, not 255 as convert("RGB") gave
    assert expected[0][1] == 117
    for channel in out:
        assert channel.tolist() == expected


def test_16bit_grey_transparent_value_goes_white(tmp_path):
    path = tmp_path / "grey16_trns.png"
    Image.fromarray(np.array([[1000, 30000], [30000, 1000]], dtype=np.uint16)).save(path, transparency=1000)
    with Image.open(path) as check:
        assert check.mode == "I;16" and check.info["transparency"] == 1000
    out = load_image_file(path, 2)
    assert out[0].tolist() == [[255, 117], [117, 255]]


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_other_integer_grey_modes_are_scaled(tmp_path, mode):
    path = tmp_path / f"grey_{mode.replace(';', '')}.tif"
    image = Image.fromarray(np.array([[0, 30000], [65535, 257 * 7]], dtype=np.int32))  # mode "I"
    if mode != "I":
        image = image.convert(mode)
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    out = load_image_file(path, 2)
    assert (out == out[:1]).all()  # three equal channels
    assert out[0].tolist() == [[0, 117], [255, 7]]


def test_32bit_integer_grey_outside_16bit_range_is_refused(tmp_path):
    path = tmp_path / "big.tif"
    Image.fromarray(np.array([[0, 70000], [1, 2]], dtype=np.int32)).save(path)
    with pytest.raises(ValueError) as error:
        load_image_file(path, 2)
    assert str(path) in str(error.value) and "mode I is not supported" in str(error.value)
    assert "70000" in str(error.value)


def test_8bit_grey_is_exact(tmp_path):
    path = tmp_path / "grey8.png"
    Image.fromarray(np.array([[0, 1], [128, 255]], dtype=np.uint8)).save(path)
    out = load_image_file(path, 2)
    for channel in out:
        assert channel.tolist() == [[0, 1], [128, 255]]


def test_1bit_is_black_and_white(tmp_path):
    path = tmp_path / "bits.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1").save(path)
    with Image.open(path) as check:
        assert check.mode == "1"
    out = load_image_file(path, 2)
    for channel in out:
        assert channel.tolist() == [[0, 255], [255, 0]]


# --------------------------------------------------------------------------------------------
# Palettes and transparency (composited onto white).


def _palette_image():
    image = Image.frombytes("P", (2, 2), bytes([0, 1, 2, 0]))
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 0] + [0] * (3 * 253))
    return image


def test_palette_is_exact(tmp_path):
    path = tmp_path / "palette.png"
    _palette_image().save(path)
    out = load_image_file(path, 2)
    assert _rgb(out) == [[[10, 20, 30], [200, 0, 0]], [[0, 0, 0], [10, 20, 30]]]


def test_palette_transparent_index_goes_white(tmp_path):
    path = tmp_path / "palette_trns.png"
    _palette_image().save(path, transparency=2)  # index 2 (stored black) is transparent
    with Image.open(path) as check:
        assert check.mode == "P" and check.info["transparency"] == 2
    out = load_image_file(path, 2)
    assert _rgb(out) == [[[10, 20, 30], [200, 0, 0]], [[255, 255, 255], [10, 20, 30]]]


def test_grey_with_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "la.png"
    grey = np.array([[100, 100], [100, 0]], dtype=np.uint8)
    alpha = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(path)
    with Image.open(path) as check:
        assert check.mode == "LA"
    out = load_image_file(path, 2)
    expected = [[255, 100], [_over_white(100, 128), _over_white(0, 64)]]
    assert expected == [[255, 100], [177, 191]]
    for channel in out:
        assert channel.tolist() == expected


def test_rgba_transparent_and_half_transparent_pixels_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    pixels = np.array([[[0, 0, 0, 0], [200, 0, 0, 128]],  # fully transparent black; half-transparent red
                       [[10, 20, 30, 255], [0, 0, 255, 1]]], dtype=np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(path)
    out = load_image_file(path, 2)
    expected = [[[_over_white(c, px[3]) for c in px[:3]] for px in row] for row in pixels.astype(int).tolist()]
    assert expected == [[[255, 255, 255], [227, 127, 127]], [[10, 20, 30], [254, 254, 255]]]
    assert _rgb(out) == expected


def test_palette_with_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "pa.png"
    Image.fromarray(np.array([[[200, 0, 0, 128], [0, 0, 0, 0]]], dtype=np.uint8), mode="RGBA").save(path)
    with Image.open(path) as image:
        pa = image.convert("PA")
    out = imagefolder._image_to_rgb(pa, path)
    assert np.asarray(out).tolist() == [[[227, 127, 127], [255, 255, 255]]]


@pytest.mark.parametrize("mode, pixel, expected", [("RGBa", (50, 0, 0, 128), [177, 127, 127]),
                                                   ("La", (50, 128), [177, 177, 177])])
def test_premultiplied_alpha_is_composited_on_white(mode, pixel, expected):
    # premultiplied 50 at alpha 128 is straight ≈ 99.6: over white 99.6·128/255 + 255·127/255 = 50 + 127
    out = imagefolder._image_to_rgb(Image.new(mode, (1, 1), pixel), "mem.png")
    assert np.asarray(out).tolist() == [[expected]]


def test_1bit_and_rgb_transparent_colour_go_white(tmp_path):
    bits = tmp_path / "bits_trns.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1").save(bits, transparency=0)
    assert load_image_file(bits, 2)[0].tolist() == [[255, 255], [255, 255]]  # black transparent → all white
    rgb = tmp_path / "rgb_trns.png"
    Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]], [[4, 5, 6], [1, 2, 3]]], dtype=np.uint8)).save(
        rgb, transparency=(1, 2, 3))
    assert _rgb(load_image_file(rgb, 2)) == [[[255, 255, 255], [4, 5, 6]], [[4, 5, 6], [255, 255, 255]]]


# --------------------------------------------------------------------------------------------
# CMYK, YCbCr, EXIF orientation.


def test_cmyk_tiff_is_converted(tmp_path):
    path = tmp_path / "cmyk.tif"
    pixels = np.array([[[0, 255, 255, 0], [0, 0, 0, 0]], [[0, 0, 0, 255], [255, 0, 255, 0]]], dtype=np.uint8)
    Image.fromarray(pixels, mode="CMYK").save(path)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    assert _rgb(load_image_file(path, 2)) == [[[255, 0, 0], [255, 255, 255]], [[0, 0, 0], [0, 255, 0]]]


def test_cmyk_jpeg_is_converted(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # red
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = load_image_file(path, 16).astype(int)
    assert abs(out[0] - 255).max() <= 3 and out[1:].max() <= 3  # lossy: red within a few levels


def test_ycbcr_is_converted(tmp_path):
    image = Image.new("RGB", (2, 2), (200, 100, 50)).convert("YCbCr")
    out = imagefolder._image_to_rgb(image, "mem.jpg")
    assert np.abs(np.asarray(out).astype(int) - [200, 100, 50]).max() <= 2


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("orientation, red_half", [(6, "top"), (8, "bottom"), (1, "left")])
def test_exif_orientation_is_applied(tmp_path, fmt, orientation, red_half):
    # Stored 16 wide × 8 high, left half red, right half blue. Orientation 6 = rotate 90° clockwise to display: the
    # left (red) edge becomes the top; 8 = 90° counter-clockwise: red at the bottom; 1 = as stored: red at the left.
    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[:, :8] = (255, 0, 0)
    stored[:, 8:] = (0, 0, 255)
    image = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"oriented.{'jpg' if fmt == 'jpeg' else fmt}"
    image.save(path, format=fmt.upper(), exif=exif.tobytes(), **({"quality": 95} if fmt == "jpeg" else {}))
    with Image.open(path) as check:
        assert check.getexif()[0x0112] == orientation
    out = load_image_file(path, 8).astype(int)  # 8×8 centre crop of the displayed image
    red = (out[0] > 200) & (out[2] < 60)
    blue = (out[2] > 200) & (out[0] < 60)
    halves = {"top": (slice(1, 3), slice(None)), "bottom": (slice(5, 7), slice(None)),
              "left": (slice(None), slice(1, 3))}
    opposite = {"top": "bottom", "bottom": "top", "left": None}
    assert red[halves[red_half]].all()
    if opposite[red_half] is not None:
        assert blue[halves[opposite[red_half]]].all()
    else:
        assert blue[:, 5:7].all()


# --------------------------------------------------------------------------------------------
# Refused modes.


def test_float_image_is_refused_naming_file_and_mode(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32)).save(path)
    with Image.open(path) as check:
        assert check.mode == "F"
    with pytest.raises(ValueError) as error:
        load_image_file(path, 2)
    message = str(error.value)
    assert message.startswith(f"cannot read image {path}: mode F is not supported (")


def test_other_modes_are_refused_naming_file_and_mode():
    for mode in ("LAB", "HSV"):
        with pytest.raises(ValueError, match=f"cannot read image odd.tif: mode {mode} is not supported"):
            imagefolder._image_to_rgb(Image.new(mode, (1, 1)), "odd.tif")


# --------------------------------------------------------------------------------------------
# End to end through prepare_dataset, and flat folders without classes.


def test_prepare_imagefolder_mixing_modes(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    Image.fromarray(np.full((6, 6), 30000, dtype=np.uint16)).save(root / "a_grey16.png")  # → 117
    Image.new("L", (6, 6), 40).save(root / "b_grey8.png")  # → 40
    Image.new("RGBA", (6, 6), (0, 0, 0, 0)).save(root / "c_transparent.png")  # → white
    Image.new("RGBA", (6, 6), (0, 0, 200, 128)).save(root / "d_half.png")  # → (127, 127, 227)
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(root / "e_cmyk.jpg", quality=95)  # → ≈ red
    palette = Image.frombytes("P", (6, 6), bytes(36))
    palette.putpalette([0, 90, 0] + [0] * 765)
    palette.save(root / "f_palette.png")  # → (0, 90, 0)
    manifest = prepare_dataset("imagefolder", tmp_path / "out", path=root, image_size=4, test_fraction=0.34)
    assert manifest["num_classes"] == 0 and manifest["source_files"] == 6
    images = np.concatenate([load_split(tmp_path / "out", s)[0] for s in ("train", "test")])
    labels = np.concatenate([load_split(tmp_path / "out", s)[1] for s in ("train", "test")])
    assert images.shape == (6, 3, 4, 4) and (labels == -1).all()
    for image in images:  # every image is uniform
        assert (image == image[:, :1, :1]).all()
    colours = [tuple(int(v) for v in image[:, 0, 0]) for image in images]
    lossless = {(117, 117, 117), (40, 40, 40), (255, 255, 255), (127, 127, 227), (0, 90, 0)}
    assert lossless <= set(colours)  # exact pixels for the lossless files
    (jpeg,) = [c for c in colours if c not in lossless]
    assert np.abs(np.subtract(jpeg, (255, 0, 0))).max() <= 3  # the lossy CMYK JPEG: red within a few levels


def test_imagefolder_has_classes(tmp_path):
    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(path)

    classes = tmp_path / "classes"
    image(classes / "cats" / "a.png")
    image(classes / "dogs" / "deeper" / "b.png")
    assert imagefolder_has_classes(classes) is True
    assert imagefolder_has_classes(str(classes)) is True
    flat = tmp_path / "flat"
    image(flat / "a.png")
    image(flat / "b.png")
    assert imagefolder_has_classes(flat) is False
    mixed = tmp_path / "mixed"
    image(mixed / "cats" / "a.png")
    image(mixed / "loose.png")
    assert imagefolder_has_classes(mixed) is False
    with pytest.raises(FileNotFoundError):
        imagefolder_has_classes(tmp_path / "missing")


def test_classifier_on_unlabelled_images_says_what_to_do(tmp_path):
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError) as error:
        train_classifier(images, np.array([0, -1, -1, 1]), tmp_path / "c.pt", steps=1)
    message = str(error.value)
    assert "2 of the 4 training images have no class label" in message
    assert "subfolder per class" in message
    assert "evaluate.feature_extractor: inception-v3-compat" in message
    assert not (tmp_path / "c.pt").exists()
