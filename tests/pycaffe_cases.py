"""Small nets and Python layers for the fcnwild.caffe (pycaffe API) tests."""
from __future__ import annotations

import numpy as np

# Input (2, 3, 2, 2) -> InnerProduct(4) -> ReLU (in place) -> "ip". The outputs "zeta"
# (2 x data) and "alpha" (ip + 1) are made in that order: Caffe lists outputs sorted.
IP_NET = """name: "ipnet"
force_backward: true
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "zeta" type: "Power" bottom: "data" top: "zeta" power_param { scale: 2 } }
layer { name: "beta" type: "Power" bottom: "ip" top: "alpha" power_param { shift: 1 } }
"""


def ip_expected(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What IP_NET's "ip" holds for input ``x``, computed with numpy."""
    return np.maximum(x.reshape(len(x), -1).astype(np.float64) @ weight.T + bias, 0)


PY_DATA_NET = """name: "pydata"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "const_data" layer: "ConstantData" param_str: "{'value': 2.0}" } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled"
  python_param { module: "const_data" layer: "Triple" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "scaled" bottom: "label" top: "loss" }
"""

# The layers PY_DATA_NET loads, written as pycaffe users write them (import caffe).
PY_DATA_MODULE = """
import numpy as np
import caffe


class ConstantData(caffe.Layer):
    def setup(self, bottom, top):
        params = eval(self.param_str)
        self.value = params["value"]
        self.calls = 0
        if len(top) != 2:
            raise Exception("Need to define two tops: data and label.")
        if len(bottom) != 0:
            raise Exception("Do not define a bottom.")

    def reshape(self, bottom, top):
        top[0].reshape(1, 2, 3, 3)
        top[1].reshape(1, 2, 3, 3)

    def forward(self, bottom, top):
        self.calls += 1
        top[0].data[...] = self.value * self.calls
        top[1].data[...] = 1.0

    def backward(self, top, propagate_down, bottom):
        pass


class Triple(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 3 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 3 * top[0].diff
"""
