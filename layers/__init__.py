"""fcnwild.layers: one class per Caffe layer type, registered under its type string.

Importing the package registers every layer (``registry.layer_class``).
"""
from fcnwild.layers import (  # noqa: F401  (imported for registration)
    activation,
    conv,
    data,
    dropout,
    eltwise,
    inner_product,
    loss,
    metrics,
    normalization,
    pooling,
    python_layer,
    shape,
    softmax,
)
