"""fcnwild.layers: one class per Caffe layer type, registered under its type string.

Importing the package registers every layer (``registry.layer_class``).
"""
from fcnwild.layers import (  # noqa: F401  (imported for registration)
    activation,
    batch_select,
    conv,
    data,
    dilation_data,
    domain,
    dropout,
    eltwise,
    embed,
    im2col,
    inner_product,
    loss,
    metrics,
    mil,
    normalization,
    pooling,
    python_layer,
    recurrent,
    segmentation_data,
    shape,
    softmax,
    spp,
)
