"""Label spaces against the official Cityscapes label table (cityscapesscripts)."""
from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cs_labels

from fcnwild.base.errors import DatasetError
from fcnwild.data.labels import (
    CITYSCAPES13,
    CITYSCAPES16,
    CITYSCAPES19,
    CITYSCAPES_MEAN_BGR,
    SYNTHIA_SEQS13,
    cityscapes_space_lut,
    get_label_space,
)


def test_cityscapes_id_map_is_the_official_table():
    lut = CITYSCAPES19.id_lut()
    for label in cs_labels.labels:
        if label.id >= 0:
            assert lut[label.id] == label.trainId, label.name
    assert (lut[34:] == 255).all()


def test_cityscapes_names_and_palette_follow_train_ids():
    official = sorted((l.trainId, l.name, l.color) for l in cs_labels.labels if 0 <= l.trainId < 255)
    assert CITYSCAPES19.class_names == tuple(name for _, name, _ in official)
    np.testing.assert_array_equal(CITYSCAPES19.palette, [color for _, _, color in official])
    assert CITYSCAPES_MEAN_BGR == (72.39, 82.91, 73.16)


def test_subsets_drop_the_classes_synthia_lacks():
    assert set(CITYSCAPES19.class_names) - set(CITYSCAPES16.class_names) == {"terrain", "truck", "train"}
    assert set(CITYSCAPES16.class_names) - set(CITYSCAPES13.class_names) == {"wall", "fence", "pole"}
    names19 = CITYSCAPES19.class_names
    assert [names19[k] for k in CITYSCAPES19.means["16"]] == list(CITYSCAPES16.class_names)
    assert [names19[k] for k in CITYSCAPES19.means["13"]] == list(CITYSCAPES13.class_names)
    assert [CITYSCAPES16.class_names[k] for k in CITYSCAPES16.means["13"]] == list(CITYSCAPES13.class_names)
    assert set(CITYSCAPES16.means) == {"16", "13"} and set(SYNTHIA_SEQS13.means) == {"13"}


def test_export_then_read_back_is_the_identity():
    for space in (CITYSCAPES19, CITYSCAPES16, SYNTHIA_SEQS13):
        train = np.arange(space.num_classes, dtype=np.uint8)
        np.testing.assert_array_equal(space.id_lut()[space.export_lut()[train]], train)
        assert space.export_lut()[255] == space.void_id and space.id_lut()[space.void_id] == 255


def test_subspace_lut_renumbers_and_errors():
    lut = cityscapes_space_lut(CITYSCAPES13, {7: 0, 12: 3, 33: 18})
    assert lut[7] == 0 and lut[12] == 255 and lut[33] == 12
    with pytest.raises(DatasetError, match="not a Cityscapes label space"):
        cityscapes_space_lut(SYNTHIA_SEQS13, {1: 0})
    with pytest.raises(DatasetError, match="unknown label space 'voc'"):
        get_label_space("voc")
