"""Dataset readers on small trees in the real layouts: counts, label mapping, broken trees."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from data_layouts import (
    make_cityscapes,
    make_gta5,
    make_synthia_rand,
    make_synthia_seqs,
    random_rgb,
    write_grey,
    write_rgb,
)
from PIL import Image

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import SegmentationDataset
from fcnwild.data.datasets import open_dataset, register_dataset
from fcnwild.data.images import read_label_channel

# Written out independently of fcnwild.data.labels: Cityscapes id -> name (cityscapesScripts
# labels.py), and the ids of the other sets, so the readers' maps are checked by class name.
CITYSCAPES_ID_NAME = {7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole",
                      19: "traffic light", 20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky",
                      24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train",
                      32: "motorcycle", 33: "bicycle"}
SYNTHIA_RAND_ID_NAME = {1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation",
                        7: "pole", 8: "car", 9: "traffic sign", 10: "person", 11: "bicycle",
                        12: "motorcycle", 15: "traffic light", 16: "terrain", 17: "rider", 18: "truck",
                        19: "bus", 20: "train", 21: "wall"}
SYNTHIA_SEQS_ID_NAME = {1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation",
                        7: "pole", 8: "car", 9: "traffic sign", 10: "pedestrian", 11: "bicycle",
                        12: "lanemarking", 15: "traffic light"}


def expected_train_ids(ids: np.ndarray, id_names: dict[int, str], class_names: tuple[str, ...]) -> np.ndarray:
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for source_id, name in id_names.items():
        if name in class_names:
            out[ids == source_id] = class_names.index(name)
    return out


def check_labels(dataset: SegmentationDataset, written: dict[str, np.ndarray], id_names: dict[int, str]) -> None:
    assert sorted(dataset.names()) == sorted(written)
    for i, name in enumerate(dataset.names()):
        sample = dataset[i]
        assert sample.name == name
        assert sample.image.dtype == np.uint8 and sample.image.shape == written[name].shape + (3,)
        assert sample.label.dtype == np.uint8
        np.testing.assert_array_equal(
            sample.label, expected_train_ids(written[name], id_names, dataset.label_space.class_names))


def test_cityscapes_reads_pairs_and_maps_label_ids(tmp_path):
    written = make_cityscapes(tmp_path, cities={"aachen": 2, "bremen": 1})
    dataset = open_dataset(f"cityscapes:{tmp_path}", split="val")
    assert len(dataset) == 3 and dataset.labelled
    check_labels(dataset, written, CITYSCAPES_ID_NAME)
    assert dataset.prediction_key("x/aachen_000000_000019_leftImg8bit") == "aachen_000000_000019"


def test_cityscapes_image_is_rgb(tmp_path):
    make_cityscapes(tmp_path, cities={"aachen": 1})
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    write_rgb(tmp_path / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png", rgb)
    image = open_dataset(f"cityscapes:{tmp_path}", split="val")[0].image
    assert (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()


def test_cityscapes_city_filter_and_16_class_space(tmp_path):
    written = make_cityscapes(tmp_path, cities={"aachen": 2, "bremen": 1, "zurich": 2})
    dataset = open_dataset(f"cityscapes:{tmp_path}?cities=bremen,zurich&label_space=cityscapes16", "val")
    assert len(dataset) == 3 and all(n.split("/")[0] in ("bremen", "zurich") for n in dataset.names())
    assert dataset.label_space.num_classes == 16
    check_labels(dataset, {k: v for k, v in written.items() if not k.startswith("aachen")}, CITYSCAPES_ID_NAME)
    with pytest.raises(DatasetError, match="cities koeln not in split 'val'; available: aachen, bremen, zurich"):
        open_dataset(f"cityscapes:{tmp_path}", "val", cities=["koeln"])


def test_cityscapes_broken_trees(tmp_path):
    make_cityscapes(tmp_path, cities={"aachen": 3})
    with pytest.raises(DatasetError, match=r"missing folder leftImg8bit/train"):
        open_dataset(f"cityscapes:{tmp_path}", "train")
    (tmp_path / "gtFine/val/aachen/aachen_000001_000020_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 images have no label file.*aachen_000001_000020_gtFine_"
                                           r"labelIds.png; matched 2 image/label pairs"):
        open_dataset(f"cityscapes:{tmp_path}", "val")
    shutil.rmtree(tmp_path / "gtFine")
    with pytest.raises(DatasetError, match=r"missing folder gtFine/val"):
        open_dataset(f"cityscapes:{tmp_path}", "val")
    unlabelled = open_dataset(f"cityscapes:{tmp_path}?labels=false", "val")
    assert len(unlabelled) == 3 and not unlabelled.labelled and unlabelled[0].label is None


def test_gta5_lists_every_missing_and_mis_sized_label_at_open(tmp_path, recwarn):
    written = make_gta5(tmp_path, frames=5, missing_label=(2,), wrong_size=(4, 5))
    with pytest.raises(DatasetError) as raised:
        open_dataset(f"gta5:{tmp_path}")
    message = str(raised.value)
    assert "1 of 5 images have no label file and 2 labels differ in size" in message
    assert "skip_defective=true" in message
    assert f"{tmp_path / 'labels/00002.png'} is missing" in message
    for frame in ("00004", "00005"):
        assert (f"{tmp_path / 'labels' / frame}.png is 20x14 but its image "
                f"{tmp_path / 'images' / frame}.png is 20x12") in message
    dataset = open_dataset(f"gta5:{tmp_path}?skip_defective=true")
    assert dataset.names() == ["00001", "00003"]
    assert "left out 3 defective frame(s)" in repr(dataset) and "00004.png is 20x14" in repr(dataset)
    assert Image.open(tmp_path / "labels/00001.png").mode == "P"
    check_labels(dataset, {k: v for k, v in written.items() if k in ("00001", "00003")}, CITYSCAPES_ID_NAME)
    assert [str(w.message) for w in recwarn.list if issubclass(w.category, UserWarning)] == []


def shrink_label(path, rows: int = 1) -> None:
    """Rewrite a label file with ``rows`` fewer rows, keeping its PNG mode."""
    with Image.open(path) as im:
        im.load()
        smaller = im.crop((0, 0, im.width, im.height - rows))
    smaller.save(path)


def test_every_reader_lists_all_label_size_mismatches_before_reading(tmp_path):
    make_cityscapes(tmp_path / "cs", cities={"aachen": 2, "bremen": 1})
    bad = [tmp_path / "cs/gtFine/val/aachen/aachen_000001_000020_gtFine_labelIds.png",
           tmp_path / "cs/gtFine/val/bremen/bremen_000000_000019_gtFine_labelIds.png"]
    for path in bad:
        shrink_label(path)
    with pytest.raises(DatasetError, match="2 cityscapes label") as raised:
        open_dataset(f"cityscapes:{tmp_path / 'cs'}", "val")
    for path in bad:
        image = str(path).replace("gtFine_labelIds", "leftImg8bit").replace("/gtFine/", "/leftImg8bit/")
        assert f"{path} is 24x15 but its image {image} is 24x16" in str(raised.value)
    # Unlabelled, the labels are not read, so their sizes do not matter.
    assert len(open_dataset(f"cityscapes:{tmp_path / 'cs'}?labels=false", "val")) == 3

    make_synthia_rand(tmp_path / "rand", frames=2)
    label = tmp_path / "rand/GT/LABELS/0000001.png"
    # 16-bit RGB: rewritten through OpenCV, which keeps the depth Pillow would lose.
    cv2.imwrite(str(label), cv2.imread(str(label), cv2.IMREAD_UNCHANGED)[:-2])
    with pytest.raises(DatasetError, match=r"(?s)1 synthia label.*0000001.png is 14x8 but its image"):
        open_dataset(f"synthia:{tmp_path / 'rand'}")

    make_synthia_seqs(tmp_path / "seqs", {"SYNTHIA-SEQS-01-SUMMER": 2})
    label = tmp_path / "seqs/SYNTHIA-SEQS-01-SUMMER/GT/LABELS/Stereo_Left/Omni_F/000000.png"
    cv2.imwrite(str(label), cv2.imread(str(label), cv2.IMREAD_UNCHANGED)[:, :-1])
    with pytest.raises(DatasetError, match=r"(?s)1 synthia-seqs label.*000000.png is 13x10 but"):
        open_dataset(f"synthia-seqs:{tmp_path / 'seqs'}?season=summer")

    write_rgb(tmp_path / "bdd/images/val/a.jpg", random_rgb(np.random.default_rng(0), 8, 10))
    write_grey(tmp_path / "bdd/labels/val/a_train_id.png", np.zeros((10, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"(?s)1 bdd label.*a_train_id.png is 8x10 but its image .*a.jpg is 10x8"):
        open_dataset(f"bdd:{tmp_path / 'bdd'}", "val")


def test_gta5_split_mat(tmp_path):
    make_gta5(tmp_path, frames=5, split={"train": [1, 3, 5], "val": [2, 4], "test": [4]})
    assert open_dataset(f"gta5:{tmp_path}", "train").names() == ["00001", "00003", "00005"]
    assert open_dataset(f"gta5:{tmp_path}", "val").names() == ["00002", "00004"]
    (tmp_path / "split.mat").unlink()
    with pytest.raises(DatasetError, match="split 'train' asked for but split.mat is missing"):
        open_dataset(f"gta5:{tmp_path}", "train")
    shutil.rmtree(tmp_path / "labels")
    with pytest.raises(DatasetError, match="missing folder labels"):
        open_dataset(f"gta5:{tmp_path}")


def test_synthia_rand_reads_16_bit_labels(tmp_path):
    written = make_synthia_rand(tmp_path, frames=3)
    label_file = tmp_path / "GT/LABELS/0000000.png"
    # The file really is 16-bit RGB with instance ids above 255 in the second channel.
    assert read_label_channel(label_file, 1).dtype == np.uint16
    assert read_label_channel(label_file, 1).max() > 255
    dataset = open_dataset(f"synthia:{tmp_path}")
    assert len(dataset) == 3
    check_labels(dataset, written, SYNTHIA_RAND_ID_NAME)
    sixteen = open_dataset(f"synthia:{tmp_path}?label_space=cityscapes16")
    check_labels(sixteen, written, SYNTHIA_RAND_ID_NAME)
    assert "terrain" not in sixteen.label_space.class_names


def test_synthia_rand_broken_tree(tmp_path):
    make_synthia_rand(tmp_path, frames=2)
    (tmp_path / "GT/LABELS/0000001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images have no label file.*GT/LABELS/0000001.png"):
        open_dataset(f"synthia:{tmp_path}")
    with pytest.raises(DatasetError, match="no official 'val' split"):
        open_dataset(f"synthia:{tmp_path}", "val")


def test_synthia_seqs_one_season_front_camera(tmp_path):
    written = make_synthia_seqs(tmp_path, {"SYNTHIA-SEQS-01-SUMMER": 2, "SYNTHIA-SEQS-02-SUMMER": 1,
                                           "SYNTHIA-SEQS-01-FALL": 2, "SYNTHIA-SEQS-01-WINTERNIGHT": 1})
    summer = open_dataset(f"synthia-seqs:{tmp_path}?season=summer")
    assert len(summer) == 3 and summer.label_space.num_classes == 13
    check_labels(summer, {k: v for k, v in written.items() if "SUMMER" in k}, SYNTHIA_SEQS_ID_NAME)
    assert open_dataset(f"synthia-seqs:{tmp_path}", season="SUMMER", sequences="2").names() == \
        ["SYNTHIA-SEQS-02-SUMMER/000000"]
    # WINTERNIGHT is a season of its own, not part of WINTER.
    with pytest.raises(DatasetError, match="no season 'winter'; seasons present: fall, summer, winternight"):
        open_dataset(f"synthia-seqs:{tmp_path}?season=winter")
    with pytest.raises(DatasetError, match="none of sequences 04 has season 'fall'"):
        open_dataset(f"synthia-seqs:{tmp_path}?season=fall&sequences=04")


def test_bdd_labelled_and_unlabelled_splits(tmp_path):
    rng = np.random.default_rng(1)
    train_ids = {}
    for name in ("a1", "b2"):
        write_rgb(tmp_path / "images/val" / f"{name}.jpg", random_rgb(rng, 8, 12))
        ids = rng.integers(0, 20, (8, 12), dtype=np.uint8)
        ids[ids == 19] = 255
        write_grey(tmp_path / "labels/val" / f"{name}_train_id.png", ids)
        train_ids[name] = ids
        write_rgb(tmp_path / "images/train" / f"{name}.jpg", random_rgb(rng, 8, 12))
    val = open_dataset(f"bdd:{tmp_path}", "val")
    assert val.names() == ["a1", "b2"]
    for i, name in enumerate(val.names()):
        np.testing.assert_array_equal(val.label(i), train_ids[name])
    train = open_dataset(f"bdd:{tmp_path}", "train")
    assert len(train) == 2 and not train.labelled and train[1].image.shape == (8, 12, 3)
    (tmp_path / "labels/val/b2_train_id.png").unlink()
    with pytest.raises(DatasetError, match=r"labels/val exists but 1 of 2 images have no label"):
        open_dataset(f"bdd:{tmp_path}", "val")


def test_image_folder_is_unlabelled(tmp_path):
    rng = np.random.default_rng(2)
    write_rgb(tmp_path / "x/one.png", random_rgb(rng, 5, 6))
    write_rgb(tmp_path / "two.jpg", random_rgb(rng, 5, 6))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = open_dataset(f"folder:{tmp_path}")
    assert folder.names() == ["two", "x/one"] and folder[1].label is None


def test_spec_errors_and_registration(tmp_path):
    with pytest.raises(DatasetError, match="expected FAMILY:ROOT"):
        open_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match="unknown dataset family 'kitti'"):
        open_dataset(f"kitti:{tmp_path}")
    make_cityscapes(tmp_path)
    with pytest.raises(DatasetError, match="dataset 'cityscapes' has no option season; its options: "
                                           "cities, labels, label_space"):
        open_dataset(f"cityscapes:{tmp_path}?season=summer", "val")

    class Tiny(SegmentationDataset):
        family = "tiny-test"

    def tiny(root, split, *, frames="2"):
        from fcnwild.data.base import Entry
        from fcnwild.data.labels import CITYSCAPES19
        images = sorted((tmp_path / "leftImg8bit/val/aachen").iterdir())[: int(frames)]
        return Tiny(root, split, [Entry(p.stem, p, None) for p in images], CITYSCAPES19, None)

    register_dataset("tiny-test", tiny)
    assert len(open_dataset(f"tiny-test:{tmp_path}?frames=1")) == 1
    with pytest.raises(DatasetError, match="already registered"):
        register_dataset("tiny-test", lambda root, split: None)


def test_unreadable_files_name_the_file(tmp_path):
    make_cityscapes(tmp_path, cities={"aachen": 1})
    label = tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    label.write_bytes(b"not a png")
    dataset = open_dataset(f"cityscapes:{tmp_path}", "val")
    with pytest.raises(DatasetError, match=str(label)):
        dataset.label(0)
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(label)
    with pytest.raises(DatasetError, match="label image has mode RGB"):
        dataset.label(0)
