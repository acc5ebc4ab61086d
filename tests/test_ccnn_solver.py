"""CCNN's constrained softmax (layers/constraint_solver.py) against CCNN's own C++ solver.

The reference answers (tests/fixtures/ccnn_reference/problems.h5, see PROVENANCE.md)
come from pathak22/ccnn's ConstraintSoftmax. CCNN stops when its float32 dual
objective no longer decreases, so its answer is the exact optimum only up to float32
noise; the tolerances are the ones the reference set suggests:

* P: ``tol_P_atol_suggested`` per problem (2x the larger of CCNN's distance to an exact
  float64 solution and a float32 re-implementation's distance to CCNN);
* WeakLoss gradient: that atol / N; WeakLoss loss: 1e-3 absolute;
* binding constraints: hold to 3e-4 (s = 1) and 6e-4 (s = 1000), CCNN's own figures.

Multipliers are checked exactly where CCNN's is 0 or at its cap. A binding one is held
to the larger of (i) the P recipe applied to multipliers, 2x CCNN's own distance to the
exact float64 multipliers, and (ii) the P tolerance carried over by the softmax Jacobian
(p_ic moves by at most s * range(a_k) / 4 per unit): 4 * atol / (s * range(a_k)).
Constraint values are pixel averages of a_k . p_i, so they are held to atol * |a_k|_1.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fcnwild.base.errors import NetError
from fcnwild.layers.constraint_solver import (
    HARD,
    REMOVED_LOGIT,
    ConstraintSet,
    ConstraintSolverWarning,
    predicted_present,
    size_constraints,
    solve_constrained_softmax,
    weakloss_constraints,
    weakloss_loss_and_grad,
)
from fcnwild.layers.constraint_solver import _Dual, _sequential_sum

FIXTURE = Path(__file__).parent / "fixtures" / "ccnn_reference" / "problems.h5"
with h5py.File(FIXTURE, "r") as _h5:
    NAMES = list(_h5["problems"])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BINDING_RESIDUAL = {1.0: 3e-4, 1000.0: 6e-4}
# A few float32 ulps of a probability: what differs when a glibc expf/logf result is
# not the correctly rounded one our float64-rounded exp/log give.
CCNN_ARITHMETIC_ATOL = 3e-7
CLASS_FIXTURE = FIXTURE.parent / "weakloss_fg_lower_binds.npz"
# The constraint sets WeakLoss builds, by the reference set's `weakloss_style`.
WEAKLOSS_STYLE = {1: {}, 3: {},
                  2: dict(fg_lower=0.1, fg_slack=HARD, bg_lower=0.2, bg_slack=HARD, bg_upper=0.7)}


def load(name: str) -> dict:
    with h5py.File(FIXTURE, "r") as h5:
        g = h5["problems"][name]
        problem = {key: g[key][()] for key in g}
        problem.update({key: g.attrs[key] for key in g.attrs})
    return problem


def constraints_of(problem: dict) -> ConstraintSet:
    rows = [(torch.from_numpy(problem["A"]), torch.from_numpy(problem["b"]),
             torch.from_numpy(problem["slack"]))]
    return ConstraintSet.from_rows(rows, torch.from_numpy(problem["zero_constraint"] > 0)[None])


def scores_of(problem: dict) -> torch.Tensor:
    """The (N, C) scores as a (1, C, H, W) blob: pixel n = h*W + w."""
    H, W = int(problem["H"]), int(problem["W"])
    return torch.from_numpy(np.ascontiguousarray(problem["f"].T)).reshape(1, -1, H, W)


def solve_quietly(scores, constraints, scale):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintSolverWarning)
        return solve_constrained_softmax(scores, constraints, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_matches_ccnn(name, device):
    pb = load(name)
    scale = float(pb["scale"])
    if not pb["ccnn_converged"]:
        with pytest.warns(ConstraintSolverWarning, match="1 of 1 image"):
            sol = solve_constrained_softmax(scores_of(pb).to(device), constraints_of(pb), scale)
        assert not sol.converged[0] and int(sol.iterations[0]) == pb["ccnn_pgd_iterations"] == 3001
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstraintSolverWarning)
        sol = solve_constrained_softmax(scores_of(pb).to(device), constraints_of(pb), scale)
    N, C = pb["f"].shape
    atol = float(pb["tol_P_atol_suggested"])
    P = sol.P[0].reshape(C, N).T.double().cpu().numpy()
    assert bool(sol.converged[0])
    np.testing.assert_allclose(P, pb["P"], rtol=0, atol=atol)
    # CCNN's float32 arithmetic in CCNN's order: the same accepted steps, so P agrees
    # up to the last bits where glibc's expf/logf are not correctly rounded.
    np.testing.assert_allclose(P, pb["P"], rtol=0, atol=CCNN_ARITHMETIC_ATOL)
    assert np.all(P[:, pb["zero_constraint"] > 0] == 0)
    np.testing.assert_allclose(P.sum(1), 1, rtol=0, atol=1e-6)

    if pb["ccnn_special_case_pM_le_1"]:
        assert int(sol.iterations[0]) == 0 and pb["ccnn_pgd_iterations"] == -1
        assert torch.all(sol.multipliers == 0)
    else:
        assert int(sol.iterations[0]) == int(pb["ccnn_pgd_iterations"])

    lam = sol.multipliers[0].double().cpu().numpy()
    status = pb["ccnn_constraint_status"]
    present = pb["zero_constraint"] == 0
    for k in range(len(lam)):
        if status[k] == 0:
            assert lam[k] == 0, f"row {k}: CCNN's multiplier is 0, got {lam[k]}"
        elif status[k] == 2:
            cap = np.float32(np.float32(pb["slack"][k]) * np.float32(N)) / np.float32(N)
            assert lam[k] == cap, f"row {k}: CCNN's multiplier is at its cap {cap}, got {lam[k]}"
        elif status[k] == 1:
            tol = max(2 * pb["max_abs_lambda_ccnn_minus_ref64"],
                      4 * atol / (scale * np.ptp(pb["A"][k][present])))
            assert abs(lam[k] - pb["ccnn_lambda"][k]) <= tol, f"row {k}"
            residual = abs(float(sol.values[0, k]) - pb["b"][k])
            assert residual <= BINDING_RESIDUAL[scale], f"row {k}: binding row off by {residual}"
    values = sol.values[0].double().cpu().numpy()
    assert np.all(np.abs(values - pb["constraint_value"]) <= atol * np.abs(pb["A"]).sum(1))

    style = int(pb["weakloss_style"])
    if style:
        built = weakloss_constraints(torch.from_numpy(pb["labels"])[None], **WEAKLOSS_STYLE[style])
        rows = built.active[0]
        np.testing.assert_array_equal(built.A[0][rows].numpy(), pb["A"])
        np.testing.assert_array_equal(built.b[0][rows].numpy(), pb["b"])
        np.testing.assert_array_equal(built.slack[0][rows].numpy(), pb["slack"])
        np.testing.assert_array_equal(built.absent[0].numpy(), pb["zero_constraint"] > 0)
        loss, grad = weakloss_loss_and_grad(scores_of(pb).to(device), sol.P)
        assert abs(float(loss[0]) - pb["loss_weakloss"]) <= 1e-3
        grad = grad[0].reshape(C, N).T.cpu().numpy()
        np.testing.assert_allclose(grad, pb["grad"], rtol=0, atol=atol / N)


@pytest.mark.parametrize("names", [("p04_wl_bg_upper_binds", "p15_gen_interval"),
                                   ("p01_wl_all_inactive", "p19_gen_infeasible_hard")])
def test_batching_changes_nothing(names):
    """Problems of equal N and C, padded to one batch, give bit-identical answers;
    an image that ends early (p01: 45 steps) is frozen while another runs on (p19: 3001)."""
    problems = [load(n) for n in names]
    scale = float(problems[0]["scale"])
    assert all(float(p["scale"]) == scale for p in problems)
    batch = ConstraintSet.from_rows(
        [(torch.from_numpy(p["A"]), torch.from_numpy(p["b"]), torch.from_numpy(p["slack"]))
         for p in problems],
        torch.stack([torch.from_numpy(p["zero_constraint"] > 0) for p in problems]))
    assert batch.A.shape[1] == max(len(p["b"]) for p in problems)
    scores = torch.cat([scores_of(p) for p in problems])
    expect_warning = not all(p["ccnn_converged"] for p in problems)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        together = solve_constrained_softmax(scores, batch, scale)
    assert any(issubclass(w.category, ConstraintSolverWarning) and "1 of 2 image" in str(w.message)
               for w in caught) == expect_warning
    for j, p in enumerate(problems):
        alone = solve_quietly(scores[j:j + 1], constraints_of(p), scale)
        K = len(p["b"])
        assert torch.equal(together.P[j], alone.P[0])
        assert torch.equal(together.multipliers[j, :K], alone.multipliers[0])
        assert torch.equal(together.values[j, :K], alone.values[0])
        assert torch.all(together.multipliers[j, K:] == 0)
        assert together.iterations[j] == alone.iterations[0] > 0
        assert together.converged[j] == alone.converged[0] == bool(p["ccnn_converged"])


def test_pixel_by_class_layout_is_the_same_solve():
    pb = load("p06_wl_all_present")
    blob = solve_constrained_softmax(scores_of(pb), constraints_of(pb))
    rows = solve_constrained_softmax(torch.from_numpy(pb["f"])[None], constraints_of(pb))
    N, C = pb["f"].shape
    assert rows.P.shape == (1, N, C)
    assert torch.equal(rows.P[0], blob.P[0].reshape(C, N).T)
    assert torch.equal(rows.multipliers, blob.multipliers)


def random_size_problem(rng: np.random.RandomState, B: int, C: int, H: int, W: int):
    """Peaked scores and size constraints: uppers hard and jointly feasible (>= 0.5
    each on >= 2 classes), lowers soft with caps small enough to leave some violated."""
    scores = rng.randn(B, C, H, W).astype(np.float32) * 2
    scores[np.arange(B), rng.randint(0, C, B)] += 4
    present = rng.rand(B, C) < 0.6
    present[:, :2] = True
    lower = rng.uniform(0.0, 0.45, (B, C)).astype(np.float32)
    upper = np.maximum(lower, rng.uniform(0.5, 0.9, (B, C))).astype(np.float32)
    lower_slack = rng.choice(np.float32([0.3, 1.0, 3.0]), (B, C))
    cs = size_constraints(torch.from_numpy(present), torch.from_numpy(lower),
                          torch.from_numpy(upper), lower_slack=torch.from_numpy(lower_slack))
    return torch.from_numpy(scores), cs


@pytest.mark.parametrize("seed", range(12))
def test_only_capped_rows_are_violated(seed):
    """Slack is a multiplier cap: a row below its bound has its multiplier at the cap,
    so hard rows (cap 1e10) hold; a positive multiplier means the row is not slack."""
    rng = np.random.RandomState(seed)
    scores, cs = random_size_problem(rng, B=3, C=5, H=rng.randint(4, 16), W=12)
    sol = solve_constrained_softmax(scores, cs)
    assert torch.all(sol.converged)
    tol = BINDING_RESIDUAL[1.0]
    lam, gap = sol.multipliers, sol.values - cs.b
    active = cs.active
    assert torch.all(lam[~active] == 0)
    assert torch.all((lam >= 0) & (lam <= cs.slack * (1 + 1e-6)))
    violated = active & (gap < -tol)
    capped = (lam - cs.slack).abs() <= 1e-6 * cs.slack
    assert torch.all(capped[violated])
    assert not torch.any(violated & (cs.slack >= HARD))
    assert torch.all(gap[active & (lam > 0) & ~capped] <= tol)


def test_special_case_ignores_linear_constraints():
    """<= 1 class left after the zero constraints: no solve, linear constraints ignored
    (even infeasible ones), P one-hot on the class left or uniform if none is."""
    scores = torch.randn(2, 4, 3, 5)
    absent = torch.tensor([[True, False, True, True], [True, True, True, True]])
    infeasible = (torch.eye(4)[:2], torch.tensor([0.9, 0.9]), torch.tensor([HARD, HARD]))
    cs = ConstraintSet.from_rows([infeasible, infeasible], absent)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstraintSolverWarning)
        sol = solve_constrained_softmax(scores, cs, scale=1000.0)
    assert torch.equal(sol.P[0], torch.eye(4)[1][:, None, None].expand(4, 3, 5))
    assert torch.equal(sol.P[1], torch.full((4, 3, 5), 0.25))
    assert torch.all(sol.converged) and torch.all(sol.iterations == 0)
    assert torch.all(sol.multipliers == 0)
    assert torch.equal(sol.values, torch.tensor([[0.0, 1.0], [0.25, 0.25]]))


def test_rows_lose_their_entries_on_removed_classes():
    """Entries on zero-constrained classes are dropped, so a row on removed classes
    only reads 0 >= b: an upper bound there (b < 0) changes nothing. (With b > 0 it is
    unsatisfiable and, in CCNN as here, its multiplier runs to its cap.)"""
    pb = load("p12_gen_fg_upper_hard")
    absent = np.flatnonzero(pb["zero_constraint"] > 0)
    base = [torch.from_numpy(pb[key]) for key in ("A", "b", "slack")]
    only_removed = torch.zeros(1, base[0].shape[1])
    only_removed[0, absent] = -1.0                     # 'removed classes <= 0.3', hard
    with_entries = base[0].clone()
    with_entries[:, absent] = 5.0
    variants = [
        (torch.cat([base[0], only_removed]), torch.cat([base[1], torch.tensor([-0.3])]),
         torch.cat([base[2], torch.tensor([HARD])])),
        (with_entries, base[1], base[2]),
    ]
    expected = solve_constrained_softmax(scores_of(pb), constraints_of(pb))
    for rows in variants:
        cs = ConstraintSet.from_rows([rows], torch.from_numpy(pb["zero_constraint"] > 0)[None])
        sol = solve_constrained_softmax(scores_of(pb), cs)
        assert torch.equal(sol.P, expected.P)
        assert torch.equal(sol.multipliers[:, :len(pb["b"])], expected.multipliers)
        assert torch.equal(sol.iterations, expected.iterations)


def test_infeasible_image_is_flagged_and_warned():
    pb = load("p19_gen_infeasible_hard")
    feasible = load("p01_wl_all_inactive")
    scores = torch.cat([scores_of(feasible), scores_of(pb), scores_of(pb)])
    rows = [(torch.from_numpy(p["A"]), torch.from_numpy(p["b"]), torch.from_numpy(p["slack"]))
            for p in (feasible, pb, pb)]
    absent = torch.from_numpy(np.stack([p["zero_constraint"] > 0 for p in (feasible, pb, pb)]))
    with pytest.warns(ConstraintSolverWarning, match="2 of 3 image"):
        sol = solve_constrained_softmax(scores, ConstraintSet.from_rows(rows, absent))
    assert sol.converged.tolist() == [True, False, False]
    assert sol.iterations.tolist() == [45, 3001, 3001]


def test_size_constraints_rows():
    present = torch.tensor([[True, False, True], [False, False, True]])
    lower, upper = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.6, 0.7])
    cs = size_constraints(present, lower, upper)
    eye = torch.eye(3)
    assert torch.equal(cs.A, torch.cat([eye, -eye]).expand(2, 6, 3))
    assert torch.equal(cs.b, torch.cat([lower, -upper]).expand(2, 6))
    assert torch.equal(cs.slack, torch.tensor([2.0] * 3 + [HARD] * 3).expand(2, 6))
    assert torch.equal(cs.active, torch.cat([present, present], 1))
    assert torch.equal(cs.absent, ~present)


def test_size_constraints_lower_soft_upper_hard():
    """Class 0 dominates (> 0.9 of the mass): its hard upper bound 0.5 is met; class 2's
    lower bound 0.4 needs a logit shift far above the cap 1 and stays violated."""
    scores = torch.zeros(1, 3, 8, 8)
    scores[0, 0] = 6.0
    scores[0, 2] = -8.0
    cs = size_constraints(torch.tensor([[True, True, True]]), torch.tensor([0.0, 0.0, 0.4]),
                          torch.tensor([0.5, 1.0, 1.0]), lower_slack=1.0)
    sol = solve_constrained_softmax(scores, cs)
    mass = sol.P.mean((2, 3))[0]
    assert mass[0] <= 0.5 + BINDING_RESIDUAL[1.0] and mass[0] >= 0.5 - BINDING_RESIDUAL[1.0]
    assert mass[2] < 0.4 and float(sol.multipliers[0, 2]) == pytest.approx(1.0, rel=1e-6)
    assert float(sol.multipliers[0, 3]) > 1.0           # the upper bound needs more than 1


def test_predicted_present():
    scores = torch.zeros(1, 3, 10, 10)
    scores[0, 0, :9] = 1.0                       # class 0 wins 90 pixels
    scores[0, 1, 9, :6] = 2.0                    # class 1 wins 6, class 2 wins 4
    scores[0, 2, 9, 6:] = 2.0
    present = predicted_present(scores, torch.tensor([0.5, 0.5, 0.5]), ratio=0.1)
    assert present.tolist() == [[True, True, False]]


def test_weakloss_loss_is_kl_with_gradient_q_minus_p():
    scores = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    P = torch.softmax(torch.randn(2, 4, 3, 3, dtype=torch.float64), 1)
    loss, grad = weakloss_loss_and_grad(scores, P)
    Q = torch.softmax(scores, 1)
    kl = (P * (P.log() - Q.log())).sum((1, 2, 3)) / 9
    torch.testing.assert_close(loss, kl.float(), rtol=1e-5, atol=1e-6)
    x = scores.clone().requires_grad_(True)
    (-(P * torch.log_softmax(x, 1)).sum() / 9).backward()  # KL(P||Q) up to a constant
    torch.testing.assert_close(grad, x.grad.float(), rtol=1e-5, atol=1e-7)


def test_bad_input_raises_net_error():
    cs = size_constraints(torch.ones(1, 3, dtype=torch.bool), 0.1, 0.9)
    with pytest.raises(NetError, match="do not fit"):
        solve_constrained_softmax(torch.zeros(1, 4, 2, 2), cs)
    with pytest.raises(NetError, match="scale"):
        solve_constrained_softmax(torch.zeros(1, 3, 2, 2), cs, scale=0.0)
    with pytest.raises(NetError, match="must be >= 0"):
        size_constraints(torch.ones(1, 3, dtype=torch.bool), 0.1, 0.9, lower_slack=-1.0)
    with pytest.raises(NetError, match="shape"):
        ConstraintSet(cs.A, cs.b[:, :2], cs.slack, cs.active, cs.absent)


def test_matches_ccnn_where_a_rare_class_lower_bound_binds():
    """WeakLoss defaults, N = 120, C = 9, three present classes, a rare one whose lower
    bound 0.05 binds below its cap 2 (answers from a rebuild of CCNN's solver that
    reproduces problems.h5 bit for bit; see PROVENANCE.md). CCNN's stopping point there
    is set by float32 rounding of its pixel sums, 5e-4 to 2e-3 away from the exact
    multiplier: only CCNN's own arithmetic order lands on it."""
    data = np.load(CLASS_FIXTURE)
    seeds = data["seeds"]
    assert len(seeds) >= 10
    for seed in seeds:
        f, present = data[f"s{seed}_f"], data[f"s{seed}_present"] > 0
        N, C = f.shape
        cs = weakloss_constraints(torch.from_numpy(present)[None])
        rows = cs.active[0]
        assert int(rows.sum()) == 4
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConstraintSolverWarning)
            sol = solve_constrained_softmax(torch.from_numpy(f)[None], cs)
        np.testing.assert_allclose(sol.P[0].numpy(), data[f"s{seed}_P"], rtol=0,
                                   atol=CCNN_ARITHMETIC_ATOL, err_msg=f"seed {seed}")
        assert int(sol.iterations[0]) == int(data[f"s{seed}_iterations"]), f"seed {seed}"
        lam = sol.multipliers[0][rows].double().numpy()
        lam_ccnn = data[f"s{seed}_dual_l"].astype(np.float64) / N
        lam_exact = data[f"s{seed}_lambda_ref64"]
        binding = (lam_exact > 0) & (lam_exact < cs.slack[0][rows].numpy())
        assert binding.sum() == 1 and cs.A[0][rows][binding][0, 1:].max() == 1
        np.testing.assert_allclose(lam, lam_ccnn, rtol=1e-6, atol=0, err_msg=f"seed {seed}")
        assert np.all(np.abs(lam - lam_exact) <= 2 * np.abs(lam_ccnn - lam_exact) + 1e-6)


@pytest.mark.parametrize("C, present", [(9, [0, 2, 3, 5, 7]), (19, list(range(0, 19, 2)))])
def test_row_and_column_sums_follow_eigens_packets(C, present):
    """With >= 4 classes kept CCNN's Eigen sums run packet-wise; a batch mixing the
    layouts gives each image the answer it gets alone (the per-row alignment and the
    compaction of kept classes are per image)."""
    rng = np.random.RandomState(C)
    f = torch.from_numpy(rng.randn(2, C, 7, 9).astype(np.float32))
    labels = torch.zeros(2, C, dtype=torch.bool)
    labels[0, present] = True
    labels[1, :3] = True
    cs = weakloss_constraints(labels)
    together = solve_quietly(f, cs, 1.0)
    for j in range(2):
        alone = solve_quietly(f[j:j + 1], ConstraintSet(cs.A[j:j + 1], cs.b[j:j + 1],
                              cs.slack[j:j + 1], cs.active[j:j + 1], cs.absent[j:j + 1]), 1.0)
        assert torch.equal(together.P[j], alone.P[0])
        assert torch.equal(together.iterations[j], alone.iterations[0])


def sequential_reference(a: np.ndarray) -> np.ndarray:
    """float32 sum over axis 0, one rounded addition after another."""
    total = np.array(a[0], np.float32)
    for term in a[1:]:
        total = (total + term).astype(np.float32)
    return total


@pytest.mark.parametrize("shape", [(3000, 1), (3000, 2), (9, 1), (500, 8), (130, 3, 1),
                                   (70, 2, 5), (1, 4), (2000,)])
def test_sequential_sum_adds_in_index_order(shape):
    """The pixel and class sums must round after every addition in index order
    (Eigen's scalar loop); numpy's pairwise summation of a contiguous axis would not."""
    rng = np.random.RandomState(len(shape) * 1000 + shape[0])
    a = (rng.rand(*shape) * 10.0 ** rng.randint(-4, 5, shape)).astype(np.float32)
    assert np.array_equal(_sequential_sum(a), sequential_reference(a))


def eigen_redux(x: np.ndarray, offset: int) -> np.float32:
    """Eigen 3.4's vectorised sum (Redux.h, LinearVectorizedTraversal, SSE) of the floats
    ``x`` stored from float ``offset`` of a 16-byte aligned buffer, written out scalar by
    scalar."""
    size = len(x)
    start = min((4 - offset % 4) % 4, size)
    size2 = (size - start) // 8 * 8
    size1 = (size - start) // 4 * 4
    if size1 == 0:
        res = x[0]
        for v in x[1:]:
            res = np.float32(res + v)
        return res
    p0 = x[start:start + 4].copy()
    if size1 > 4:
        p1 = x[start + 4:start + 8].copy()
        for index in range(start + 8, start + size2, 8):
            p0, p1 = p0 + x[index:index + 4], p1 + x[index + 4:index + 8]
        p0 = p0 + p1
        if size1 > size2:
            p0 = p0 + x[start + size2:start + size2 + 4]
    res = np.float32(np.float32(p0[0] + p0[2]) + np.float32(p0[1] + p0[3]))
    for v in list(x[:start]) + list(x[start + size1:]):
        res = np.float32(res + v)
    return res


@pytest.mark.parametrize("C", [2, 3, 4, 5, 8, 11, 12, 19, 21])
def test_per_pixel_class_sums_are_eigens_rowwise_sums(C):
    """The softmax denominators: per pixel i, the kept classes' exponentials summed as
    Eigen sums row i of CCNN's row-major N x pM matrix (row i at float i*pM)."""
    rng = np.random.RandomState(C)
    B, N = 3, 13
    f = torch.from_numpy(rng.randn(B, C, N).astype(np.float32) * 3)
    kept = torch.from_numpy(rng.rand(B, C) < 0.7)
    kept[0] = True
    f = f.masked_fill(~kept[:, :, None], REMOVED_LOGIT)
    A = torch.zeros(B, 1, C)
    dual = _Dual.build(f, A, torch.zeros(B, 1), torch.ones(B, 1, dtype=torch.bool), kept, 1.0)
    e, _ = dual.shifted_exp(np.zeros((B, 1), np.float32))
    sums = dual.row_sums(e).transpose(0, 2, 1).reshape(B, -1)[:, :N]
    for j in range(B):
        pm = int(kept[j].sum())
        compact = e[:pm, j].transpose(0, 2, 1).reshape(pm, -1)[:, :N]
        for i in range(N):
            assert sums[j, i] == eigen_redux(compact[:, i], i * pm), (j, i)


def test_no_constraint_rows_is_the_plain_softmax():
    """Without rows the dual never decreases: every trial step is refused, alpha halves
    from 1e5 until it is below 1e-8 (44 halvings), and P is the softmax of the kept
    classes."""
    scores = torch.randn(2, 4, 3, 5)
    absent = torch.tensor([[False, False, True, False], [False, True, False, False]])
    cs = ConstraintSet(torch.zeros(2, 0, 4), torch.zeros(2, 0), torch.zeros(2, 0),
                       torch.zeros(2, 0, dtype=torch.bool), absent)
    sol = solve_constrained_softmax(scores, cs)
    assert sol.iterations.tolist() == [45, 45] and bool(sol.converged.all())
    expected = torch.softmax(scores.masked_fill(absent[:, :, None, None], -float("inf")), 1)
    torch.testing.assert_close(sol.P, expected, rtol=0, atol=1e-6)
