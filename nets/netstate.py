"""NetState filtering: which layers a net holds in a phase/level/stage (Net::FilterNet)."""
from __future__ import annotations

import os

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import PrototxtError


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """Caffe's StateMeetsRule: every condition the rule sets must hold."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def filter_net(param: caffe_pb2.NetParameter, state: caffe_pb2.NetState, *,
               file: str | os.PathLike | None = None) -> caffe_pb2.NetParameter:
    """The layers of ``param`` that ``state`` includes, in prototxt order."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise PrototxtError("specify either include rules or exclude rules, not both",
                                file=file, layer=layer.name)
        included = len(layer.include) == 0
        if any(state_meets_rule(state, rule) for rule in layer.exclude):
            included = False
        if any(state_meets_rule(state, rule) for rule in layer.include):
            included = True
        if included:
            out.layer.add().CopyFrom(layer)
    return out


def make_state(phase: int, level: int = 0, stages: tuple[str, ...] | list[str] = (),
               base: caffe_pb2.NetState | None = None) -> caffe_pb2.NetState:
    """The NetState a Net is built in: the prototxt's ``state`` overridden by the caller."""
    state = caffe_pb2.NetState()
    if base is not None:
        state.CopyFrom(base)
    state.phase = phase
    state.level = level
    del state.stage[:]
    state.stage.extend(stages)
    return state
