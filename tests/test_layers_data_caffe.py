"""BVLC Caffe's data layers (Data, ImageData, MemoryData, WindowData, HDF5Output) and the
DataTransformer: Caffe's recorded batches through the Net, the transform's semantics and
randomness, generated LMDB/LevelDB stores, bad input, and resumable positions."""
from __future__ import annotations

import gc
import json
import shutil
import threading
from pathlib import Path

import cv2
import h5py
import lmdb
import numpy as np
import plyvel
import pytest
import torch
from caffe_fixture import CaffeCase
from layer_testing import layer_param, make_layer
from solver_cases import run_helper, solver_text, weights, write

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError, FcnwildError, NetError
from fcnwild.layers.data_transformer import DataTransformer
from fcnwild.nets.net import Net
from fcnwild.solvers.solver import Solver

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


# --- Caffe's reference cases through the Net --------------------------------------------
def _calls(case: CaffeCase) -> list[dict[str, np.ndarray]]:
    count = case.meta.get("forward_calls", 1)
    return [case.arrays(f"forward_calls/{k}") for k in range(count)] if count > 1 else \
        [case.arrays("forward")]


@pytest.mark.parametrize("name", ["data_lmdb", "image_data", "window_data"])
def test_file_reading_layers_reproduce_every_recorded_batch(name: str) -> None:
    case = CaffeCase(name)
    net = Net(case.prototxt_path, phase=case.meta["phase"].lower())
    assert {b: list(net.blobs[b].shape) for b in net.blobs} == case.meta["blob_shapes"]
    calls = _calls(case)
    for k, recorded in enumerate(calls):
        net.forward()
        assert recorded.keys() == net.blobs.keys()
        for blob, ref in recorded.items():
            case.assert_close(net.blobs[blob].data, ref, "forward", f"call {k}: {blob}")
    assert len(calls) == case.meta.get("forward_calls", 1)


def test_memory_data_serves_the_fed_arrays_batch_by_batch() -> None:
    case = CaffeCase("memory_data")
    net = Net(case.prototxt_path, phase="train")
    assert net.blobs["label"].shape == (2,)          # Caffe: (batch,) until the first forward
    aux = case.arrays("aux/memory_data")
    net.layers[0].set_input_arrays(aux["data"], aux["labels"])
    for k, recorded in enumerate(_calls(case)):
        net.forward()
        for blob, ref in recorded.items():
            case.assert_close(net.blobs[blob].data, ref, "forward", f"call {k}: {blob}")
    assert net.blobs["label"].shape == (2, 1, 1, 1)


def test_hdf5_output_writes_what_caffe_wrote(tmp_path, monkeypatch) -> None:
    case = CaffeCase("hdf5_output")
    folder = tmp_path / "case"
    shutil.copytree(case.folder, folder)
    (folder / "hdf5_output.h5").unlink()
    monkeypatch.chdir(folder)             # Caffe's file_name is relative to the working dir
    net = Net(folder / "net.prototxt", phase="train")
    with h5py.File("hdf5_output.h5", "r") as h5:          # created empty at setup
        assert list(h5) == []
    inputs = case.arrays("inputs")
    net.forward(**inputs)
    expected = case.arrays("aux/hdf5_output")
    with h5py.File("hdf5_output.h5", "r") as ours, \
            h5py.File(case.folder / "hdf5_output.h5", "r") as caffes:
        assert sorted(ours) == sorted(caffes) == ["data", "label"]
        for name in ours:
            assert ours[name].dtype == caffes[name].dtype == np.float32
            np.testing.assert_array_equal(ours[name][()], expected[name])
            np.testing.assert_array_equal(ours[name][()], caffes[name][()])
    written = Path("hdf5_output.h5").read_bytes()
    with pytest.raises(NetError, match="already holds"):
        net.forward(**inputs)
    assert Path("hdf5_output.h5").read_bytes() == written
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in case.folder.iterdir())


def test_hdf5_output_checks_its_bottoms(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    layer = make_layer('name: "out" type: "HDF5Output" bottom: "a" bottom: "b" '
                       'hdf5_output_param { file_name: "out.h5" }', [(2, 3), (2,)])
    with pytest.raises(NetError, match="same batch size"):
        layer(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(NetError, match="at most 4"):
        layer.reshape([(1, 1, 1, 1, 2), (1,)])
    with h5py.File("out.h5", "r") as h5:
        assert list(h5) == []                 # nothing half-written after the error
    layer(torch.ones(2, 3), torch.arange(2.0))
    with h5py.File("out.h5", "r") as h5:
        assert h5["data"].shape == (2, 3, 1, 1) and h5["label"].shape == (2, 1, 1, 1)


def test_lmdb_is_read_without_creating_a_lock_file(tmp_path) -> None:
    store = tmp_path / "lmdb"
    shutil.copytree(CaffeCase("data_lmdb").folder / "lmdb", store)
    layer = make_layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{store}" '
                       'backend: LMDB batch_size: 4 }', [], phase=TEST)
    assert layer.reshape([]) == [(4, 3, 8, 10)]
    (data,) = layer()
    datums = CaffeCase("data_lmdb").arrays("aux/datums")
    np.testing.assert_array_equal(data.numpy(), np.stack([datums[str(i)] for i in range(4)]))
    assert [p.name for p in store.iterdir()] == ["data.mdb"]


# --- the DataTransformer ----------------------------------------------------------------
def _transformer(text: str, phase: int = TEST, base_dir: Path | None = None) -> DataTransformer:
    param = layer_param(f'name: "t" type: "Data" transform_param {{ {text} }}').transform_param
    return DataTransformer(param, phase, layer="t", base_dir=base_dir)


def _image(c: int = 3, h: int = 6, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (c, h, w)).astype(np.uint8)


def test_transform_test_phase_centre_crop_mean_values_and_scale() -> None:
    image = _image(h=7, w=10)
    out = _transformer("crop_size: 4 scale: 0.25 mean_value: 10 mean_value: 20 "
                       "mean_value: 30")(image, "img")
    means = np.array([10, 20, 30], np.float32)[:, None, None]
    expected = (image[:, 1:5, 3:7].astype(np.float32) - means) * np.float32(0.25)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)
    one = _transformer("mean_value: 5")(image, "img")       # one value for every channel
    np.testing.assert_array_equal(one, image.astype(np.float32) - 5)


def test_transform_mean_file_is_taken_at_the_uncropped_position(tmp_path) -> None:
    image = _image(h=6, w=8).astype(np.float32) * np.float32(0.5)    # float_data images too
    mean = np.random.RandomState(1).rand(1, 3, 6, 8).astype(np.float32) * 100
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=6, width=8)
    blob.data.extend(mean.ravel())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    out = _transformer('crop_size: 4 mean_file: "mean.binaryproto" scale: 2',
                       base_dir=tmp_path)(image, "img")
    np.testing.assert_array_equal(out, (image[:, 1:5, 2:6] - mean[0, :, 1:5, 2:6]) * 2)
    with pytest.raises(DatasetError, match="as large as the uncropped image"):
        _transformer('mean_file: "mean.binaryproto"', base_dir=tmp_path)(_image(h=5), "img")
    with pytest.raises(NetError, match="mean_file and mean_value"):
        _transformer('mean_file: "mean.binaryproto" mean_value: 1', base_dir=tmp_path)


def test_transform_rejects_bad_mean_values_and_small_images() -> None:
    with pytest.raises(NetError, match="2 mean_value"):
        _transformer("mean_value: 1 mean_value: 2")(_image(), "img")
    with pytest.raises(DatasetError, match="smaller than crop_size 8"):
        _transformer("crop_size: 8")(_image(h=6, w=9), "img.png")


def test_transform_train_crops_uniformly_and_mirrors_half_the_time() -> None:
    image = np.arange(5 * 6, dtype=np.uint8).reshape(1, 5, 6)    # value = 6 * row + column
    transform = _transformer("crop_size: 3 mirror: true", phase=TRAIN)
    torch.manual_seed(3)
    offsets, flips, first = [], 0, []
    for _ in range(1200):
        out = transform(image, "img")
        flipped = out[0, 0, 0] > out[0, 0, 2]
        flips += flipped
        corner = out[0, 0, 2] if flipped else out[0, 0, 0]
        offsets.append((int(corner) // 6, int(corner) % 6))
        expected = image[0, offsets[-1][0]:offsets[-1][0] + 3, offsets[-1][1]:offsets[-1][1] + 3]
        np.testing.assert_array_equal(out[0], expected[:, ::-1] if flipped else expected)
        first.append(out)
    counts = np.zeros((3, 4))
    for row, column in offsets:
        counts[row, column] += 1
    assert counts.min() > 0.6 * 100 and counts.max() < 1.4 * 100      # 12 offsets, 100 each
    assert 500 < flips < 700
    torch.manual_seed(3)                          # the same seed draws the same crops
    for out in first[:50]:
        np.testing.assert_array_equal(transform(image, "img"), out)


def test_transform_test_phase_mirrors_only_when_asked() -> None:
    image = _image(h=4, w=5)
    plain = _transformer("crop_size: 3")
    state = torch.get_rng_state()
    np.testing.assert_array_equal(plain(image, "img"), image[:, :3, 1:4])
    assert torch.equal(torch.get_rng_state(), state)         # TEST without mirror: no draws
    mirrored = _transformer("mirror: true")
    outs = {mirrored(image, "img").tobytes() for _ in range(40)}
    assert outs == {image.astype(np.float32).tobytes(),
                    np.ascontiguousarray(image[:, :, ::-1].astype(np.float32)).tobytes()}


# --- generated stores for the Data layer ------------------------------------------------
def _datum(image: np.ndarray, label: int, *, encode: str | None = None,
           floats: bool = False) -> caffe_pb2.Datum:
    """A Datum of a (C, H, W) image: raw bytes, float_data, or an encoded .png/.jpg."""
    datum = caffe_pb2.Datum(channels=image.shape[0], height=image.shape[1],
                            width=image.shape[2], label=label)
    if encode:
        ok, data = cv2.imencode(encode, image.transpose(1, 2, 0))
        assert ok
        datum.data, datum.encoded = data.tobytes(), True
    elif floats:
        datum.float_data.extend(image.ravel().astype(np.float32))
    else:
        datum.data = image.tobytes()
    return datum


def _store(path: Path, backend: str, records: dict[bytes, bytes]) -> Path:
    if backend == "LMDB":
        with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
            for key, value in records.items():
                txn.put(key, value)
    else:
        db = plyvel.DB(str(path), create_if_missing=True)
        for key, value in records.items():
            db.put(key, value)
        db.close()
    return path


def _data_layer(source: Path, backend: str, batch: int, *, tops: int = 2, phase: int = TEST,
                transform: str = "", prefetch: int = 4) -> torch.nn.Module:
    label = ' top: "label"' if tops == 2 else ""
    return make_layer(f'name: "d" type: "Data" top: "data"{label} '
                      f'transform_param {{ {transform} }} data_param {{ source: "{source}" '
                      f'backend: {backend} batch_size: {batch} prefetch: {prefetch} }}', [],
                      phase=phase)


@pytest.mark.parametrize("backend", ["LMDB", "LEVELDB"])
def test_data_layer_reads_raw_float_and_encoded_datums_in_key_order(tmp_path, backend) -> None:
    images = [_image(h=5, w=6, seed=s) for s in range(4)]
    kinds = [dict(), dict(floats=True), dict(encode=".png"), dict()]
    records = {f"{i:08d}".encode(): _datum(image, 10 + i, **kind).SerializeToString()
               for i, (image, kind) in enumerate(zip(images, kinds))}
    # Written out of order: the layer reads in key order.
    source = _store(tmp_path / "db", backend, dict(reversed(list(records.items()))))
    layer = _data_layer(source, backend, batch=3, transform="mean_value: 100")
    assert layer.reshape([]) == [(3, 3, 5, 6), (3,)]
    stream = [image.astype(np.float32) - 100 for image in images]
    for rows in [[0, 1, 2], [3, 0, 1], [2, 3, 0]]:
        data, label = layer()
        np.testing.assert_array_equal(data.numpy(), np.stack([stream[r] for r in rows]))
        np.testing.assert_array_equal(label.numpy(), [10 + r for r in rows])
    (data,) = _data_layer(source, backend, batch=2, tops=1)()
    np.testing.assert_array_equal(data.numpy(), np.stack(images[:2]).astype(np.float32))


def test_encoded_datums_decode_as_caffe_decodes_them(tmp_path) -> None:
    grey = _image(c=1, h=6, w=5)
    colour = _image(c=3, h=6, w=5, seed=2)
    source = _store(tmp_path / "db", "LMDB", {
        b"a": _datum(grey, 0, encode=".png").SerializeToString(),
        b"b": _datum(colour, 1, encode=".png").SerializeToString()})

    def first_batch(transform: str, batch: int = 1) -> np.ndarray:
        return _data_layer(source, "LMDB", batch, tops=1, transform=transform)()[0].numpy()

    np.testing.assert_array_equal(first_batch("")[0], grey)             # native channels
    np.testing.assert_array_equal(first_batch("force_color: true")[0], np.repeat(grey, 3, 0))
    # OpenCV's grey decode (what Caffe's DecodeDatumToCVMat(datum, false) does) is within
    # one grey level of cvtColor's weights.
    forced_grey = first_batch("force_gray: true", 2)[1, 0]
    np.testing.assert_array_equal(forced_grey, cv2.imdecode(
        cv2.imencode(".png", colour.transpose(1, 2, 0))[1], cv2.IMREAD_GRAYSCALE))
    grey_of_colour = cv2.cvtColor(colour.transpose(1, 2, 0), cv2.COLOR_BGR2GRAY)
    assert np.abs(forced_grey - grey_of_colour).max() <= 1
    with pytest.raises(DatasetError, match=r"record b'b'.*a batch needs records of one size"):
        first_batch("", 2)
    with pytest.raises(NetError, match="both force_color and force_gray"):
        first_batch("force_color: true force_gray: true")


def test_data_layer_crops_and_mirrors_at_random_in_train(tmp_path) -> None:
    images = [_image(h=8, w=8, seed=s) for s in range(3)]
    source = _store(tmp_path / "db", "LMDB", {
        str(i).encode(): _datum(image, i).SerializeToString() for i, image in enumerate(images)})
    torch.manual_seed(0)
    layer = _data_layer(source, "LMDB", batch=2, phase=TRAIN,
                        transform="crop_size: 5 mirror: true")
    batches = [layer() for _ in range(30)]
    assert len({b[0].numpy().tobytes() for b in batches}) > 20
    for batch, labels in batches:
        for out, label in zip(batch.numpy(), labels.int().tolist()):
            windows = [images[label][:, r:r + 5, c:c + 5] for r in range(4) for c in range(4)]
            assert any(np.array_equal(out, w) or np.array_equal(out, w[:, :, ::-1])
                       for w in windows)
    # The same seed draws the same crops, whether the records are read ahead or not.
    for prefetch in (0, 1):
        torch.manual_seed(0)
        again = _data_layer(source, "LMDB", batch=2, phase=TRAIN,
                            transform="crop_size: 5 mirror: true", prefetch=prefetch)
        for batch, labels in batches:
            data, label = again()
            assert torch.equal(data, batch) and torch.equal(label, labels)


def test_data_layer_shards_records_between_ranks(tmp_path) -> None:
    images = [np.full((1, 2, 2), i, np.uint8) for i in range(7)]
    source = _store(tmp_path / "db", "LMDB", {
        str(i).encode(): _datum(image, i).SerializeToString() for i, image in enumerate(images)})
    seen = []
    for rank in range(2):
        layer = _data_layer(source, "LMDB", batch=2, phase=TRAIN)
        layer.set_shard(rank, 2)
        seen.append([layer()[1].tolist() for _ in range(3)])
        assert layer.state_dict_position() == {"key": b"5".hex(), "offset": 12}
    assert seen == [[[0, 2], [4, 6], [1, 3]], [[1, 3], [5, 0], [2, 4]]]


def test_prefetch_thread_ends_with_its_layer(tmp_path) -> None:
    source = _store(tmp_path / "db", "LMDB", {b"0": _datum(_image(), 0).SerializeToString()})

    def prefetching() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "fcnwild-data-prefetch"]

    layer = _data_layer(source, "LMDB", batch=2)
    assert not prefetching()              # nothing starts before the first forward
    layer()
    assert len(prefetching()) == 1
    del layer
    gc.collect()
    assert not prefetching()


def test_data_layer_position_continues_the_stream(tmp_path) -> None:
    source = _store(tmp_path / "db", "LEVELDB", {
        str(i).encode(): _datum(np.full((1, 1, 1), i, np.uint8), i).SerializeToString()
        for i in range(5)})
    layer = _data_layer(source, "LEVELDB", batch=2)
    layer(), layer()
    position = json.loads(json.dumps(layer.state_dict_position()))
    expected = [layer()[1].tolist() for _ in range(3)]
    fresh = _data_layer(source, "LEVELDB", batch=2)       # the store is shared, not reopened
    fresh.load_state_dict_position(position)
    assert [fresh()[1].tolist() for _ in range(3)] == expected == [[4, 0], [1, 2], [3, 4]]
    with pytest.raises(DatasetError, match="does not hold"):
        fresh.load_state_dict_position({"key": b"x".hex(), "offset": 0})


# --- ImageData, MemoryData and WindowData beyond the reference cases --------------------
def _image_list(folder: Path, count: int, lines: list[str] | None = None) -> Path:
    for i in range(count):
        cv2.imwrite(str(folder / f"im{i}.png"), np.full((4, 5, 3), 10 * i, np.uint8))
    return write(folder / "list.txt",
                 "\n".join(lines or [f"im{i}.png {i}" for i in range(count)]) + "\n")


def _image_data(folder: Path, batch: int, extra: str = "", phase: int = TEST):
    return make_layer(f'name: "img" type: "ImageData" top: "data" top: "label" '
                      f'image_data_param {{ source: "list.txt" batch_size: {batch} {extra} }}',
                      [], phase=phase, base_dir=folder)


def test_image_data_shuffles_each_pass_and_resumes_from_its_position(tmp_path) -> None:
    _image_list(tmp_path, 5)
    torch.manual_seed(5)
    layer = _image_data(tmp_path, 3, "shuffle: true")
    labels = [layer()[1].tolist() for _ in range(5)]
    passes = np.concatenate(labels).reshape(3, 5)
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
    assert len({tuple(p) for p in passes}) > 1           # reshuffled at every wrap
    position = json.loads(json.dumps(layer.state_dict_position()))
    rng = torch.get_rng_state()
    expected = [layer()[1].tolist() for _ in range(4)]
    torch.manual_seed(99)
    fresh = _image_data(tmp_path, 3, "shuffle: true")
    fresh.load_state_dict_position(position)
    torch.set_rng_state(rng)
    assert [fresh()[1].tolist() for _ in range(4)] == expected
    with pytest.raises(DatasetError, match="does not fit"):
        _image_data(tmp_path, 3).load_state_dict_position(position)


def test_image_data_rand_skip_and_root_folder(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    _image_list(tmp_path / "images", 4)
    shutil.move(tmp_path / "images" / "list.txt", tmp_path / "list.txt")
    torch.manual_seed(0)
    starts = {int(_image_data(tmp_path, 1, 'rand_skip: 3 root_folder: "images/"')()[1])
              for _ in range(30)}
    assert starts == {0, 1, 2}


def test_memory_data_checks_the_arrays_as_pycaffe_does() -> None:
    layer = make_layer('name: "m" type: "MemoryData" top: "data" top: "label" '
                       'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }', [])
    with pytest.raises(NetError, match="set_input_arrays"):
        layer()
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.arange(4, dtype=np.float32)
    bad = [(data[:3], labels[:3], "multiple of batch_size"),
           (data, labels[:2], "same first dimension"),
           (data.astype(np.float64), labels, "float32"),
           (np.asfortranarray(data), labels, "C contiguous"),
           (data.reshape(4, 2, 1, 3), labels, r"items of shape \(2, 1, 3\)"),
           (data.reshape(4, 6), labels, "4-d")]
    for d, lab, message in bad:
        with pytest.raises(NetError, match=message):
            layer.set_input_arrays(d, lab)
    layer.set_input_arrays(data, labels)
    data[3] = -1            # the layer reads the caller's memory, as Caffe does
    tops = [layer() for _ in range(3)]
    np.testing.assert_array_equal(tops[1][0].numpy(), data[2:])
    np.testing.assert_array_equal(tops[2][1].numpy().ravel(), [0, 1])
    assert layer.state_dict_position() == {"pos": 2}


def _window_case(folder: Path, windows: str) -> Path:
    cv2.imwrite(str(folder / "a.png"), np.random.RandomState(0).randint(0, 255, (12, 14, 3))
                .astype(np.uint8))
    return write(folder / "windows.txt", f"# 0\na.png\n3\n12\n14\n{windows}")


def _window_layer(folder: Path, extra: str = "", transform: str = "crop_size: 6"):
    return make_layer(f'name: "w" type: "WindowData" top: "data" top: "label" '
                      f'transform_param {{ {transform} }} window_data_param {{ '
                      f'source: "windows.txt" batch_size: 4 {extra} }}', [], base_dir=folder)


def test_window_data_draws_background_then_foreground_windows(tmp_path) -> None:
    _window_case(tmp_path, "4\n1 0.9 0 0 5 5\n2 0.8 6 4 13 11\n3 0.4 1 1 4 4\n5 0.1 2 2 9 9\n")
    layer = _window_layer(tmp_path, "fg_fraction: 0.5 bg_threshold: 0.3", "crop_size: 6")
    torch.manual_seed(0)
    labels = np.stack([layer()[1].numpy() for _ in range(50)])
    assert set(labels[:, :2].ravel()) == {0}               # background first, label 0
    assert set(labels[:, 2:].ravel()) == {1, 2}            # the 0.4 window is dropped


def test_window_data_caches_images_and_mirrors_windows(tmp_path) -> None:
    _window_case(tmp_path, "2\n1 0.9 2 1 9 10\n0 0.1 0 0 13 11\n")
    unmirrored = _window_layer(tmp_path, "fg_fraction: 0.5",
                               "crop_size: 6 mean_value: 50")()[0].numpy()
    layer = _window_layer(tmp_path, "cache_images: true fg_fraction: 0.5",
                          "crop_size: 6 mirror: true mean_value: 50")
    (tmp_path / "a.png").unlink()              # cached at setup: never read again
    torch.manual_seed(1)
    flipped = 0
    for _ in range(20):
        out = layer()[0].numpy()
        for item in range(4):
            if not np.array_equal(out[item], unmirrored[item]):
                np.testing.assert_array_equal(out[item], unmirrored[item][:, :, ::-1])
                flipped += 1
    assert 20 < flipped < 60                    # 80 windows, each flipped with probability 1/2


@pytest.mark.parametrize("windows, message", [
    ("1\n1 0.9 0 0 5\n", r"windows.txt:7.*the file ends where a window's y2 was expected"),
    ("1\n1 0.9 0 0 5 x\n", r"windows.txt:7.*expected a window's y2 \(int\), found 'x'"),
    ("1\n0 0.9 0 0 5 5\n", r"windows.txt:7.*foreground classes must be > 0"),
    ("1\n1 0.9 0 0 5 5\n# 3\na.png\n3\n1\n1\n0\n", r"windows.txt:8.*numbered 0, 1, 2"),
    ("1\n1 0.1 0 0 5 5\n", "a batch takes 1 foreground window"),
])
def test_window_file_errors_name_the_line(tmp_path, windows, message) -> None:
    _window_case(tmp_path, windows)
    with pytest.raises(DatasetError, match=message):
        _window_layer(tmp_path)


def test_window_outside_its_image_is_an_error_naming_the_line(tmp_path) -> None:
    _window_case(tmp_path, "2\n1 0.9 0 0 5 5\n0 0.1 3 3 20 5\n")
    with pytest.raises(DatasetError, match=r"windows.txt:8.*does not fit its 14x12 image"):
        _window_layer(tmp_path)()


# --- bad input: clear errors naming the file, record, line or layer ---------------------
@pytest.mark.parametrize("backend", ["LMDB", "LEVELDB"])
def test_missing_store_is_an_error_naming_it(tmp_path, backend) -> None:
    with pytest.raises(DatasetError, match=rf"layer 'd'.*{backend} store not found"):
        _data_layer(tmp_path / "nowhere", backend, batch=1)


def test_empty_store_and_corrupt_records_are_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with lmdb.open(str(tmp_path / "empty")):
        pass
    with pytest.raises(DatasetError, match="holds no records"):
        _data_layer(tmp_path / "empty", "LMDB", batch=1)
    good = _datum(_image(h=3, w=3), 0).SerializeToString()
    short = caffe_pb2.Datum(channels=3, height=3, width=3, data=b"\x00" * 5).SerializeToString()
    broken_png = _datum(_image(h=3, w=3), 0, encode=".png")
    broken_png.data = broken_png.data[:20]
    cases = {b"k1": (b"\xff\xff\xff", "not a Caffe Datum"),
             b"k2": (short, "5 bytes of data for a 3x3x3 image"),
             b"k3": (broken_png.SerializeToString(), "not a decodable image")}
    for key, (value, message) in cases.items():
        source = _store(tmp_path / key.decode(), "LMDB", {b"k0": good, key: value})
        layer = _data_layer(source, "LMDB", batch=1)
        layer()
        for _ in range(2):          # read ahead, the error waits for the batch it is in
            with pytest.raises(DatasetError, match=rf"record {key!r}\), layer 'd': .*{message}"):
                layer()


def test_image_list_errors_name_the_list_line(tmp_path) -> None:
    _image_list(tmp_path, 2, ["im0.png 0", "", "missing.png 1"])
    layer = _image_data(tmp_path, 2)
    with pytest.raises(DatasetError, match=r"layer 'img'.*image named on line 3 of .*list.txt "
                                           r"not found"):
        layer()
    _image_list(tmp_path, 2, ["im0.png 0", "im1.png"])
    with pytest.raises(DatasetError, match=r"list.txt:2.*<path> <integer label>"):
        _image_data(tmp_path, 1)
    _image_list(tmp_path, 2, [""])
    with pytest.raises(DatasetError, match="the image list is empty"):
        _image_data(tmp_path, 1)
    (tmp_path / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _image_list(tmp_path, 1, ["im0.png 0", "im1.png 1"])
    layer = _image_data(tmp_path, 2)
    with pytest.raises(DatasetError, match="im1.png.*not a decodable image"):
        layer()


def test_image_data_rejects_mixed_sizes_without_resizing(tmp_path) -> None:
    _image_list(tmp_path, 2)
    cv2.imwrite(str(tmp_path / "im1.png"), np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(DatasetError, match="list.txt:2.*set new_height/new_width"):
        _image_data(tmp_path, 2)()
    data, _ = _image_data(tmp_path, 2, "new_height: 3 new_width: 4")()
    assert data.shape == (2, 3, 3, 4)


def test_fields_caffe_ignores_are_reported(tmp_path, caplog) -> None:
    source = _store(tmp_path / "db", "LMDB", {b"0": _datum(_image(), 0).SerializeToString()})
    with caplog.at_level("WARNING", logger="fcnwild.layers"):
        layer = make_layer(f'name: "d" type: "Data" top: "data" data_param {{ '
                           f'source: "{source}" backend: LMDB batch_size: 1 crop_size: 2 '
                           'force_encoded_color: true }', [])
    assert layer.reshape([]) == [(1, 3, 6, 7)]        # no crop: Caffe ignores data_param's
    assert "data_param.crop_size is ignored" in caplog.text
    assert "set transform_param.force_color instead" in caplog.text


def test_layer_parameters_are_checked_at_setup(tmp_path) -> None:
    _image_list(tmp_path, 1)
    with pytest.raises(NetError, match="new_height and new_width must be set together"):
        _image_data(tmp_path, 1, "new_height: 3")
    with pytest.raises(NetError, match="batch_size, channels, height and width"):
        make_layer('name: "m" type: "MemoryData" top: "data" top: "label" '
                   'memory_data_param { batch_size: 2 channels: 1 }', [])
    with pytest.raises(NetError, match="file_name is not set"):
        make_layer('name: "o" type: "HDF5Output" bottom: "a" bottom: "b"', [(1,), (1,)])
    _window_case(tmp_path, "1\n1 0.9 0 0 5 5\n")
    with pytest.raises(NetError, match="crop_size > 0"):
        _window_layer(tmp_path, transform="")
    assert issubclass(DatasetError, FcnwildError)


# --- training with a Data layer resumes bit-identically ---------------------------------
def _lmdb_train_net(folder: Path) -> Path:
    rng = np.random.RandomState(4)
    records = {}
    for i in range(7):
        image = rng.randint(0, 256, (3, 7, 7)).astype(np.uint8)
        datum = _datum(image, int(rng.randint(3)), encode=".png" if i % 2 else None)
        records[f"{i:03d}".encode()] = datum.SerializeToString()
    _store(folder / "train_lmdb", "LMDB", records)
    return write(folder / "net.prototxt", """name: "tiny_cls"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 5 mirror: true mean_value: 120 scale: 0.02 }
  data_param { source: "train_lmdb" backend: LMDB batch_size: 3 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "InnerProduct" bottom: "conv1" top: "score"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
""")


def test_training_on_a_data_layer_resumes_bit_identically(tmp_path) -> None:
    _lmdb_train_net(tmp_path)
    for run in ("straight", "resumed"):
        write(tmp_path / f"{run}.prototxt",
              solver_text("net.prototxt", max_iter=7, snapshot=4, snapshot_prefix=str(tmp_path / run / "run")))
    Solver(tmp_path / "straight.prototxt").solve()
    run_helper(["train", "--solver", str(tmp_path / "resumed.prototxt"), "--snapshot",
                str(tmp_path / "straight/run_iter_4.solverstate"), "--quiet"], cwd=tmp_path)
    straight, resumed = (weights(tmp_path / f"{run}/run_iter_7.caffemodel")
                         for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() == {"conv1", "score"}
    for layer, blobs in straight.items():
        for a, b in zip(blobs, resumed[layer]):
            np.testing.assert_array_equal(a, b)
    # Control: restoring weights and history alone (Caffe's snapshot) reads other batches.
    solver = Solver(tmp_path / "resumed.prototxt")
    solver.param.snapshot = 0
    solver.restore(tmp_path / "straight/run_iter_4.solverstate")
    solver.net.layer_dict["data"].load_state_dict_position({"key": b"000".hex(), "offset": 0})
    solver.step(3)
    assert any(not np.array_equal(solver.net.params[name][i].data, blob)
               for name, blobs in straight.items() for i, blob in enumerate(blobs))
