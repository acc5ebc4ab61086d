"""CCNN's constrained latent distribution, batched: the numerical core of the
constrained MIL loss (Pathak, Krähenbühl, Darrell, ICCV 2015; used for the
category-specific adaptation of Hoffman et al. 2016, Sec. 3.3).

For every image (N pixels, C classes, scores ``f``) CCNN finds the latent
distribution ``P`` closest to ``softmax(s*f)`` that satisfies linear constraints
on the image-averaged class distribution::

    (1/N) sum_i a_k . p_i >= b_k          (an upper bound u on class c: a = -e_c, b = -u)

Classes under a zero constraint get ``p_ic = 0``. The solution is

    P_ic = softmax_c( s * (f_ic + sum_k lambda_k a_kc) ),   0 <= lambda_k <= slack_k

with the multipliers ``lambda`` minimising the dual. ``slack`` is a cap on the
multiplier (an L1 penalty weight on the violation), not a relaxation of ``b``;
1e10 (``HARD``) never binds.

This is a port of CCNN's ``ConstraintSoftmax::computeLog`` and ``pgd``
(pathak22/ccnn ``lib/constraintloss/constraintsoftmax.cpp``,
``lib/optimization/fista.cpp``), including what decides where it stops:
projected gradient descent on ``N*D(l)`` in ``l = N*lambda`` from ``l = 0`` with
step ``alpha = 1e5``; a step is taken only if the float32 dual objective strictly
decreases (then ``alpha *= 1.1``, else ``alpha *= 0.5``); the loop runs while
``k <= 3000`` and ``alpha > 1e-8``, and has converged iff ``k < 3000``. The stop
comes from float32 resolution: near the optimum the gradient is a small difference of
float32 pixel sums and the objective a float32 sum of N log-sum-exps, so the rounding
of those sums decides which trial step is accepted last. The solve therefore does
CCNN's float32 arithmetic in CCNN's order (that of its Eigen 3.4 SSE expressions:
class-by-class and pixel-by-pixel sums, packet-wise where Eigen vectorises them) with
exp and log correctly rounded, as glibc's nearly always are; it then lands where CCNN
does, bit for bit except where glibc's last bit differs. All images of a batch run in
lockstep, each with
its own step size; an image whose loop has ended is frozen and leaves the working
set, so batching changes no bit of any image's answer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fcnwild.base.errors import NetError

HARD = 1e10                 # CCNN's default slack: the multiplier cap never binds
REMOVED_LOGIT = -1e10       # what computeLog writes into zero-constrained classes
MAX_ITER = 3000
ALPHA_START, ALPHA_MIN = 1e5, 1e-8
ALPHA_GROW, ALPHA_SHRINK = 1.1, 0.5
EXP_ZERO = -105.0           # exp(-105) = 2.5e-46 rounds to 0 in float32 (below 2**-150)
# Default multiplier cap of a lower bound: CCNN WeakLoss's fg_slack, i.e. a class's
# logit may be raised by at most 2 to meet its lower bound.
DEFAULT_LOWER_SLACK = 2.0


class ConstraintSolverWarning(RuntimeWarning):
    """Some images hit the iteration cap: their constraints are probably infeasible."""


@dataclass(frozen=True)
class ConstraintSet:
    """Per-image constraints, batched; row k of image j reads
    ``(1/N) sum_i A[j,k] . p_i >= b[j,k]`` with multiplier cap ``slack[j,k]``.

    Images with fewer rows leave ``active[j,k] = False`` on the rest (their
    contents are ignored). ``absent[j,c]`` is CCNN's zero constraint: class c is
    removed before the solve, rows lose their entries on it, and ``P[j,c] = 0``.
    """
    A: Tensor        # (B, K, C) float32
    b: Tensor        # (B, K) float32
    slack: Tensor    # (B, K) float32, >= 0
    active: Tensor   # (B, K) bool
    absent: Tensor   # (B, C) bool

    def __post_init__(self) -> None:
        if self.A.dim() != 3:
            raise NetError("constraint matrix A must be (B, K, C), "
                           f"got shape {tuple(self.A.shape)}")
        B, K, C = self.A.shape
        for name, want in (("b", (B, K)), ("slack", (B, K)), ("active", (B, K)),
                           ("absent", (B, C))):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise NetError(f"constraint {name} must have shape {want} to match A "
                               f"{tuple(self.A.shape)}, got {got}")
        if self.active.dtype != torch.bool or self.absent.dtype != torch.bool:
            raise NetError("constraint masks 'active' and 'absent' must be bool tensors")
        if bool((self.slack[self.active] < 0).any()):
            raise NetError("constraint slack (a multiplier cap) must be >= 0")

    @property
    def num_classes(self) -> int:
        return self.A.shape[2]

    def to(self, device: torch.device | str) -> ConstraintSet:
        return ConstraintSet(self.A.to(device, torch.float32), self.b.to(device, torch.float32),
                             self.slack.to(device, torch.float32), self.active.to(device),
                             self.absent.to(device))

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Tensor, Tensor, Tensor]],
                  absent: Tensor) -> ConstraintSet:
        """Pad per-image ``(A_j (K_j, C), b_j (K_j,), slack_j (K_j,))`` into one batch."""
        B, C = absent.shape
        if len(rows) != B:
            raise NetError(f"{len(rows)} per-image constraint sets for a batch of {B} images")
        K = max((int(A.shape[0]) for A, _, _ in rows), default=0)
        A = torch.zeros(B, K, C)
        b, slack = torch.zeros(B, K), torch.zeros(B, K)
        active = torch.zeros(B, K, dtype=torch.bool)
        for j, (Aj, bj, sj) in enumerate(rows):
            k = Aj.shape[0]
            A[j, :k], b[j, :k], slack[j, :k], active[j, :k] = \
                torch.as_tensor(Aj), torch.as_tensor(bj), torch.as_tensor(sj), True
        return cls(A, b, slack, active, torch.as_tensor(absent, dtype=torch.bool))


@dataclass(frozen=True)
class ConstraintSolution:
    """What ``solve_constrained_softmax`` returns (all without grad)."""
    P: Tensor            # latent distribution, in the layout of the scores
    multipliers: Tensor  # (B, K) lambda in logit units; 0 on inactive rows
    values: Tensor       # (B, K) (1/N) sum_i a_k . P_i; 0 on inactive rows
    converged: Tensor    # (B,) bool; False = hit the 3000-iteration cap
    iterations: Tensor   # (B,) CCNN's loop counter (trial steps + 1); 0 = no solve ran


def solve_constrained_softmax(scores: Tensor, constraints: ConstraintSet,
                              scale: float = 1.0) -> ConstraintSolution:
    """CCNN's ``ConstraintSoftmax(scale).compute(f)`` for a batch of images.

    ``scores``: (B, C, H, W) (a Caffe blob) or (B, N, C) (CCNN's pixel-by-class
    layout); computed in float32 on the scores' device. ``scale`` is CCNN's
    hardness ``s``. An image with at most one class left after the zero
    constraints is not optimised and its linear constraints are ignored, as in
    CCNN (P is one-hot on the class left, uniform if none is). Non-convergence is
    reported in ``converged`` and by a ``ConstraintSolverWarning``.
    """
    if not (scale > 0 and scale < float("inf")):
        raise NetError("constraint softmax scale (hardness) must be a positive number, "
                       f"got {scale}")
    with torch.no_grad():
        f, restore = _to_class_by_pixel(scores)
        B, C, N = f.shape
        if constraints.A.shape[0] != B or constraints.num_classes != C:
            raise NetError(f"constraints for {constraints.A.shape[0]} images x "
                           f"{constraints.num_classes} classes do not fit scores of shape "
                           f"{tuple(scores.shape)} ({B} images x {C} classes)")
        # CCNN's answer is fixed by the order of its CPU float32 sums, which the solve
        # reproduces with numpy; it runs on the CPU whatever the scores' device.
        device = f.device
        f = f.cpu()
        cs = constraints.to("cpu")
        s = float(torch.tensor(scale, dtype=torch.float32))   # CCNN keeps scale_ as float
        f = f.masked_fill(cs.absent[:, :, None], REMOVED_LOGIT)
        kept = cs.active[:, :, None] & ~cs.absent[:, None, :]
        # CCNN's internal units: rows a/N, multipliers l = N*lambda boxed in [0, slack*N].
        A = torch.where(kept, cs.A, 0.0) / N
        b = torch.where(cs.active, cs.b, 0.0)
        cap = torch.where(cs.active, cs.slack * N, 0.0)
        solve = (~cs.absent).sum(1) > 1

        l, iterations = _projected_gradient_descent(
            _Dual.build(f, A, b, cs.active, ~cs.absent, s), cap, solve)
        converged = ~solve | (iterations < MAX_ITER)

        # compute(f): the softmax over all C columns, removed ones at exp(-1e10) = 0
        every = _Dual.build(f, A, b, cs.active, torch.ones_like(cs.absent), s)
        e, _ = every.shifted_exp(l.numpy())
        P = (e[:C] / every.row_sums(e)).transpose(1, 0, 3, 2).reshape(B, C, -1)[:, :, :N]
        P = torch.from_numpy(np.ascontiguousarray(P))
        colsum = P.double().sum(2)
        values = torch.where(cs.active, (cs.A.double() @ colsum[:, :, None])[..., 0] / N, 0.0)
        solution = ConstraintSolution(restore(P.to(device)), (l / N).to(device),
                                      values.float().to(device), converged.to(device),
                                      iterations.to(device))

    failed = int((~converged).sum())
    if failed:
        warnings.warn(f"constrained softmax: {failed} of {B} image(s) did not converge in "
                      f"{MAX_ITER} projected gradient steps; their constraints are probably "
                      "infeasible (hard bounds no distribution can meet). Returning the last "
                      "iterate, as CCNN does.", ConstraintSolverWarning, stacklevel=2)
    return solution


def _to_class_by_pixel(scores: Tensor):
    """(B, C, N) float32 contiguous, and the map back to the caller's layout."""
    if scores.dim() == 4:
        shape = scores.shape
        return (scores.detach().reshape(shape[0], shape[1], -1).float().contiguous(),
                lambda P: P.reshape(shape))
    if scores.dim() == 3:
        return (scores.detach().transpose(1, 2).float().contiguous(),
                lambda P: P.transpose(1, 2).contiguous())
    raise NetError(f"scores must be (B, C, H, W) or (B, N, C), got shape {tuple(scores.shape)}")


def _sequential_sum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in index order, rounding to float32 after every addition: the
    loop of Eigen's scalar reductions. numpy's add.reduce over the first axis of a
    C-contiguous 2-D float32 array adds it row after row, each row as one vector add
    (its pairwise summation is only for a reduced axis that is the innermost loop,
    which a second column rules out); torch's sums are blocked or accumulate in double."""
    rows = np.ascontiguousarray(a).reshape(a.shape[0], int(np.prod(a.shape[1:])))
    width = rows.shape[1]
    if width < 2:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 2 - width), rows.dtype)], 1)
    return np.add.reduce(rows, axis=0)[:width].reshape(a.shape[1:])


def _packet_sum(x: np.ndarray) -> np.ndarray:
    """Eigen's vectorised sum (SSE, 4 float lanes) of a contiguous vector, per row of
    ``x`` (B, n): two packet accumulators stepping by 8, added lane-wise, one more packet
    if one fits, the lanes folded as (0+2)+(1+3), then the remaining elements in order."""
    B, n = x.shape
    n4, n8 = n // 4 * 4, n // 8 * 8
    if n4 == 0:
        return _sequential_sum(x.T)
    if n4 == 4:
        packet = x[:, :4]
    else:
        lanes = _sequential_sum(x[:, :n8].reshape(B, n8 // 8, 8).transpose(1, 0, 2))
        packet = lanes[:, :4] + lanes[:, 4:]
        if n4 > n8:
            packet = packet + x[:, n8:n4]
    total = (packet[:, 0] + packet[:, 2]) + (packet[:, 1] + packet[:, 3])
    for j in range(n4, n):
        total = total + x[:, j]
    return total


def _eigen_order(count: Tensor, start: Tensor, pad: int) -> tuple[np.ndarray, int]:
    """Where Eigen's vectorised sum of ``count[j]`` contiguous floats, the first at float
    offset ``start[j, r]``, takes each one: slots (S, B, R) of positions (``pad`` where
    a slot is empty) for ``_eigen_tree``, and the number of 8-lane blocks. The sum
    runs packet-wise from the first 16-byte aligned float (two accumulators stepping
    by 8, then one more packet if one fits), folds the lanes, then adds the floats
    before that point (at most 3) and after the last packet (at most 3) in order; with
    no whole aligned packet it is a plain loop, which the same slots reproduce."""
    count = count[:, None]
    head = ((4 - start % 4) % 4).minimum(count)
    body = (count - head) // 4 * 4
    body8 = (count - head) // 8 * 8
    blocks = int(body8.max()) // 8 if body8.numel() else 0
    lane = torch.arange(8 * blocks)[:, None, None]
    last = torch.arange(4)[:, None, None]
    t = torch.arange(3)[:, None, None]
    slots = [torch.where(lane < body8, head + lane, pad),
             torch.where(body > body8, head + body8 + last, pad),
             torch.where(t < head, t, pad),
             torch.where(head + body + t < count, head + body + t, pad)]
    return torch.cat(slots).numpy(), blocks


def _eigen_tree(g: np.ndarray, blocks: int) -> np.ndarray:
    """The sum over axis 0 of slots laid out by ``_eigen_order`` (empty slots hold an
    additive identity), in Eigen's order."""
    if blocks:
        acc = g[0:8]
        for k in range(1, blocks):
            acc = acc + g[8 * k:8 * k + 8]
        packet = (acc[:4] + acc[4:]) + g[8 * blocks:8 * blocks + 4]
    else:
        packet = g[:4]
    total = (packet[0] + packet[2]) + (packet[1] + packet[3])
    for slot in range(8 * blocks + 4, 8 * blocks + 10):
        total = total + g[slot]
    return total


def _log(x: np.ndarray) -> np.ndarray:
    """float32 log rounded from float64, as glibc's logf nearly always is."""
    return np.log(x.astype(np.float64)).astype(np.float32)


class _Dual:
    """CCNN's dual (``fun``) for a batch, with what fixes the order of its float32 sums
    built once per solve (it depends only on the kept classes, the active rows and N).

    Each image's kept classes come first, in class order, then padding classes at
    REMOVED_LOGIT up to P; the exponentials get one more class, always 0, for the
    sums' empty slots. Pixels are padded to 4Q and split by i mod 4, pixel 4q + r at
    [r, q]: Eigen's per-pixel class sum depends on the pixel's row offset i*pM modulo
    4, so each image and phase r sums its class rows in one order. Removed classes
    only ever add exact zeros in CCNN's sums, so dropping them changes no bit. The
    many small steps run on numpy arrays (cheaper calls than torch ops), the big
    elementwise ones in torch, in buffers kept across iterations."""

    def __init__(self, f: np.ndarray, A: np.ndarray, b: np.ndarray, s: float, n: int,
                 row_order: np.ndarray, row_blocks: int, packed: np.ndarray, single: bool,
                 dot_order: np.ndarray, dot_blocks: int):
        self.f = f                    # (P, B, 4, Q) scores
        self.A = A                    # (K, P + 1, B) constraint rows (over N), 0 on padding
        self.b = b                    # (B, K)
        self.s, self.n = s, n         # hardness, pixels N
        self.row_order = row_order    # (S, B, 4) class slots of a pixel's sum, by phase
        self.row_blocks = row_blocks
        self.packed = packed          # (P + 1, B) classes whose pixel sum goes 4 at a time
        self.single = single          # some kept class's pixel sum is a plain loop
        self.dot_order = dot_order    # (B, S) active rows in the slots of l.b (K = empty)
        self.dot_blocks = dot_blocks
        P, B, _, Q = f.shape
        S = row_order.shape[0]
        self.rows = ((row_order * B + np.arange(B)[:, None]) * 4 + np.arange(4)).reshape(-1)
        self.z = torch.empty(P, B, 4, Q)
        self.wide = torch.empty(P, B, 4, Q, dtype=torch.float64)
        self.e = np.zeros((P + 1, B, 4, Q), np.float32)
        self.slots = np.empty((S, B, 4, Q), np.float32)
        self.pixel_major = np.empty((Q, 4, P + 1, B), np.float32)

    @classmethod
    def build(cls, f: Tensor, A: Tensor, b: Tensor, active: Tensor, kept: Tensor,
              s: float) -> _Dual:
        B, C, N = f.shape
        K = b.shape[1]
        Q = -(-N // 4)
        count = kept.sum(1)
        P = int(count.max()) if B else 0
        classes = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)[:, :P]
        real = torch.arange(P) < count[:, None]
        fc = torch.full((P, B, 4 * Q), REMOVED_LOGIT)
        fc[:, :, :N] = torch.where(real[:, :, None],
                                   f.gather(1, classes[:, :, None].expand(B, P, N)),
                                   REMOVED_LOGIT).transpose(0, 1)
        fc = fc.view(P, B, Q, 4).transpose(2, 3).contiguous()
        Ac = torch.zeros(K, P + 1, B)
        Ac[:, :P] = torch.where(real[:, None, :],
                                A.gather(2, classes[:, None, :].expand(B, K, P)),
                                0.0).permute(1, 2, 0)
        row_order, row_blocks = _eigen_order(count, torch.arange(4) * count[:, None], P)
        position = torch.arange(P + 1)[:, None]
        packed = position < (count // 4 * 4)[None, :]
        rows = torch.cat([torch.argsort((~active).to(torch.int8), dim=1, stable=True),
                          torch.full((B, 1), K)], 1)
        dot, dot_blocks = _eigen_order(active.sum(1), torch.zeros(B, 1, dtype=torch.int64), K)
        return cls(fc.numpy(), Ac.numpy(), b.numpy(), s, N, row_order, row_blocks,
                   packed.numpy(), bool((~packed & (position < count)).any()),
                   rows.gather(1, torch.from_numpy(dot[..., 0].T)).numpy(), dot_blocks)

    def take(self, idx: np.ndarray) -> _Dual:
        return _Dual(self.f[:, idx], self.A[:, :, idx], self.b[idx], self.s, self.n,
                     self.row_order[:, idx], self.row_blocks, self.packed[:, idx],
                     self.single, self.dot_order[idx], self.dot_blocks)

    def shifted_exp(self, l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """exp(z - max_c z) for CCNN's logits z = s*(f + l^T A), (P + 1, B, 4, Q), and
        the max, (B, 4, Q). l^T A is Eigen's gemv: the float32 products added row by row.
        exp is float32 rounded from float64, as glibc's expf nearly always is (torch's
        float32 exp differs from it in about 1% of the last bits; torch's float64 exp is
        faster than numpy's). The result is a buffer the next call overwrites."""
        P = self.f.shape[0]
        bias = torch.from_numpy(_sequential_sum(l.T[:, None, :] * self.A)[:P])
        z = torch.add(torch.from_numpy(self.f), bias[:, :, None, None], out=self.z)
        z.mul_(self.s)
        mx = z.amax(0)
        # below -104 exp rounds to 0 in float32; the clamp keeps the removed classes'
        # -1e10 off exp's slow underflow path
        z.sub_(mx).clamp_(min=EXP_ZERO)
        torch.exp(self.wide.copy_(z), out=torch.from_numpy(self.e[:P]))
        return self.e, mx.numpy()

    def row_sums(self, e: np.ndarray) -> np.ndarray:
        """Per pixel, the sum over the kept classes, (B, 4, Q): Eigen's ``rowwise().sum()``
        of CCNN's row-major N x pM matrix of kept classes, row i at float i*pM."""
        # mode='clip' (the rows are in range) spares take's buffered bounds check
        np.take(e.reshape(-1, e.shape[-1]), self.rows, axis=0,
                out=self.slots.reshape(len(self.rows), -1), mode="clip")
        return _eigen_tree(self.slots, self.row_blocks)

    def value_and_gradient(self, l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CCNN's ``fun``: dual objective N*D(l) (float32) and its gradient
        A sum_i p_i - b, with the roundings and the summation order of CCNN's Eigen
        expressions. Near the optimum the gradient is a small difference of pixel sums,
        and the steps it proposes decide which trial the float32 objective accepts
        last, so every order matters."""
        N = self.n
        P1, B, _, Q = self.e.shape
        e, mx = self.shifted_exp(l)
        lse = mx + _log(_sequential_sum(e))
        total = _packet_sum(lse.transpose(0, 2, 1).reshape(B, 4 * Q)[:, :N])
        products = np.concatenate([l * self.b, np.full((B, 1), -0.0, np.float32)], 1)
        lb = _eigen_tree(np.take_along_axis(products, self.dot_order, 1).T, self.dot_blocks)
        # CCNN: 1.0/scale_ * sum - l.dot(b) is evaluated in double, then returned as float.
        objective = ((1.0 / self.s) * total.astype(np.float64)
                     - lb.astype(np.float64)).astype(np.float32)
        np.copyto(self.pixel_major, (e / self.row_sums(e)).transpose(3, 2, 0, 1))
        colsum = self.column_sums(self.pixel_major.reshape(4 * Q, P1, B)[:N])
        gradient = _sequential_sum(self.A.transpose(1, 0, 2) * colsum[:, None]).T - self.b
        return objective, gradient

    def column_sums(self, P: np.ndarray) -> np.ndarray:
        """Per class, the sum over pixels of ``P`` (N, P + 1, B) as Eigen's
        ``colwise().sum()`` of CCNN's row-major N x pM matrix adds it: the first
        4*(pM//4) kept classes (``packed``) a packet of 4 at a time (pixel 0, then
        ((1+2)+(3+4)), ((5+6)+(7+8)), ..., then the rest in order), the others pixel by
        pixel in order."""
        N = P.shape[0]
        sums = _sequential_sum(P) if self.single else np.zeros(P.shape[1:], np.float32)
        if self.packed.any():
            size4 = (N - 1) & ~3
            q = P[1:1 + size4].reshape(size4 // 4, 4, *P.shape[1:])
            groups = (q[:, 0] + q[:, 1]) + (q[:, 2] + q[:, 3])
            sums = np.where(self.packed, _sequential_sum(
                np.concatenate([P[:1], groups, P[1 + size4:]])), sums)
        return sums


def _projected_gradient_descent(dual: _Dual, cap: Tensor,
                                solve: Tensor) -> tuple[Tensor, Tensor]:
    """CCNN's ``pgd`` for every image with ``solve`` set, in lockstep.

    Returns the multipliers l (B, K) in CCNN's units and the loop counter k
    (0 where no solve ran)."""
    B, K = dual.b.shape
    cap, solve = cap.numpy(), solve.numpy()
    l = np.zeros((B, K), np.float32)
    g = np.zeros((B, K), np.float32)
    prev = np.zeros(B, np.float32)
    # Step sizes are float32 in CCNN; kept as float64 holding float32 values so that
    # `alpha *= 1.1` rounds once, like the C++ float*double product.
    alpha = np.full(B, ALPHA_START)
    k = solve.astype(np.int64)

    idx = np.flatnonzero(solve)
    if idx.size:
        prev[idx], g[idx] = dual.take(idx).value_and_gradient(l[idx])
    work_size = -1
    while True:
        idx = np.flatnonzero(solve & (k <= MAX_ITER) & (alpha > ALPHA_MIN))
        if idx.size == 0:
            break
        if idx.size != work_size:          # images only ever leave: re-gather when one does
            work_size = idx.size
            work, capw = dual.take(idx), cap[idx]
        step = alpha[idx].astype(np.float32)[:, None] * g[idx]
        x = np.minimum(np.maximum(l[idx] - step, np.float32(0.0)), capw)
        fx, gx = work.value_and_gradient(x)
        accept = fx < prev[idx]
        taken = idx[accept]
        l[taken], g[taken], prev[taken] = x[accept], gx[accept], fx[accept]
        alpha[idx] = np.where(accept, (alpha[idx] * ALPHA_GROW).astype(np.float32),
                              alpha[idx] * ALPHA_SHRINK)
        k[idx] += 1
    return torch.from_numpy(l), torch.from_numpy(k)


def weakloss_constraints(labels: Tensor, *, fg_lower: float = 0.05, fg_slack: float = 2.0,
                         bg_lower: float = 0.3, bg_slack: float = HARD,
                         bg_upper: float = 0.7) -> ConstraintSet:
    """The constraint set CCNN's ``WeakLoss`` layer builds from image-level labels.

    ``labels``: (B, C) or (B, C, 1, 1); class c is present where label > 0.5, class
    0 is background. Per image: absent classes are zero-constrained; each present
    class l > 0 gets ``p_l >= fg_lower`` (cap ``fg_slack``); background gets
    ``p_0 >= bg_lower`` (cap ``bg_slack``) and, if any foreground class is present,
    the hard upper bound ``p_0 <= bg_upper``. Defaults are WeakLoss's; its
    ``apply_size_constraint`` variant is ``fg_lower=0.1, fg_slack=HARD,
    bg_lower=0.2, bg_upper=0.7`` with scale 1000.

    Rows sit in fixed slots: 0..C-2 for classes 1..C-1, C-1 the background lower
    bound, C the background upper bound (CCNN's call order among active rows).
    """
    present = _present(labels)
    B, C = present.shape
    device = present.device
    eye = torch.eye(C, device=device)
    A = torch.cat([eye[1:], eye[:1], -eye[:1]]).expand(B, C + 1, C)
    b = torch.tensor([fg_lower] * (C - 1) + [bg_lower, -bg_upper], device=device)
    slack = torch.tensor([fg_slack] * (C - 1) + [bg_slack, HARD], device=device)
    fg = present[:, 1:]
    active = torch.cat([fg, torch.ones(B, 1, dtype=torch.bool, device=device),
                        fg.any(1, keepdim=True)], 1)
    return ConstraintSet(A.contiguous(), b.expand(B, C + 1).contiguous(),
                         slack.expand(B, C + 1).contiguous(), active, ~present)


def size_constraints(present: Tensor, lower: Tensor | float, upper: Tensor | float, *,
                     lower_slack: Tensor | float = DEFAULT_LOWER_SLACK,
                     upper_slack: Tensor | float = HARD,
                     suppress_absent: bool = True) -> ConstraintSet:
    """FCNs in the Wild's category constraints (Hoffman et al. 2016, Sec. 3.3).

    For every class c present in an image: ``lower_c <= (1/N) sum_i p_ic <= upper_c``,
    the lower bound soft (multiplier cap ``lower_slack``, default 2.0 = CCNN
    WeakLoss's fg_slack), the upper bound hard by default; absent classes are
    zero-constrained unless ``suppress_absent`` is False. ``present`` is (B, C) bool; ``lower``, ``upper`` and the
    slacks broadcast to (B, C) (per-class source statistics, e.g. delta and gamma).
    Slot c holds class c's lower bound, slot C + c its upper bound.
    """
    present = _present(present)
    B, C = present.shape

    def per_image_class(value: Tensor | float) -> Tensor:
        return torch.as_tensor(value, dtype=torch.float32, device=present.device).expand(B, C)

    eye = torch.eye(C, device=present.device)
    A = torch.cat([eye, -eye]).expand(B, 2 * C, C).contiguous()
    b = torch.cat([per_image_class(lower), -per_image_class(upper)], 1)
    slack = torch.cat([per_image_class(lower_slack), per_image_class(upper_slack)], 1)
    zeroed = ~present if suppress_absent else torch.zeros_like(present)
    return ConstraintSet(A, b, slack, torch.cat([present, present], 1), zeroed)


def predicted_present(scores: Tensor, class_fraction: Tensor, ratio: float = 0.1) -> Tensor:
    """Image-level labels predicted for a target image (Hoffman et al. 2016, Sec. 3.3):
    class c is present when the fraction of pixels whose argmax is c exceeds
    ``ratio * class_fraction[c]`` (alpha_c, the source-domain average).

    ``scores``: (B, C, H, W); returns (B, C) bool."""
    B, C = scores.shape[:2]
    winners = scores.detach().reshape(B, C, -1).argmax(1)
    fraction = torch.nn.functional.one_hot(winners, C).float().mean(1)
    return fraction > ratio * torch.as_tensor(class_fraction, dtype=torch.float32,
                                              device=fraction.device)


def weakloss_loss_and_grad(scores: Tensor, P: Tensor) -> tuple[Tensor, Tensor]:
    """CCNN WeakLoss's loss and gradient per image, for a constant target ``P``.

    With Q = softmax(scores) over classes (plain, whatever the hardness) and N
    pixels: ``loss_j = (sum P log max(P, 1e-10) - sum P log max(Q, 1e-10)) / N``,
    i.e. KL(P || Q) / N, and ``grad = (Q - P) / N``. WeakLoss sums the losses over
    the batch and scales grad by the top diff. ``scores`` and ``P`` are (B, C, H, W).
    """
    with torch.no_grad():
        f = scores.detach().float()
        N = f[0, 0].numel()
        Q = torch.softmax(f, dim=1)
        P = P.float()
        dims = tuple(range(1, f.dim()))
        loss = ((P * torch.log(P.clamp(min=1e-10))).sum(dims)
                - (P * torch.log(Q.clamp(min=1e-10))).sum(dims)) / N
        return loss, (Q - P) / N


def _present(labels: Tensor) -> Tensor:
    labels = torch.as_tensor(labels)
    present = labels.reshape(labels.shape[0], -1)
    return present if present.dtype == torch.bool else present > 0.5
