"""Weight of the KL term over training: constant, linear warm-up, cyclical annealing."""

from __future__ import annotations

KL_SCHEDULES = ("constant", "linear", "cyclical")


def kl_weight(
    step: int,
    beta: float = 1.0,
    schedule: str = "constant",
    warmup_steps: int = 10000,
    total_steps: int = 1,
    cycles: int = 4,
    ratio: float = 0.5,
) -> float:
    """The KL weight at optimizer step ``step`` (counted from 0).

    constant: ``beta`` throughout.
    linear: rises from 0 to ``beta`` over ``warmup_steps`` steps, then stays at ``beta``.
    cyclical (Fu et al. 2019): ``total_steps`` split into ``cycles`` equal cycles; in each,
      the weight rises linearly from 0 to ``beta`` over the first ``ratio`` of the cycle and
      stays at ``beta`` for the rest.
    """
    if schedule == "constant":
        return beta
    if schedule == "linear":
        return beta * min(1.0, step / max(1, warmup_steps))
    if schedule == "cyclical":
        cycle_length = max(1, total_steps) / cycles
        position = (step % cycle_length) / cycle_length
        return beta * min(1.0, position / ratio)
    raise ValueError(f"kl_schedule must be one of {KL_SCHEDULES}, got {schedule!r}")
