"""fcnwild.layers: one class per Caffe layer type, registered under its type string.

Importing the package registers every layer (``registry.layer_class``).
"""
from fcnwild.layers import (  # noqa: F401  (imported for registration)
    activation,
    conv,
    data,
    db_data,
    domain,
    dropout,
    eltwise,
    hdf5_output,
    image_data,
    inner_product,
    loss,
    memory_data,
    metrics,
    mil,
    normalization,
    pooling,
    python_layer,
    segmentation_data,
    shape,
    softmax,
    window_data,
)
