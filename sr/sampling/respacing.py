"""Which training timesteps an ``N``-step sampler visits (docs/method.md#schedule): the released code's respacing or the scheduler's.

The released scripts respace with ``space_timesteps(T, [N])``: a float stride is *accumulated* and each partial sum
rounded (Python ``round``, half to even)::

    stride = (T - 1) / (N - 1)            (1 when N = 1)
    S_k    = round(stride + stride + ... + stride)     (k float64 additions; S_0 = 0),   k = 0 .. N - 1

diffusers' ``timestep_spacing="linspace"`` rounds ``linspace(0, T - 1, N)`` instead. The two agree except at exact
``.5`` ties, where the accumulated sum lands just below or above the tie: for T = 1000, 278 of the step counts
1..1000 differ in up to 19 timesteps, each by 1 (21 steps: official 499, linspace 500); 4, 20, 25, 50, 100, 200,
250, 500 and 1000 steps are identical.

``respacing`` settings: ``official`` passes ``official_respaced_timesteps`` to the scheduler as custom timesteps
(``set_timesteps(timesteps=...)``; DDPM then steps from each timestep to the next one in the list, with the
respaced ``alpha_bar`` of docs/method.md#schedule); ``scheduler`` keeps the scheduler's own ``timestep_spacing``.
"""

import inspect
from typing import Literal

import torch

__all__ = ["RESPACINGS", "Respacing", "check_respacing", "official_respaced_timesteps", "set_sampling_timesteps"]

Respacing = Literal["official", "scheduler"]
RESPACINGS: tuple[Respacing, ...] = ("official", "scheduler")


def official_respaced_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The released code's ``sorted(space_timesteps(num_train_timesteps, [num_steps]))`` (module doc), in sampling
    order (descending, like ``scheduler.timesteps``)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"number of sampling steps must be in 1..{num_train_timesteps}, got {num_steps}")
    stride = (num_train_timesteps - 1) / (num_steps - 1) if num_steps > 1 else 1.0
    partial_sum, timesteps = 0.0, set()
    for _ in range(num_steps):
        timesteps.add(round(partial_sum))
        partial_sum += stride
    return sorted(timesteps, reverse=True)


def _accepts_custom_timesteps(scheduler) -> bool:
    return "timesteps" in inspect.signature(scheduler.set_timesteps).parameters


def check_respacing(scheduler, respacing: str) -> None:
    """Raise a one-line ``ValueError`` when ``respacing`` is unknown or ``scheduler`` cannot take custom timesteps."""
    if respacing not in RESPACINGS:
        raise ValueError(f"unknown respacing {respacing!r}; expected one of {', '.join(RESPACINGS)}")
    if respacing == "official" and not _accepts_custom_timesteps(scheduler):
        raise ValueError(
            f"respacing=official needs a scheduler that takes custom timesteps (DDPM, DPM-Solver); "
            f"{type(scheduler).__name__} does not: use respacing=scheduler"
        )


def set_sampling_timesteps(scheduler, num_steps: int, respacing: Respacing, device: torch.device | str | None = None):
    """``scheduler.set_timesteps`` for ``num_steps`` steps with the ``official`` or the ``scheduler``'s own spacing."""
    check_respacing(scheduler, respacing)
    if respacing == "official":
        timesteps = official_respaced_timesteps(num_steps, scheduler.config.num_train_timesteps)
        scheduler.set_timesteps(timesteps=timesteps, device=device)
    else:
        scheduler.set_timesteps(num_steps, device=device)
