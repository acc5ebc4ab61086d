"""fcnwild.layers: one class per Caffe layer type, registered under its type string.

Importing the package registers every layer (``registry.layer_class``).
"""
from fcnwild.layers import (  # noqa: F401  (imported for registration)
    activation,
    batch_select,
    conv,
    data,
    db_data,
    dilation_data,
    domain,
    dropout,
    eltwise,
    embed,
    hdf5_output,
    im2col,
    image_data,
    inner_product,
    loss,
    memory_data,
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
    window_data,
)
