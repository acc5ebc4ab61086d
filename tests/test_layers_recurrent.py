"""LSTM, RNN and LSTMUnit beyond the reference cases: the static input, the state a
fresh or reshaped layer starts from, the LSTMUnit step and its Caffe gradient, errors."""
from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format
from torch.autograd import gradcheck

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.layers.recurrent import _LSTMUnitFunction
from fcnwild.nets.net import Net
from layer_testing import make_layer

torch.manual_seed(0)

FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def recurrent(kind: str, bottoms: str, tops: str = 'top: "y"', extra: str = "",
              shapes=None):
    text = (f'name: "rec" type: "{kind}" {bottoms} {tops} '
            f'recurrent_param {{ num_output: 3 {FILLERS} {extra} }}')
    return make_layer(text, shapes)


def cont_of(steps: int, streams: int) -> torch.Tensor:
    cont = torch.ones(steps, streams)
    cont[0] = 0
    cont[2, 1] = 0
    return cont


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_static_input_is_a_per_stream_input_added_at_every_step(kind: str) -> None:
    """x_static's projection equals appending x_static to x at every step and widening
    W_x by W_x_static: the static weight is param 2, before the recurrent weight."""
    steps, streams = 4, 2
    x, x_static = torch.randn(steps, streams, 5), torch.randn(streams, 2, 3)
    with_static = recurrent(kind, 'bottom: "x" bottom: "cont" bottom: "s"',
                            shapes=[x.shape, (steps, streams), x_static.shape])
    plain = recurrent(kind, 'bottom: "x" bottom: "cont"', shapes=[(steps, streams, 11),
                                                                  (steps, streams)])
    blobs = list(with_static.blobs)
    assert tuple(blobs[2].shape) == (blobs[0].shape[0], 6)
    with torch.no_grad():
        plain.blobs[0].copy_(torch.cat([blobs[0], blobs[2]], dim=1))
        for mine, theirs in zip(list(plain.blobs)[1:], blobs[1:2] + blobs[3:]):
            mine.copy_(theirs)
    widened = torch.cat([x, x_static.reshape(1, streams, 6).expand(steps, -1, -1)], dim=2)
    cont = cont_of(steps, streams)
    expected = plain(widened, cont)[0]
    torch.testing.assert_close(with_static(x, cont, x_static)[0], expected)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_starts_at_zero_and_restarts_when_the_batch_changes(kind: str) -> None:
    layer = recurrent(kind, 'bottom: "x" bottom: "cont"', shapes=[(3, 2, 4), (3, 2)])
    x, cont = torch.randn(3, 2, 4), torch.ones(3, 2)
    first = layer(x, cont)[0]
    assert not torch.equal(layer(x, cont)[0], first)          # carried over
    fresh = recurrent(kind, 'bottom: "x" bottom: "cont"', shapes=[(3, 2, 4), (3, 2)])
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x, cont)[0], first)      # state is not in the weights
    cont[0] = 0                                               # restarts every stream
    torch.testing.assert_close(layer(x, cont)[0], first)
    layer(x, torch.ones(3, 2))
    wider = layer(torch.cat([x, x], dim=1), torch.ones(3, 4))[0]
    torch.testing.assert_close(wider[:, :2], first)           # new N: zero state


def test_lstm_unit_layer_is_one_lstm_step() -> None:
    layer = make_layer('name: "u" type: "LSTMUnit" bottom: "c0" bottom: "g" bottom: "cont" '
                       'top: "c" top: "h"', [(1, 2, 3), (1, 2, 12), (1, 2)])
    c_prev, gates = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 2, 12,
                                                                          dtype=torch.float64)
    cont = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    c, h = layer(c_prev, gates, cont)
    i, f, o, g = (gates[..., k * 3:(k + 1) * 3] for k in range(4))
    keep = cont[..., None]
    expected_c = keep * torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(c, expected_c)
    torch.testing.assert_close(h, torch.sigmoid(o) * torch.tanh(expected_c))
    assert layer.no_grad_bottoms == (2,)


def test_lstm_unit_backward_is_the_gradient_for_binary_cont() -> None:
    c_prev = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    gates = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    cont = torch.tensor([[1.0], [0.0], [1.0]], dtype=torch.float64)
    assert gradcheck(lambda c, g: _LSTMUnitFunction.apply(c, g, cont), (c_prev, gates))


def test_lstm_unit_backward_keeps_caffes_forget_gate_rule_for_fractional_cont() -> None:
    """Caffe differentiates f = cont * sigmoid(x) as f * (1 - f), not cont * s * (1 - s)."""
    c_prev = torch.randn(1, 2, dtype=torch.float64)
    gates = torch.randn(1, 8, dtype=torch.float64, requires_grad=True)
    cont = torch.tensor([[0.5]], dtype=torch.float64)
    c, _ = _LSTMUnitFunction.apply(c_prev, gates, cont)
    c.sum().backward()
    f = 0.5 * torch.sigmoid(gates[0, 2:4].detach())
    torch.testing.assert_close(gates.grad[0, 2:4], c_prev[0] * f * (1 - f))


@pytest.mark.parametrize("bottoms,tops,extra,message", [
    ('bottom: "x"', 'top: "y"', "", "'cont' (T, N) as bottom 1"),
    ('bottom: "x" bottom: "cont" bottom: "h0"', 'top: "y" top: "hT" top: "cT"',
     "expose_hidden: true", "x, cont, [x_static], h0, c0"),
    ('bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0"', 'top: "y"',
     "expose_hidden: true", "3 top(s)"),
    ('bottom: "x" bottom: "cont" bottom: "s" bottom: "h0"', 'top: "y"', "",
     "need expose_hidden: true"),
])
def test_bad_bottom_or_top_counts_name_the_layer(bottoms, tops, extra, message) -> None:
    with pytest.raises(NetError, match="layer 'rec'") as err:
        recurrent("LSTM", bottoms, tops, extra)
    assert message in str(err.value)


def test_an_lstm_without_cont_in_a_prototxt_is_a_clear_error() -> None:
    text = ('name: "n" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 '
            'dim: 1 dim: 3 } } } layer { name: "words" type: "LSTM" bottom: "x" top: "h" '
            'recurrent_param { num_output: 4 } }')
    with pytest.raises(NetError, match="layer 'words'.*sequence continuation indicators"):
        Net(text_format.Parse(text, caffe_pb2.NetParameter()))


@pytest.mark.parametrize("shapes,message", [
    ([(3, 2), (3, 2)], "at least 3 axes"),
    ([(3, 2, 4), (3, 1)], "cont must be (T, N) = (3, 2)"),
    ([(3, 2, 4), (3, 2), (3, 5)], "x_static must be (N, features...) with N = 2"),
])
def test_bad_shapes_at_setup(shapes, message) -> None:
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    with pytest.raises(NetError, match="layer 'rec'") as err:
        recurrent("RNN", bottoms, shapes=shapes)
    assert message in str(err.value)


def test_time_steps_may_not_change_and_exposed_states_must_fit() -> None:
    layer = recurrent("RNN", 'bottom: "x" bottom: "cont"', shapes=[(3, 2, 4), (3, 2)])
    with pytest.raises(NetError, match="number of time steps changed"):
        layer.reshape([(4, 2, 4), (4, 2)])
    exposed = recurrent("RNN", 'bottom: "x" bottom: "cont" bottom: "h0"',
                        'top: "y" top: "hT"', "expose_hidden: true",
                        shapes=[(3, 2, 4), (3, 2), (1, 2, 3)])
    with pytest.raises(NetError, match=r"h0 must be \(1, 2, 3\)"):
        exposed.reshape([(3, 2, 4), (3, 2), (1, 3, 3)])
