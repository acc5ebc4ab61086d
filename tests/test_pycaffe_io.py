"""fcnwild.caffe.io: pycaffe's conversions, image loading/resizing and Transformer.

Image loading is compared with Pillow's decoding (what skimage.io.imread uses)
scaled as skimage.img_as_float does; resize expectations are worked out by hand
from skimage's pixel-centre interpolation with zeros outside the image.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import zoom

from fcnwild.base.errors import DatasetError
from fcnwild.caffe import io as caffe_io
from fcnwild.caffe.proto import caffe_pb2

# --- blobs and datums --------------------------------------------------------

def test_blobproto_to_array_uses_shape_or_legacy_dims():
    blob = caffe_pb2.BlobProto(data=np.arange(6.0), diff=np.arange(6.0) * -1)
    blob.shape.dim.extend([2, 3])
    assert caffe_io.blobproto_to_array(blob).shape == (2, 3)
    np.testing.assert_array_equal(caffe_io.blobproto_to_array(blob, return_diff=True),
                                  -np.arange(6.0).reshape(2, 3))
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=np.arange(6.0))
    legacy.shape.dim.extend([6])    # ignored: the legacy fields win, as in pycaffe
    assert caffe_io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    assert caffe_io.blobproto_to_array(legacy).dtype == np.float64


def test_array_blobproto_round_trip_and_blobprotovector():
    arr = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    diff = arr * 2
    blob = caffe_io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    assert not blob.HasField("num")
    np.testing.assert_array_equal(caffe_io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe_io.blobproto_to_array(blob, return_diff=True), diff)
    arrays = [arr, np.arange(5.0)]
    serialized = caffe_io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(serialized, bytes)
    back = caffe_io.blobprotovector_str_to_arraylist(serialized)
    assert [a.shape for a in back] == [(2, 3, 4), (5,)]
    np.testing.assert_array_equal(back[0], arr)
    np.testing.assert_array_equal(back[1], np.arange(5.0))


def test_datum_round_trips_uint8_as_bytes_and_others_as_floats():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe_io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 7)
    assert datum.data == pixels.tobytes() and len(datum.float_data) == 0
    back = caffe_io.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)
    back[0, 0, 0] = 9     # a writable array, like np.fromstring gave pycaffe

    floats = np.linspace(0, 1, 6).reshape(1, 2, 3)
    datum = caffe_io.array_to_datum(floats)
    assert not datum.HasField("label") and not datum.data
    assert datum.float_data == pytest.approx(floats.ravel())
    assert caffe_io.datum_to_array(datum).dtype == np.float64
    with pytest.raises(ValueError, match="Incorrect array shape."):
        caffe_io.array_to_datum(np.zeros((2, 2)))


# --- Transformer -------------------------------------------------------------

def imagenet_transformer(shape=(1, 3, 4, 5)) -> caffe_io.Transformer:
    t = caffe_io.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_applies_pycaffes_steps_in_order_and_deprocess_undoes_them():
    image = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    t = imagenet_transformer()
    out = t.preprocess("data", image)
    expected = (image.transpose(2, 0, 1)[::-1] * 255
                - np.array([104.0, 117.0, 123.0])[:, None, None]) * 0.5
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", out[None]), image, atol=1e-6)


def test_preprocess_resizes_to_the_input_size():
    image = np.random.default_rng(2).random((8, 10, 3)).astype(np.float32)
    t = imagenet_transformer()
    out = t.preprocess("data", image)
    resized = caffe_io.resize_image(image, (4, 5))
    np.testing.assert_allclose(out, t.preprocess("data", resized), atol=1e-4)


def test_full_mean_and_mean_shape_checks():
    t = caffe_io.Transformer({"data": (1, 3, 2, 2), "grey": (1, 1, 2, 2)})
    mean = np.arange(12.0).reshape(3, 2, 2)
    t.set_mean("data", mean)
    t.set_transpose("data", (2, 0, 1))
    np.testing.assert_array_equal(t.preprocess("data", np.zeros((2, 2, 3))), -mean)
    t.set_mean("grey", np.ones((2, 2)))         # (H, W) means one channel
    with pytest.raises(ValueError, match="Mean channels incompatible with input."):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape incompatible with input shape."):
        t.set_mean("data", np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 2, 2)))


def test_transformer_input_checks():
    t = caffe_io.Transformer({"data": (1, 3, 2, 2)})
    with pytest.raises(Exception, match="label is not one of the net inputs"):
        t.set_raw_scale("label", 255)
    with pytest.raises(Exception, match="Transpose order needs to have the same number"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="Channel swap needs to have the same number"):
        t.set_channel_swap("data", (1, 0))


# --- resize_image ------------------------------------------------------------

def test_upsampling_interpolates_pixel_centres_with_zeros_outside():
    # Output column j samples input x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 and
    # both output rows sample y = -0.25 / 0.25, each a quarter off the image. Outside
    # the image skimage's mode='constant' reads 0 of the [0, 1]-normalised image,
    # i.e. the image minimum.
    im = np.array([[2.0, 6.0]], dtype=np.float32)[:, :, None]
    std = np.array([0.0, 0.25, 0.75, 0.75]) * 0.75
    out = caffe_io.resize_image(im, (2, 4))
    assert out.shape == (2, 4, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0], np.tile(std * 4 + 2, (2, 1)), rtol=1e-6)


def test_downsampling_by_two_averages_blocks_without_anti_aliasing():
    im = np.random.default_rng(3).random((4, 6, 3)).astype(np.float32)
    out = caffe_io.resize_image(im, (2, 3))
    blocks = im.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, rtol=1e-5, atol=1e-6)


def test_nearest_order_repeats_pixels():
    im = np.array([[1.0, 5.0]], dtype=np.float32)[:, :, None]
    out = caffe_io.resize_image(im, (1, 4), interp_order=0)
    np.testing.assert_array_equal(out[0, :, 0], [1, 1, 5, 5])


def test_constant_image_stays_constant():
    out = caffe_io.resize_image(np.full((3, 3, 3), 7, dtype=np.float32), (5, 2))
    assert out.shape == (5, 2, 3) and out.dtype == np.float32
    assert np.all(out == 7)


def test_other_channel_counts_use_ndimage_zoom():
    im = np.random.default_rng(4).random((6, 4, 5))
    out = caffe_io.resize_image(im, (9, 2))
    np.testing.assert_array_equal(out, zoom(im, (1.5, 0.5, 1), order=1).astype(np.float32))
    assert out.shape == (9, 2, 5) and out.dtype == np.float32


# --- load_image --------------------------------------------------------------

@pytest.fixture
def rgba(tmp_path):
    rng = np.random.default_rng(5)
    return (rng.random((7, 9, 4)) * 255).astype(np.uint8)


def test_load_colour_png_gives_rgb_floats(tmp_path, rgba):
    Image.fromarray(rgba[:, :, :3]).save(tmp_path / "rgb.png")
    img = caffe_io.load_image(str(tmp_path / "rgb.png"))
    assert img.shape == (7, 9, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img, (rgba[:, :, :3] / 255).astype(np.float32))
    grey = caffe_io.load_image(str(tmp_path / "rgb.png"), color=False)
    expected = (rgba[:, :, :3] / 255) @ np.array([0.2125, 0.7154, 0.0721])
    assert grey.shape == (7, 9, 1)
    np.testing.assert_array_equal(grey[:, :, 0], expected.astype(np.float32))


def test_load_drops_alpha(tmp_path, rgba):
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(caffe_io.load_image(str(tmp_path / "rgba.png")),
                                  (rgba[:, :, :3] / 255).astype(np.float32))


def test_load_grey_png_expands_to_three_channels_for_colour(tmp_path, rgba):
    Image.fromarray(rgba[:, :, 0]).save(tmp_path / "grey.png")
    expected = (rgba[:, :, 0] / 255).astype(np.float32)
    colour = caffe_io.load_image(str(tmp_path / "grey.png"))
    assert colour.shape == (7, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(colour[:, :, c], expected)
    single = caffe_io.load_image(tmp_path / "grey.png", color=False)
    assert single.shape == (7, 9, 1)
    np.testing.assert_array_equal(single[:, :, 0], expected)


def test_load_16_bit_png_scales_by_65535(tmp_path):
    values = (np.random.default_rng(6).random((5, 4)) * 65535).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    img = caffe_io.load_image(str(tmp_path / "deep.png"), color=False)
    np.testing.assert_array_equal(img[:, :, 0], (values / 65535).astype(np.float32))


def test_load_jpeg_decodes_like_pillow(tmp_path, rgba):
    Image.fromarray(rgba[:, :, :3]).save(tmp_path / "photo.jpg", quality=90)
    decoded = np.asarray(Image.open(tmp_path / "photo.jpg"))
    np.testing.assert_array_equal(caffe_io.load_image(str(tmp_path / "photo.jpg")),
                                  (decoded / 255).astype(np.float32))


def test_load_missing_or_broken_image_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match="nothere.png.*no such file"):
        caffe_io.load_image(str(tmp_path / "nothere.png"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png.*not a readable image"):
        caffe_io.load_image(str(tmp_path / "broken.png"))


# --- oversample --------------------------------------------------------------

def test_oversample_takes_corners_centre_and_their_mirrors():
    images = [np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2) + k * 100
              for k in range(2)]
    crops = caffe_io.oversample(images, (2, 3))
    assert crops.shape == (20, 2, 3, 2) and crops.dtype == np.float32
    for k, im in enumerate(images):
        # The centre crop spans rows 1.5..3.5 and columns 1.5..4.5, truncated.
        windows = [im[0:2, 0:3], im[0:2, 3:6], im[3:5, 0:3], im[3:5, 3:6], im[1:3, 1:4]]
        for i, window in enumerate(windows):
            np.testing.assert_array_equal(crops[10 * k + i], window)
            np.testing.assert_array_equal(crops[10 * k + 5 + i], window[:, ::-1])
