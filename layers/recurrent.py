"""Recurrent layers with Caffe's unrolled semantics: LSTM, RNN and LSTMUnit.

Bottoms: x (T, N, ...) (T time steps of N independent streams), cont (T, N), the
sequence continuation indicators (0 where a sequence starts: the previous state is
multiplied by cont), optionally a static input x_static (N, ...) added to every
step, and with ``expose_hidden`` the initial states h0 (1, N, H) [and c0 for LSTM].
cont gets no gradient.

State: without ``expose_hidden`` a forward starts from the state the previous forward
of the same layer ended in (zeros for a fresh layer, or when N changes), so cont = 1
at t = 0 continues the previous call's sequences; the state never carries gradient.
With ``expose_hidden`` the extra bottoms/tops share only data with the recurrence, as
in Caffe: diffs on hT/cT are ignored and h0/c0 get zero diff.

Params in Caffe's order (the order of its unrolled net): LSTM W_xc (4H, I), b_c (4H),
[W_xc_static (4H, I_static)], W_hc (4H, H), gate rows i, f, o, g; RNN W_xh (H, I),
b_h (H), [W_xh_static], W_hh (H, H), W_ho (H, H), b_o (H). I = count(x, 2); weights
filled with ``recurrent_param.weight_filler``, biases with ``bias_filler``.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import count, shape_str
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.fillers import fill
from fcnwild.layers.registry import register


class _LSTMUnitFunction(torch.autograd.Function):
    """One LSTM step on gate pre-activations (…, 4H) ordered i, f, o, g:
    c = f * c_prev + i * g with f = cont * sigmoid(.), h = o * tanh(c).

    Caffe's backward (lstm_unit_layer.cpp) differentiates the forget gate as
    f * (1 - f) with f already scaled by cont: exact for cont in {0, 1}, Caffe's own
    for other values.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, c_prev: Tensor, gates: Tensor,
                cont: Tensor) -> tuple[Tensor, Tensor]:
        i, f, o, g = gates.chunk(4, dim=-1)
        i, o, g = torch.sigmoid(i), torch.sigmoid(o), torch.tanh(g)
        f = torch.where(cont == 0, torch.zeros_like(f), cont * torch.sigmoid(f))
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dc: Tensor, dh: Tensor):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_term = dc + dh * o * (1 - tanh_c * tanh_c)
        dgates = torch.cat([c_term * g * i * (1 - i),
                            c_term * c_prev * f * (1 - f),
                            dh * tanh_c * o * (1 - o),
                            c_term * i * (1 - g * g)], dim=-1)
        return c_term * f, dgates, None


def lstm_unit(c_prev: Tensor, gates: Tensor, cont: Tensor) -> tuple[Tensor, Tensor]:
    """(c, h) of one LSTM step; ``cont`` broadcasts against (…, H) (e.g. (N, 1))."""
    return _LSTMUnitFunction.apply(c_prev, gates, cont.detach())


@register("LSTMUnit")
class LSTMUnit(Layer):
    """One LSTM step: bottoms c_prev (1, N, H), gate inputs (1, N, 4H) ordered i, f, o, g,
    cont (1, N); tops c (1, N, H), h (1, N, H). cont gets no gradient."""
    num_bottoms = (3, 3)
    num_tops = (2, 2)
    no_grad_bottoms = (2,)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        c_prev, gates, cont = (tuple(s) for s in bottom_shapes)
        streams = c_prev[1] if len(c_prev) > 1 else None
        for name, shape, axes in (("c_prev", c_prev, 3), ("gate input", gates, 3),
                                  ("cont", cont, 2)):
            if len(shape) != axes or shape[0] != 1 or shape[1] != streams:
                raise self.error(f"{name} must be (1, N{', ...' if axes == 3 else ''}) with "
                                 f"{axes} axes and N = {streams}: got {shape_str(shape)}")
        if gates[2] != 4 * c_prev[2]:
            raise self.error(f"the gate input must have 4 * H = {4 * c_prev[2]} channels "
                             f"(H = {c_prev[2]} from c_prev), got {shape_str(gates)}")
        return [c_prev, c_prev]

    def forward(self, c_prev: Tensor, gates: Tensor, cont: Tensor) -> tuple[Tensor, Tensor]:
        self.reshape([c_prev.shape, gates.shape, cont.shape])
        return lstm_unit(c_prev, gates, cont.to(c_prev.dtype)[..., None])


class _Recurrent(Layer):
    """Caffe's RecurrentLayer: bottoms x, cont, [x_static], [exposed initial states]."""
    num_bottoms = (2, None)
    num_tops = (1, None)
    no_grad_bottoms = (1,)
    states: ClassVar[tuple[str, ...]] = ()      # names of the recurrent states, e.g. ("h", "c")
    gate_factor: ClassVar[int] = 1               # rows of the input weights per output

    def _check_counts(self, n_bottom: int, n_top: int) -> None:
        p = self.param.recurrent_param
        exposed = len(self.states) if p.expose_hidden else 0
        state_bottoms = ", ".join(f"{s}0" for s in self.states)
        if n_bottom < 2:
            raise self.error(f"{self.type_name} needs the sequence continuation indicators "
                             f"'cont' (T, N) as bottom 1 (after x (T, N, ...)): 0 where a "
                             f"sequence starts, 1 where it continues; got {n_bottom} bottom(s)")
        if p.expose_hidden and n_bottom not in (2 + exposed, 3 + exposed):
            raise self.error(f"with expose_hidden the bottoms are x, cont, [x_static], "
                             f"{state_bottoms} ({2 + exposed} or {3 + exposed}), got {n_bottom}")
        if not p.expose_hidden and n_bottom > 3:
            raise self.error(f"the bottoms are x, cont and an optional x_static (2 or 3), got "
                             f"{n_bottom}; exposed initial states need expose_hidden: true")
        if n_top != 1 + exposed:
            tops = ", ".join(["the output"] + [f"{s}T" for s in self.states][:exposed])
            raise self.error(f"{self.type_name} takes {1 + exposed} top(s) ({tops}), got {n_top}")

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.recurrent_param
        self.expose_hidden = p.expose_hidden
        self.static_input = len(bottom_shapes) > 2 + (len(self.states) if p.expose_hidden else 0)
        x = tuple(bottom_shapes[0])
        self._check_x(x)
        if p.num_output == 0:
            raise self.error("recurrent_param.num_output must be > 0")
        self.steps, self.hidden = x[0], p.num_output
        self.inputs = count(x, 2)
        self.static_inputs = count(bottom_shapes[2], 1) if self.static_input else 0
        self.reshape(bottom_shapes)
        rows = self.gate_factor * self.hidden
        self.add_blob(fill(p.weight_filler, (rows, self.inputs), self.error))
        self.add_blob(fill(p.bias_filler, (rows,), self.error))
        if self.static_input:
            self.add_blob(fill(p.weight_filler, (rows, self.static_inputs), self.error))
        self.add_blob(fill(p.weight_filler, (rows, self.hidden), self.error))
        self.add_output_blobs(p)
        for name in self.states:
            self.register_buffer(f"{name}_state", torch.zeros(1, x[1], self.hidden),
                                 persistent=False)

    def add_output_blobs(self, p: caffe_pb2.RecurrentParameter) -> None:
        """Params after the recurrent weight (RNN's output layer)."""

    def _check_x(self, x: Shape) -> None:
        # Caffe's unrolled net projects x with an InnerProduct on axis 2.
        if len(x) < 3:
            raise self.error(f"x must have at least 3 axes (T, N, features...), got "
                             f"{shape_str(x)}")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        self._check_x(x)
        if x[0] != self.steps:
            raise self.error(f"the number of time steps changed: x is {shape_str(x)}, the layer "
                             f"was set up for T = {self.steps}")
        if count(x, 2) != self.inputs:
            raise self.error(f"x {shape_str(x)} has {count(x, 2)} inputs per step, the weights "
                             f"expect {self.inputs}")
        steps, streams = x[:2]
        if cont != (steps, streams):
            raise self.error(f"cont must be (T, N) = ({steps}, {streams}), got {shape_str(cont)}")
        if self.static_input:
            static = tuple(bottom_shapes[2])
            if len(static) < 2 or static[0] != streams or count(static, 1) != self.static_inputs:
                raise self.error(f"x_static must be (N, features...) with N = {streams} and "
                                 f"{self.static_inputs} values per stream, got "
                                 f"{shape_str(static)}")
        state_shape = (1, streams, self.hidden)
        if self.expose_hidden:
            for name, shape in zip(self.states, bottom_shapes[2 + self.static_input:]):
                if tuple(shape) != state_shape:
                    raise self.error(f"{name}0 must be {shape_str(state_shape)}, got "
                                     f"{shape_str(shape)}")
            return [(steps, streams, self.hidden)] + [state_shape] * len(self.states)
        return [(steps, streams, self.hidden)]

    def forward(self, x: Tensor, cont: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        self.reshape([x.shape, cont.shape] + [t.shape for t in rest])
        steps, streams = x.shape[:2]
        projected = F.linear(x.reshape(steps, streams, -1), self.blobs[0], self.blobs[1])
        if self.static_input:
            projected = projected + F.linear(rest[0].reshape(streams, -1), self.blobs[2])
        if self.expose_hidden:
            initial = [t.detach() for t in rest[self.static_input:]]
        else:
            initial = [self._carried_state(name, streams, x) for name in self.states]
        output, final = self.recur(projected, cont.detach().to(x.dtype), initial)
        final = [t.detach() for t in final]
        if self.expose_hidden:
            return (output, *final)
        for name, state in zip(self.states, final):
            setattr(self, f"{name}_state", state)
        return (output,)

    def _carried_state(self, name: str, streams: int, like: Tensor) -> Tensor:
        state = getattr(self, f"{name}_state")
        if tuple(state.shape) != (1, streams, self.hidden):
            return like.new_zeros(1, streams, self.hidden)
        return state.to(like)

    @property
    def recurrent_weight(self) -> Tensor:
        return self.blobs[3 if self.static_input else 2]

    def recur(self, projected: Tensor, cont: Tensor,
              initial: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The outputs (T, N, H) and final states (1, N, H) from the input projections
        (T, N, gate_factor * H)."""
        raise NotImplementedError


@register("LSTM")
class LSTM(_Recurrent):
    """h_t from gates W_xc x_t + b_c [+ W_xc_static x_static] + W_hc (cont_t h_{t-1})
    through LSTMUnit (c_t = cont_t f_t c_{t-1} + i_t g_t, h_t = o_t tanh(c_t)); top h
    (T, N, H) [, hT, cT]."""
    states = ("h", "c")
    gate_factor = 4

    def recur(self, projected: Tensor, cont: Tensor,
              initial: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h, c = initial[0][0], initial[1][0]
        weight = self.recurrent_weight
        outputs = []
        for t in range(projected.shape[0]):
            keep = cont[t][:, None]
            gates = projected[t] + F.linear(keep * h, weight)
            c, h = lstm_unit(c, gates, keep)
            outputs.append(h)
        return torch.stack(outputs), [h[None], c[None]]


@register("RNN")
class RNN(_Recurrent):
    """h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o); top o (T, N, H) [, hT]."""
    states = ("h",)

    def add_output_blobs(self, p: caffe_pb2.RecurrentParameter) -> None:
        self.add_blob(fill(p.weight_filler, (self.hidden, self.hidden), self.error))
        self.add_blob(fill(p.bias_filler, (self.hidden,), self.error))

    def recur(self, projected: Tensor, cont: Tensor,
              initial: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h = initial[0][0]
        weight = self.recurrent_weight
        hidden = []
        for t in range(projected.shape[0]):
            h = torch.tanh(projected[t] + F.linear(cont[t][:, None] * h, weight))
            hidden.append(h)
        output = torch.tanh(F.linear(torch.stack(hidden), self.blobs[-2], self.blobs[-1]))
        return output, [h[None]]
