"""Progress bars and Caffe-style log lines shared by the long-running commands."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def setup_logging(level: int = logging.INFO) -> None:
    logger = logging.getLogger("fcnwild")
    # Where the program already configured logging (torchrun's workers, pytest), the
    # records reach its handlers; a second handler here would print every line twice.
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)


@contextlib.contextmanager
def iteration_progress(solver, disable: bool = False, desc: str = "train") -> Iterator[None]:
    """A bar over the solver's iterations showing the smoothed loss."""
    total = solver.param.max_iter
    # Log lines go above the bar through setup_logging's handler; redirecting the root
    # logger instead would add a second handler that prints every line again.
    logger = logging.getLogger("fcnwild")
    redirect = logging_redirect_tqdm([logger]) if logger.handlers and not disable else \
        contextlib.nullcontext()
    with redirect, tqdm(total=total, initial=solver.iter, desc=desc, unit="it",
                        disable=disable, dynamic_ncols=True) as bar:
        def advance(s, loss: float) -> None:
            bar.n = s.iter
            bar.set_postfix(loss_terms(s), refresh=False)
            bar.update(0)
        solver.hooks.append(advance)
        try:
            yield
        finally:
            solver.hooks.remove(advance)


def loss_terms(solver) -> dict[str, str]:
    """What a bar shows of a solver: the smoothed loss, and where the solver trains
    several objectives (the adversarial one), each loss top of its last step on its own,
    since their weighted sum hides which one moves."""
    tops = {name: f"{value:.4g}" for name, value in getattr(solver, "step_losses", {}).items()
            if name not in ("classifier", "representation")}
    if not tops:
        return {"loss": f"{solver.smoothed_loss:.4g}"}
    return {"objective": f"{solver.smoothed_loss:.4g}", **tops}


@contextlib.contextmanager
def stage_progress(disable: bool = False) -> Iterator:
    """A callback ``(stage, iteration, total[, terms])`` drawing one bar per training
    stage, with ``terms`` (name -> value: each loss and accuracy top) beside it."""
    bars: dict[str, tqdm] = {}

    def advance(stage: str, iteration: int, total: int,
                terms: dict[str, float] | None = None) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="it", disable=disable,
                                     dynamic_ncols=True, leave=True)
        bar.n = iteration
        if terms:
            bar.set_postfix({name: f"{value:.4g}" for name, value in terms.items()},
                            refresh=False)
        bar.refresh()

    try:
        yield advance
    finally:
        for bar in bars.values():
            bar.close()
