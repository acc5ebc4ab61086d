"""Every public name of BVLC Caffe master's pycaffe (``python/caffe/__init__.py``,
``pycaffe.py``, the exports of ``_caffe.cpp``, ``io.py``, ``net_spec.py``,
``coord_map.py``, ``draw.py``, ``classifier.py``, ``detector.py``) exists in
fcnwild.caffe, and what fcnwild.caffe does not support raises NotImplementedError
naming it."""
from __future__ import annotations

import importlib

import pytest

import fcnwild.caffe as caffe
from fcnwild.caffe import _caffe
from pycaffe_cases import IP_NET
from solver_cases import write

# module (relative to caffe) -> the names pycaffe defines there
MODULE_NAMES = {
    "": "Net SGDSolver NesterovSolver AdaGradSolver RMSPropSolver AdaDeltaSolver AdamSolver "
        "NCCL Timer init_log log set_mode_cpu set_mode_gpu set_device Layer get_solver "
        "layer_type_list set_random_seed solver_count set_solver_count solver_rank "
        "set_solver_rank set_multiprocess has_nccl __version__ TRAIN TEST Classifier "
        "Detector io layers params NetSpec to_proto proto pycaffe",
    "_caffe": "Net Blob Layer LayerParameter SolverParameter Solver SGDSolver NesterovSolver "
              "AdaGradSolver RMSPropSolver AdaDeltaSolver AdamSolver get_solver BlobVec "
              "RawBlobVec LayerVec StringVec IntVec DtypeVec NetVec BoolVec NCCL Timer "
              "init_log log has_nccl set_mode_cpu set_mode_gpu set_random_seed set_device "
              "solver_count set_solver_count solver_rank set_solver_rank set_multiprocess "
              "layer_type_list __version__",
    "pycaffe": "Net SGDSolver NesterovSolver AdaGradSolver RMSPropSolver AdaDeltaSolver "
               "AdamSolver NCCL Timer",
    "io": "blobproto_to_array array_to_blobproto arraylist_to_blobprotovector_str "
          "blobprotovector_str_to_arraylist array_to_datum datum_to_array Transformer "
          "load_image resize_image oversample",
    "net_spec": "param_name_dict to_proto assign_proto Top Function NetSpec Layers Parameters "
                "layers params",
    "coord_map": "conv_params crop_params UndefinedMapException coord_map "
                 "AxisMismatchException compose inverse coord_map_from_to crop",
    "draw": "get_pooling_types_dict get_edge_label get_layer_lr_mult get_layer_label "
            "choose_color_by_layertype get_pydot_graph draw_net draw_net_to_file "
            "LAYER_STYLE_DEFAULT NEURON_LAYER_STYLE BLOB_STYLE",
    "classifier": "Classifier",
    "detector": "Detector",
    "proto.caffe_pb2": "NetParameter SolverParameter LayerParameter BlobProto BlobProtoVector "
                       "Datum NetState TRAIN TEST",
}

# what instances of pycaffe's classes answer to
NET = ("_forward _backward reshape clear_param_diffs copy_from share_with _blob_loss_weights "
       "_bottom_ids _top_ids _blobs layers _blob_names _layer_names _inputs _outputs "
       "_set_input_arrays save save_hdf5 load_hdf5 before_forward after_forward "
       "before_backward after_backward blobs blob_loss_weights layer_dict params inputs "
       "outputs forward backward forward_all forward_backward_all set_input_arrays _batch "
       "top_names bottom_names")
BLOB = "shape num channels height width count reshape data diff"
LAYER = "blobs setup reshape type"
SOLVER = ("net test_nets iter add_callback solve step restore snapshot share_weights "
          "apply_update param")
SOLVER_PARAM = "max_iter display layer_wise_reduce"
TIMER = "start stop ms"
TRANSFORMER = ("preprocess deprocess set_transpose set_channel_swap set_raw_scale set_mean "
               "set_input_scale")
DETECTOR = "detect_windows detect_selective_search crop configure_crop"


@pytest.mark.parametrize("module", sorted(MODULE_NAMES))
def test_every_module_name_of_pycaffe_exists(module):
    mod = importlib.import_module("fcnwild.caffe" + (f".{module}" if module else ""))
    assert [name for name in MODULE_NAMES[module].split() if not hasattr(mod, name)] == []


@pytest.fixture
def solver(tmp_path):
    write(tmp_path / "net.prototxt", IP_NET)
    path = write(tmp_path / "solver.prototxt", 'net: "net.prototxt" base_lr: 0.01 '
                                               'lr_policy: "fixed" max_iter: 2 display: 0')
    return caffe.SGDSolver(str(path))


def missing(obj, names: str) -> list[str]:
    return [name for name in names.split() if not hasattr(obj, name)]


def test_every_instance_attribute_of_pycaffe_exists(solver):
    net = solver.net
    assert missing(net, NET) == []
    assert missing(net.blobs["data"], BLOB) == []
    assert missing(net.params["ip"][0], BLOB) == []
    assert missing(net.layers[1], LAYER) == [] and hasattr(net.layers[1].blobs, "add_blob")
    assert missing(caffe.Layer, LAYER) == []
    assert missing(solver, SOLVER) == [] and missing(solver.param, SOLVER_PARAM) == []
    assert missing(caffe.Timer(), TIMER) == []
    assert missing(caffe.io.Transformer({"data": (1, 3, 2, 2)}), TRANSFORMER) == []
    assert missing(caffe.Detector, DETECTOR) == [] and hasattr(caffe.Classifier, "predict")
    assert missing(caffe.NCCL, "new_uid bcast") == []


def test_the_extension_modules_classes_are_fcnwild_caffes():
    assert (_caffe.Net, _caffe.Layer, _caffe.SGDSolver, _caffe.get_solver) == \
        (caffe.Net, caffe.Layer, caffe.SGDSolver, caffe.get_solver)
    assert isinstance(_caffe.StringVec(["a"]), list)
    assert issubclass(caffe.SGDSolver, _caffe.Solver)


def test_what_is_not_supported_raises_not_implemented_naming_it(solver, tmp_path, monkeypatch):
    net = solver.net
    cases = {
        "caffe.NCCL:": lambda: caffe.NCCL(solver, "uid"),
        "NCCL.new_uid": caffe.NCCL.new_uid,
        "Layer.setup": lambda: net.layers[1].setup([], []),
        "BlobVec.add_blob": lambda: net.layers[1].blobs.add_blob(3),
        "reshape of learnable blob": lambda: net.params["ip"][0].reshape(3),
    }
    for name, call in cases.items():
        with pytest.raises(NotImplementedError, match=name):
            call()
    monkeypatch.setitem(_caffe._state, "solver_count", 2)
    with pytest.raises(NotImplementedError, match=r"set_solver_count\(2\)"):
        caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
