"""fcnwild.caffe: pycaffe's Python interface (``import caffe``) on fcnwild's Net and Solver.

Scripts written for BVLC Caffe's pycaffe run unchanged with ``caffe`` resolving
here: ``fcnwild pycaffe SCRIPT [ARGS...]`` runs one so, and the folder printed by
``fcnwild pycaffe --shim-path`` put on ``PYTHONPATH`` makes ``import caffe`` find
this package. Installing fcnwild never shadows a real pycaffe.

Where it differs from pycaffe (kept so because holding Caffe's behaviour would cost
every user a copy or a sync):

* On the CPU ``blob.data``/``.diff`` are views of the net's memory and stay so across
  forwards and backwards (the first read pins the blob's buffers). They go stale when
  a blob changes shape, after ``share_with`` (the shared layer's params), after a
  mode or device change, and, for param diffs, across ``solver.step()`` (the solver
  drops the diffs it clears; ``net.clear_param_diffs()`` zeroes them in place). Read
  ``.data`` again after those.
* On a CUDA device ``.data``/``.diff`` are host copies, written back before the next
  call of a net or solver (when Caffe moves a blob's head back to the GPU); read them
  again after each call. Caffe refreshes an array it handed out when anyone next
  reads ``.data``; here the next read gives a new array.
* A top that Caffe shares with its bottom (Split, Flatten, Reshape) has its own memory
  once its ``.data`` was read: writing into it does not change the bottom.
* ``share_with`` shares the params' diffs with their data (Caffe shares only the data),
  so a backward through the sharing net adds to the other net's param diffs.
* A Python layer's ``top``/``bottom`` blobs are its own arrays, copied to and from the
  net's blobs around its calls. Its learnable blobs (``self.blobs.add_blob``) are the
  net's params themselves; it adds and reshapes them in ``setup`` only.
* An exception raised by a Python layer's code reaches the script as raised, with a
  note naming the layer and the method.
* Not supported, each raising ``NotImplementedError``: NCCL and multi-process solvers
  (``caffe.NCCL``, ``set_solver_count(n > 1)``; train on several GPUs with
  ``fcnwild train -gpu``), ``Layer.setup`` of built-in layers, ``add_blob`` and
  ``reshape`` of a learnable blob once the net is built, and solver callbacks on
  fcnwild's alternating adversarial solver.
"""
from fcnwild.base.caffe_pb2 import TEST, TRAIN
from fcnwild.caffe import io, proto, pycaffe
from fcnwild.caffe._caffe import (
    NCCL,
    Timer,
    __version__,
    has_nccl,
    init_log,
    layer_type_list,
    log,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from fcnwild.caffe.classifier import Classifier
from fcnwild.caffe.detector import Detector
from fcnwild.caffe.net import Net
from fcnwild.caffe.net_spec import NetSpec, layers, params, to_proto
from fcnwild.caffe.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
)
from fcnwild.layers.blob_views import BlobView as Blob
from fcnwild.layers.python_layer import PythonLayerBase as Layer

__all__ = [
    "Net", "Blob", "Layer", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
    "AdaDeltaSolver", "AdamSolver", "get_solver", "NCCL", "Timer", "init_log", "log",
    "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed", "layer_type_list",
    "solver_count", "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess",
    "has_nccl", "__version__", "TRAIN", "TEST", "Classifier", "Detector", "io", "proto", "pycaffe",
    "NetSpec", "layers", "params", "to_proto",
]
