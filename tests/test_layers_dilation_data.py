"""fyu/caffe-dilation's ImageLabelData and BinLabelData.

The reference cases (fixtures from the fork itself) fix the TEST-phase, fixed-order
outputs bit for bit over several forward calls; the synthetic tests cover what
the fork draws at random (crop offsets, mirror, shuffle, rand_skip, rand_scale)
through images whose pixels encode their own coordinates, the resumable stream,
shards, and the errors bad lists and files give.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from caffe_fixture import CaffeCase

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import FcnwildError
from fcnwild.layers.base import TEST, TRAIN, LayerContext
from fcnwild.layers.dilation_data import read_bin, write_bin
from fcnwild.layers.registry import layer_class
from fcnwild.nets.net import Net
from fcnwild.nets.prototxt import parse_text

REFERENCE_CASES = ["image_label_data_frontend", "image_label_data_constant_pad",
                   "bin_label_data"]


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_every_forward_call_matches_caffe_dilation(name):
    case = CaffeCase(name)
    net = Net(case.prototxt_path, phase=case.meta["phase"].lower())
    for k in range(case.meta["forward_calls"]):
        net.forward()
        recorded = case.arrays(f"forward_calls/{k}")
        assert recorded
        for blob, ref in recorded.items():
            case.assert_close(net.blobs[blob].data, ref, "forward", f"call {k}: {blob}")


# --------------------------------------------------------------------------- helpers
def coded_image(height: int, width: int, item: int) -> np.ndarray:
    """BGR: B = row, G = column, R = the item's number."""
    rows, cols = np.mgrid[:height, :width]
    return np.stack([rows, cols, np.full_like(rows, item)], axis=-1).astype(np.uint8)


def write_dataset(folder: Path, sizes, label=lambda rows, cols: cols % 200) -> None:
    """images.txt / labels.txt over coded PNGs; label = ``label(rows, cols)``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"img{i}.png"), coded_image(h, w, i))
        rows, cols = np.mgrid[:h, :w]
        cv2.imwrite(str(folder / f"lab{i}.png"), label(rows, cols).astype(np.uint8))
    (folder / "images.txt").write_text("".join(f"img{i}.png\n" for i in range(len(sizes))))
    (folder / "labels.txt").write_text("".join(f"lab{i}.png\n" for i in range(len(sizes))))


def image_label_layer(folder: Path, *, phase=TRAIN, crop=20, batch=4, mirror=False,
                      shuffle=False, extra="", grid=None, seed=0):
    grid = grid or f"dim: {crop} dim: {crop} stride: 1 stride: 1 offset: 0 offset: 0"
    text = f"""name: "data" type: "ImageLabelData" top: "data" top: "label"
      transform_param {{ crop_size: {crop} mirror: {str(mirror).lower()} }}
      image_label_data_param {{ image_list_path: "images.txt" label_list_path: "labels.txt"
        batch_size: {batch} shuffle: {str(shuffle).lower()} label_slice {{ {grid} }} {extra} }}"""
    return build(text, folder, phase, seed)


def build(text: str, folder: Path, phase=TRAIN, seed: int = 0):
    param = parse_text(text, caffe_pb2.LayerParameter())
    torch.manual_seed(seed)
    layer = layer_class(param.type)(param, LayerContext(phase=phase, base_dir=folder,
                                                        source="net.prototxt"))
    layer.setup([])
    return layer


def batches(layer, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(t.numpy() for t in layer.forward()) for _ in range(count)]


def crops(layer, count: int) -> np.ndarray:
    """(item, top row, left column, mirrored) per item of ``count`` batches."""
    rows = []
    for data, _ in batches(layer, count):
        mirrored = data[:, 1, 0, 0] > data[:, 1, 0, 1]
        left = np.where(mirrored, data[:, 1, 0, -1], data[:, 1, 0, 0])
        rows.append(np.stack([data[:, 2, 0, 0], data[:, 0, 0, 0], left, mirrored], axis=1))
    return np.concatenate(rows).astype(int)


# --------------------------------------------------------------------------- randomness
def test_train_crops_are_uniform_and_mirror_flips_half(tmp_path):
    write_dataset(tmp_path, [(30, 30)])
    drawn = crops(image_label_layer(tmp_path, mirror=True, batch=50), 12)   # 600 items
    for axis in (1, 2):
        counts = np.bincount(drawn[:, axis], minlength=11)
        assert len(counts) == 11                        # offsets 0 .. 30 - 20 only
        assert np.all(np.abs(counts - 600 / 11) < 5 * np.sqrt(600 / 11)), counts
    assert abs(drawn[:, 3].sum() - 300) < 5 * np.sqrt(150)


def test_test_phase_crops_the_centre_and_still_mirrors_half(tmp_path):
    write_dataset(tmp_path, [(31, 26)])
    drawn = crops(image_label_layer(tmp_path, phase=TEST, mirror=True, batch=40), 5)
    assert set(drawn[:, 1]) == {5} and set(drawn[:, 2]) == {3}     # (31-20)//2, (26-20)//2
    assert abs(drawn[:, 3].sum() - 100) < 5 * np.sqrt(50)


def test_mirror_flips_data_and_label_together(tmp_path):
    write_dataset(tmp_path, [(30, 34)])
    layer = image_label_layer(tmp_path, mirror=True, batch=16,
                              grid="dim: 3 dim: 5 stride: 4 stride: 3 offset: 2 offset: 1")
    flips = 0
    for data, label in batches(layer, 2):
        columns = data[:, 1][:, 2::4, 1::3][:, :3, :5]     # the data's column codes there
        np.testing.assert_array_equal(label[:, 0], columns % 200)
        flips += int((data[:, 1, 0, 0] > data[:, 1, 0, 1]).sum())
    assert 0 < flips < 32


def test_a_seed_fixes_every_draw_and_another_seed_changes_them(tmp_path):
    write_dataset(tmp_path, [(30, 36), (28, 40), (33, 33), (40, 29), (31, 31)])
    extra = "rand_scale: true min_scale: 0.8 max_scale: 1.3 rand_skip: 3"
    make = lambda seed: image_label_layer(tmp_path, mirror=True, shuffle=True, extra=extra,
                                          batch=3, seed=seed)
    a, b, c = batches(make(1), 4), batches(make(1), 4), batches(make(2), 4)
    assert all(np.array_equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c))


def test_shuffle_permutes_every_epoch_and_reshuffles_at_the_wrap(tmp_path):
    write_dataset(tmp_path, [(20, 20)] * 5)
    layer = image_label_layer(tmp_path, shuffle=True, batch=3, seed=3)
    items = crops(layer, 10)[:, 0]                        # 30 items = 6 epochs of 5
    epochs = items.reshape(6, 5)
    assert all(sorted(e) == list(range(5)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1           # reshuffled at the wrap
    plain = crops(image_label_layer(tmp_path, batch=3), 2)[:, 0]
    assert list(plain) == [0, 1, 2, 3, 4, 0]             # list order, wrapping in a batch


def test_rand_skip_starts_within_the_first_rand_skip_items(tmp_path):
    write_dataset(tmp_path, [(20, 20)] * 6)
    firsts = {crops(image_label_layer(tmp_path, batch=1, extra="rand_skip: 4", seed=s),
                    1)[0, 0] for s in range(40)}
    assert firsts == {0, 1, 2, 3}


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_rand_scale_resizes_the_image_like_opencv_and_the_label_nearest(tmp_path, scale):
    """min = max: the draw is fixed, so the layer must equal one reading files that were
    resized beforehand (INTER_AREA below 1, INTER_CUBIC above, labels INTER_NEAREST)."""
    write_dataset(tmp_path / "raw", [(30, 44)], label=lambda r, c: (r * 7 + c) % 19)
    image = cv2.imread(str(tmp_path / "raw/img0.png"))
    label = cv2.imread(str(tmp_path / "raw/lab0.png"), cv2.IMREAD_GRAYSCALE)
    method = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    (tmp_path / "pre").mkdir()
    cv2.imwrite(str(tmp_path / "pre/img0.png"),
                cv2.resize(image, None, fx=scale, fy=scale, interpolation=method))
    cv2.imwrite(str(tmp_path / "pre/lab0.png"),
                cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))
    for name in ("images.txt", "labels.txt"):
        (tmp_path / "pre" / name).write_text((tmp_path / "raw" / name).read_text())
    grid = "dim: 4 dim: 4 stride: 3 stride: 3 offset: 2 offset: 2"
    scaled = image_label_layer(tmp_path / "raw", phase=TEST, batch=1, grid=grid,
                               extra=f"rand_scale: true min_scale: {scale} max_scale: {scale}")
    ready = image_label_layer(tmp_path / "pre", phase=TEST, batch=1, grid=grid)
    for ours, reference in zip(scaled.forward(), ready.forward()):
        assert torch.equal(ours, reference)


# --------------------------------------------------------------------------- positions, shards
def test_a_saved_position_continues_the_stream_exactly(tmp_path):
    write_dataset(tmp_path, [(30, 36), (28, 40), (33, 33)])
    make = lambda seed: image_label_layer(tmp_path, mirror=True, shuffle=True, batch=2,
                                          extra="rand_scale: true max_scale: 1.5", seed=seed)
    straight = make(5)
    expected = batches(straight, 4)
    stopped = make(5)
    batches(stopped, 2)
    resumed = make(99)                   # another seed: the position carries the layer's own
    resumed.load_state_dict_position(stopped.state_dict_position())
    for got, want in zip(batches(resumed, 2), expected[2:]):
        assert all(np.array_equal(x, y) for x, y in zip(got, want))


def test_shards_read_one_stream_between_them(tmp_path):
    write_dataset(tmp_path, [(20, 20)] * 5)
    whole = crops(image_label_layer(tmp_path, shuffle=True, batch=4, seed=8), 3)[:, 0]
    ranks = []
    for rank in range(2):
        layer = image_label_layer(tmp_path, shuffle=True, batch=2, seed=8)
        layer.set_shard(rank, 2)
        ranks.append(crops(layer, 3)[:, 0].reshape(3, 2))
    merged = np.stack(ranks, axis=-1).reshape(-1)      # rank 0, rank 1, rank 0, ...
    np.testing.assert_array_equal(merged, whole)


# --------------------------------------------------------------------------- BinLabelData
def write_bins(folder: Path, count: int, shape=(3, 6, 8), label_hw=(12, 16)) -> list:
    rng = np.random.RandomState(4)
    arrays = [rng.randn(*shape).astype(np.float32) for _ in range(count)]
    for i, array in enumerate(arrays):
        write_bin(folder / f"f{i}.bin", array)
        rows, cols = np.mgrid[:label_hw[0], :label_hw[1]]
        cv2.imwrite(str(folder / f"l{i}.png"), ((rows * 16 + cols) % 250).astype(np.uint8))
    (folder / "bins.txt").write_text(" ".join(f"f{i}.bin" for i in range(count)))
    (folder / "labels.txt").write_text("\n".join(f"l{i}.png" for i in range(count)))
    return arrays


def bin_layer(folder: Path, extra: str = "", batch: int = 2, seed: int = 0):
    return build(f"""name: "bins" type: "BinLabelData" top: "data" top: "label"
      bin_label_data_param {{ bin_list_path: "bins.txt" label_list_path: "labels.txt"
        batch_size: {batch} label_slice {{ dim: 6 dim: 8 stride: 2 }} {extra} }}""",
                 folder, TRAIN, seed)


def test_bin_label_data_mirrors_data_and_label_together_by_default(tmp_path):
    arrays = write_bins(tmp_path, 1)
    layer = bin_layer(tmp_path, batch=40)
    data, label = (t.numpy() for t in layer.forward())
    rows, cols = np.mgrid[:6, :8] * 2
    plain = ((rows * 16 + cols) % 250).astype(np.float32)
    flipped = np.array([not np.array_equal(d, arrays[0]) for d in data])
    assert 5 < flipped.sum() < 35
    for d, l, f in zip(data, label[:, 0], flipped):
        np.testing.assert_array_equal(d, arrays[0][:, :, ::-1] if f else arrays[0])
        np.testing.assert_array_equal(l, plain[:, ::-1] if f else plain)
    quiet = bin_layer(tmp_path, "mirror: false", batch=4)
    assert all(np.array_equal(d, arrays[0]) for d in quiet.forward()[0].numpy())


def test_bin_label_data_position_and_write_bin_round_trip(tmp_path):
    arrays = write_bins(tmp_path, 3)
    assert np.array_equal(read_bin(tmp_path / "f1.bin"), arrays[1])
    straight = bin_layer(tmp_path, "shuffle: true", seed=1)
    expected = batches(straight, 4)
    stopped = bin_layer(tmp_path, "shuffle: true", seed=1)
    batches(stopped, 1)
    resumed = bin_layer(tmp_path, "shuffle: true", seed=2)
    resumed.load_state_dict_position(stopped.state_dict_position())
    for got, want in zip(batches(resumed, 3), expected[1:]):
        assert all(np.array_equal(x, y) for x, y in zip(got, want))


# --------------------------------------------------------------------------- bad input
def _expect(fragments, make):
    with pytest.raises(FcnwildError) as info:
        layer = make()
        layer.forward()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_an_image_list_naming_a_missing_file_names_the_list_line(tmp_path):
    write_dataset(tmp_path, [(20, 20)] * 3)
    (tmp_path / "images.txt").write_text("img0.png\nimg1.png img9.png\n")
    _expect(["images.txt:2", "'img9.png'", "not found"], lambda: image_label_layer(tmp_path))


def test_a_label_list_shorter_than_the_image_list(tmp_path):
    write_dataset(tmp_path, [(20, 20)] * 3)
    (tmp_path / "labels.txt").write_text("lab0.png lab1.png")
    _expect(["names 3 files", "names 2", "labels.txt", "layer 'data'"],
            lambda: image_label_layer(tmp_path))


def test_an_undecodable_image_is_named(tmp_path):
    write_dataset(tmp_path, [(20, 20)] * 2)
    (tmp_path / "img1.png").write_bytes(b"not a png")
    _expect(["images.txt:2", "cannot decode the image", "img1.png"],
            lambda: image_label_layer(tmp_path, batch=2))


@pytest.mark.parametrize("grid, fragment", [
    ("dim: 4 stride: 1 stride: 1 offset: 0 offset: 0", "label_slice.dim has 1 value"),
    ("dim: 4 dim: 4 stride: 1 offset: 0 offset: 0", "label_slice.stride has 1 value"),
    ("dim: 4 dim: 4 stride: 8 stride: 8 offset: 0 offset: 0", "outside the 20 x 20 crop"),
])
def test_a_label_slice_that_does_not_fit(tmp_path, grid, fragment):
    write_dataset(tmp_path, [(20, 20)])
    _expect([fragment, "layer 'data'", "net.prototxt"],
            lambda: image_label_layer(tmp_path, grid=grid))


def test_crop_size_is_required(tmp_path):
    write_dataset(tmp_path, [(20, 20)])
    _expect(["crop_size is required", "layer 'data'"],
            lambda: image_label_layer(tmp_path, crop=0, grid="dim: 1 dim: 1 stride: 1 "
                                      "stride: 1 offset: 0 offset: 0"))


@pytest.mark.parametrize("damage, fragment", [
    (lambda raw: np.int32(6).tobytes() + raw[4:], "type code 6; expected 5"),
    (lambda raw: raw[:4] + np.int32(2).tobytes() + raw[8:], "2 dims; expected 3"),
    (lambda raw: raw[:6], "header is truncated"),
    (lambda raw: raw[:-4], "body is truncated"),
    (lambda raw: raw + b"\0" * 4, "longer than its header says"),
])
def test_a_damaged_bin_file_is_named(tmp_path, damage, fragment):
    write_bins(tmp_path, 2)
    path = tmp_path / "f1.bin"
    path.write_bytes(damage(path.read_bytes()))
    _expect([fragment, "f1.bin", "layer 'bins'"], lambda: bin_layer(tmp_path))


def test_a_bin_slice_outside_the_map_and_a_one_value_label_dim(tmp_path):
    write_bins(tmp_path, 1)
    _expect(["bin_slice reaches row/column (7, 7)", "6 x 8"],
            lambda: bin_layer(tmp_path, "bin_slice { dim: 4 stride: 2 offset: 1 }"))
    _expect(["label_slice.dim has 1 value"], lambda: build(
        """name: "bins" type: "BinLabelData" top: "data" top: "label"
        bin_label_data_param { bin_list_path: "bins.txt" label_list_path: "labels.txt"
          label_slice { dim: 6 } }""", tmp_path))
