"""pycaffe's ``caffe.io``: array <-> BlobProto/Datum conversion, image loading and
resizing, and the ``Transformer`` that turns an image into a net input.

pycaffe uses scikit-image for loading and resizing; this module reproduces its
results with OpenCV and SciPy:

- ``load_image`` gives skimage's ``img_as_float(imread(...))``: float32 in [0, 1]
  (8-bit / 255, 16-bit / 65535), RGB channel order, H x W x C, EXIF orientation
  ignored. ``color=False`` on a colour image gives skimage's grey
  (0.2125 R + 0.7154 G + 0.0721 B). Differences: an alpha channel is dropped
  before that grey conversion (newer skimage blends RGBA onto white first), and
  16-bit colour PNGs keep their 16 bits (skimage reading through Pillow
  reduces them to 8 bits: a difference below 1/510).
- ``resize_image`` of 1- and 3-channel images gives skimage's
  ``resize(..., mode='constant')`` as pycaffe calls it: pixel-centre aligned
  interpolation with zeros outside the image, so upsampled borders are pulled
  towards the image minimum, as in pycaffe. It is computed with
  ``scipy.ndimage.zoom`` (grid mode, float64) and clipped to the input range,
  which matches skimage without anti-aliasing, the behaviour of the skimage
  releases pycaffe was written against (skimage >= 0.15 blurs before
  downsampling by default). Other channel counts use ``scipy.ndimage.zoom``
  exactly as pycaffe does.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
from scipy.ndimage import zoom

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError

# skimage.color.rgb2gray's luminance weights (ITU-R BT.709).
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


# ---------------------------------------------------------------------------
# proto / datum / ndarray conversion
# ---------------------------------------------------------------------------

def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The blob's data (or diff) as a float64 array, shaped by the legacy
    num/channels/height/width when any of them is set, else by ``shape``."""
    # float64 as pycaffe's list-of-floats conversion gave (upb would give float32).
    data = np.array(blob.diff if return_diff else blob.data, dtype=np.float64)
    if (blob.HasField('num') or blob.HasField('channels') or blob.HasField('height')
            or blob.HasField('width')):
        return data.reshape(blob.num, blob.channels, blob.height, blob.width)
    return data.reshape(blob.shape.dim)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """An N-d array (and optionally its diff, of the same shape) as a BlobProto
    with ``shape``."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(diff.astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    """Arrays serialized as one BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(str: bytes) -> list[np.ndarray]:  # pycaffe names it str
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(str)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A C x H x W array as a Datum: uint8 arrays as the ``data`` bytes, others as
    ``float_data``."""
    if arr.ndim != 3:
        raise ValueError('Incorrect array shape.')
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum's pixels as a C x H x W array: uint8 from ``data``, else float64
    from ``float_data`` (the label stays in ``datum.label``)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# ---------------------------------------------------------------------------
# Pre-processing
# ---------------------------------------------------------------------------

class Transformer:
    """Prepares H x W x K images for a net's inputs and back, per input blob.

    ``inputs`` maps each input name to its blob shape (N, K, H, W).
    ``preprocess`` applies, in order: float32, resize to (H, W), transpose,
    channel swap, raw scale, mean subtraction, input scale.
    """

    def __init__(self, inputs: dict) -> None:
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise Exception(f'{in_} is not one of the net inputs: {self.inputs}')

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """``data`` (H' x W' x K) as the K x H x W input ``in_`` expects."""
        self.__check_input(in_)
        caffe_in = data.astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[channel_swap, :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Undo ``preprocess`` (except the resize) on a net blob (singleton axes
        squeezed away)."""
        self.__check_input(in_)
        decaf_in = data.copy().squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order taking the image to the input's layout, e.g. (2, 0, 1) for
        H x W x K -> K x H x W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception('Transpose order needs to have the same number of '
                            'dimensions as the input.')
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception('Channel swap needs to have the same number of '
                            'dimensions as the input channels.')
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Factor applied before the mean subtraction, e.g. 255 for [0, 1] images
        into nets trained on 0-255 pixels."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Mean to subtract: one value per channel (K,), or a full (K, H, W) or
        (H, W) mean of the input's shape."""
        self.__check_input(in_)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError('Mean channels incompatible with input.')
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError('Mean shape invalid')
            if ms != self.inputs[in_][1:]:
                raise ValueError('Mean shape incompatible with input shape.')
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Factor applied after the mean subtraction."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


# ---------------------------------------------------------------------------
# Image IO
# ---------------------------------------------------------------------------

def _as_float(img: np.ndarray) -> np.ndarray:
    # skimage.img_as_float: integers scaled by their dtype's maximum.
    if img.dtype.kind == 'u':
        return img / np.iinfo(img.dtype).max
    if img.dtype.kind == 'i':
        return np.maximum(img / np.iinfo(img.dtype).max, -1.0)
    return img.astype(np.float64)


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: H x W x 3 RGB, or with ``color=False``
    H x W x 1 intensity (colour images converted to grey). Grey images are
    repeated into three channels when ``color`` is true; alpha is dropped."""
    img = cv2.imread(os.fspath(filename), cv2.IMREAD_UNCHANGED)
    if img is None:
        reason = "no such file" if not os.path.exists(filename) else "not a readable image"
        raise DatasetError(f"cannot load image: {reason}", file=filename)
    img = _as_float(img)
    if img.ndim == 3:
        img = img[:, :, 2::-1]   # OpenCV's BGR(A) -> RGB, alpha dropped
        if not color:
            img = img @ _GREY_WEIGHTS
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def _resize_like_skimage(im: np.ndarray, new_dims: Sequence[int], order: int) -> np.ndarray:
    """skimage.transform.resize(im, new_dims, order, mode='constant') without
    anti-aliasing, for an H x W x K image in [0, 1]."""
    factors = (new_dims[0] / im.shape[0], new_dims[1] / im.shape[1], 1.0)
    out = zoom(im.astype(np.float64), factors, order=order, mode='grid-constant', cval=0.0,
               grid_mode=True)
    return np.clip(out, im.min(), im.max())


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """An H x W x K image resized to ``new_dims`` (height, width) as float32, with
    spline interpolation of order ``interp_order`` (1: linear). A constant image
    stays constant."""
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            im_std = (im - im_min) / (im_max - im_min)
            resized_std = _resize_like_skimage(im_std, new_dims, interp_order)
            resized_im = resized_std * (im_max - im_min) + im_min
        else:
            ret = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized_im = zoom(im, scale + (1,), order=interp_order)
    return resized_im.astype(np.float32)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """Ten crops per image (four corners, centre, and their left-right mirrors) as a
    (10 N) x h x w x K float32 array; all images must have the first one's shape."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0

    crops_ix = np.empty((5, 4), dtype=int)
    corners = [(i, j) for i in (0, im_shape[0] - crop_dims[0])
               for j in (0, im_shape[1] - crop_dims[1])]
    for k, (i, j) in enumerate(corners):
        crops_ix[k] = (i, j, i + crop_dims[0], j + crop_dims[1])
    # Float corners truncated toward zero, as pycaffe's int array assignment does.
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0,
                                                               crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))

    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]
    return crops
