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


def lr_stages(epoch: int, stages: int = 8, epochs: int | None = None) -> float:
    """The learning-rate factor at ``epoch`` (counted from 0) of Burda et al.'s (2016) stages:
    stage i = 0, 1, ..., ``stages`` - 1 lasts 3^i epochs at a factor 10^(-i/7) (with Adam's lr
    1e-3: 1e-3 * 10^(-i/7)); 8 stages are the paper's 3280 epochs. After the last stage the
    factor stays at the last stage's.

    ``epochs``: null keeps the paper's stage lengths, so a shorter run truncates the schedule
    (it ends in whatever stage it reached); a number compresses (or stretches) the ``stages``
    stages, in the same proportions 1 : 3 : 9 : ..., into that many epochs, so a run of that
    length passes through every stage down to 10^(-(stages-1)/7). Stages shorter than an
    epoch are skipped, as the factor is read once per epoch. With ``stages=8`` and
    ``epochs=3280`` both are the paper's schedule.
    """
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    if epochs is not None and epochs < 1:  # trainer.max_epochs=-1: no length to fill
        raise ValueError(
            f"epochs={epochs}: the stages need a length to fill (trainer.max_epochs >= 1), "
            "or null for the paper's stage lengths"
        )
    total = (3**stages - 1) // 2  # 1 + 3 + ... + 3^(stages-1)
    scale = 1.0 if epochs is None else epochs / total
    stage, end = 0, scale  # the end of stage 0
    while stage < stages - 1 and epoch >= end - 1e-9:
        stage += 1
        end += scale * 3**stage
    return 10.0 ** (-stage / 7)
