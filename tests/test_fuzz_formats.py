"""A short, deterministic fuzz run of every file format fcnwild reads.

Mutators, seeds and the oracle are in tests/fuzz_harness.py: every mutated
prototxt, caffemodel, HDF5 or torch weights file and solver state must end in
a valid result or an FcnwildError that names the file, within the harness's
time limit and address-space cap. benchmarks/fuzz_formats.py is the long run.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz_harness import OUR_ERROR, VALID, build_formats, memory_cap, run_case

# torch warns about the odd pickle protocols that mutated files declare
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

FORMATS = ["net_prototxt", "solver_prototxt", "caffemodel", "caffemodel_h5", "torch",
           "solverstate", "solverstate_h5"]
EXAMPLES = 120


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    return build_formats(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("name", FORMATS)
def test_every_seed_is_read_as_valid(formats, name):
    """The oracle accepts the unmutated inputs (so errors below come from mutations)."""
    for target in formats[name].targets:
        result = run_case(target, target.seed)
        assert result.outcome == VALID, f"{target.name}: {result.detail}"


@pytest.mark.parametrize("name", FORMATS)
def test_mutated_inputs_end_in_a_result_or_our_error(formats, name):
    outcomes: dict[str, int] = {}
    slowest = [0.0, ""]

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(formats[name].cases())
    def check(case):
        target, data = case
        result = run_case(target, data)
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        if result.seconds > slowest[0]:
            slowest[:] = [result.seconds, target.name]
        assert result.outcome in (VALID, OUR_ERROR), \
            f"{target.name}: {result.outcome}: {result.detail}"

    with memory_cap():
        check()
    print(f"{name}: {outcomes}, slowest {slowest[0]:.3f}s ({slowest[1]})")
    # Both kinds of ending occur, so the mutations neither always break nor never break.
    assert outcomes.get(VALID) and outcomes.get(OUR_ERROR)
