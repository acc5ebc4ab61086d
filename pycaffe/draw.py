"""pycaffe's net drawing: a NetParameter as a Graphviz graph (layers and blobs as nodes).

Building the graph needs pydot (``pip install pydot``); rendering it to an image
also needs Graphviz's ``dot`` program. Both are optional: this module imports
without them, the label and colour helpers work without them, and the graph
functions say what to install when pydot is missing.
"""
from __future__ import annotations

from types import ModuleType

from fcnwild.base import caffe_pb2

LAYER_STYLE_DEFAULT = {'shape': 'record', 'fillcolor': '#6495ED', 'style': 'filled'}
NEURON_LAYER_STYLE = {'shape': 'record', 'fillcolor': '#90EE90', 'style': 'filled'}
BLOB_STYLE = {'shape': 'octagon', 'fillcolor': '#E0E0E0', 'style': 'filled'}

_LEARNING_LAYERS = ('Convolution', 'Deconvolution', 'InnerProduct')


def _pydot() -> ModuleType:
    try:
        import pydot
    except ImportError:
        raise ImportError("drawing a net needs the pydot package (pip install pydot), and "
                          "rendering it needs Graphviz's dot program (e.g. apt-get install "
                          "graphviz)") from None
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method numbers to names: ``{0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}``."""
    return {value.number: name for name, value in
            caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """The label of a layer's edges to its tops: batch size of a Data layer, number
    of outputs of a learning layer, else empty."""
    if layer.type == 'Data':
        return 'Batch ' + str(layer.data_param.batch_size)
    if layer.type in ('Convolution', 'Deconvolution'):
        return str(layer.convolution_param.num_output)
    if layer.type == 'InnerProduct':
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """Learning-rate multipliers of a Convolution, Deconvolution or InnerProduct
    layer's weights and bias (1 where not given)."""
    if layer.type not in _LEARNING_LAYERS:
        raise ValueError("%s layers do not have a learning rate multiplier" % layer.type)
    specs = layer.param
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    multipliers = [spec.lr_mult for spec in specs] + [1.0] * (2 - len(specs))
    return multipliers[0], multipliers[1]


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str,
                    display_lrm: bool = False) -> str:
    """A layer node's label: name, type (with the pooling method), kernel/stride/pad
    of spatial layers and, with ``display_lrm``, learning-rate multipliers. Words are
    separated by spaces in vertical layouts ('TB', 'BT') and by newlines otherwise."""
    separator = ' ' if rankdir in ('TB', 'BT') else r'\n'
    if layer.type == 'Pooling':
        layer_type = '(%s %s)' % (layer.type, get_pooling_types_dict()[layer.pooling_param.pool])
    else:
        layer_type = '(%s)' % layer.type
    descriptors = [layer.name, layer_type]

    if layer.type in ('Convolution', 'Deconvolution', 'Pooling'):
        if layer.type == 'Pooling':
            pooling = layer.pooling_param
            kernel_size, stride, pad = pooling.kernel_size, pooling.stride, pooling.pad
        else:
            conv = layer.convolution_param
            kernel_size = conv.kernel_size[0] if len(conv.kernel_size) else 1
            stride = conv.stride[0] if len(conv.stride) else 1
            pad = conv.pad[0] if len(conv.pad) else 0
        descriptors.append(separator.join(["kernel size: %d" % kernel_size,
                                           "stride: %d" % stride,
                                           "pad: %d" % pad]))

    if display_lrm and layer.type in _LEARNING_LAYERS:
        lrm0, lrm1 = get_layer_lr_mult(layer)
        if any([lrm0, lrm1]):
            descriptors.append("lr mult: %.1f, %.1f" % (lrm0, lrm1))

    # The outer double quotes keep Graphviz from parsing the colons.
    return '"%s"' % separator.join(descriptors)


def choose_color_by_layertype(layertype: str) -> str:
    """Fill colour of a layer node by its type."""
    if layertype in ('Convolution', 'Deconvolution'):
        return '#FF5050'
    if layertype == 'Pooling':
        return '#FF9900'
    if layertype == 'InnerProduct':
        return '#CC33FF'
    return '#6495ED'


def _in_phase(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    if len(layer.include) > 0 and len(layer.exclude) > 0:
        raise ValueError('layer ' + layer.name + ' has both include '
                         'and exclude specified.')
    included = len(layer.include) == 0
    for rule in layer.include:
        included = included or rule.phase == phase
    for rule in layer.exclude:
        included = included and rule.phase != phase
    return included


def get_pydot_graph(caffe_net: caffe_pb2.NetParameter, rankdir: str,
                    label_edges: bool = True, phase: int | None = None,
                    display_lrm: bool = False):
    """The net as a ``pydot.Dot`` digraph: a node per layer (in-place layers in the
    neuron style), a node per blob, edges bottom -> layer -> top. ``phase``
    (``caffe_pb2.TRAIN`` or ``TEST``) keeps only the layers of that phase by their
    include/exclude rules' phases; None keeps every layer."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name if caffe_net.name else 'Net',
                      graph_type='digraph', rankdir=rankdir)
    nodes = {}
    edges = []
    for layer in caffe_net.layer:
        if phase is not None and not _in_phase(layer, phase):
            continue
        node_label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node_name = "%s_%s" % (layer.name, layer.type)
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            nodes[node_name] = pydot.Node(node_label, **NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
            nodes[node_name] = pydot.Node(node_label, **style)
        for bottom in layer.bottom:
            nodes[bottom + '_blob'] = pydot.Node('%s' % bottom, **BLOB_STYLE)
            edges.append((bottom + '_blob', node_name, '""'))
        for top in layer.top:
            nodes[top + '_blob'] = pydot.Node('%s' % top)
            edges.append((node_name, top + '_blob',
                          get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def draw_net(caffe_net: caffe_pb2.NetParameter, rankdir: str, ext: str = 'png',
             phase: int | None = None, display_lrm: bool = False) -> bytes:
    """The net drawn by Graphviz, as the bytes of an image in format ``ext``."""
    return get_pydot_graph(caffe_net, rankdir, phase=phase,
                           display_lrm=display_lrm).create(format=ext)


def draw_net_to_file(caffe_net: caffe_pb2.NetParameter, filename: str, rankdir: str = 'LR',
                     phase: int | None = None, display_lrm: bool = False) -> None:
    """Draw the net into ``filename``, in the format its extension names ('.raw'
    gives the Graphviz source)."""
    ext = filename[filename.rfind('.') + 1:]
    with open(filename, 'wb') as fid:
        fid.write(draw_net(caffe_net, rankdir, ext, phase, display_lrm))
