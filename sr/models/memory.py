"""Training-memory levers of a ``StableSR`` model, each one switch (``module.memory.*``), applied in one place
(:func:`apply_memory_levers`, called by the training modules when they set up the model):

- ``gradient_checkpointing_unet``: diffusers' ``enable_gradient_checkpointing`` on the frozen UNet; its resnets and
  transformer blocks keep only their inputs and recompute their activations in the backward pass.
- ``gradient_checkpointing_encoder``: the time-aware encoder's blocks through ``torch.utils.checkpoint``
  (``use_reentrant=False``; ``TimeAwareEncoder.checkpoint_blocks``).
- ``gradient_checkpointing_vae``: diffusers' ``enable_gradient_checkpointing`` on the VAE (in CFW training only its
  decoder runs with gradients: mid block and up blocks, fusion layers included).
- ``attention``: ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``: diffusers' ``AttnProcessor2_0`` in
  the UNet and VAE, the fused kernel in the encoder's attention blocks) or ``classic`` (the explicit
  ``softmax(q k^T / sqrt(d)) v``, which materialises every attention matrix: diffusers' ``AttnProcessor``).
- ``channels_last``: NHWC weights (``sr.models.acceleration.accelerate``).

bf16 is the trainer's lever, not the model's: ``trainer.precision=bf16-mixed``.

Checkpointing a block that runs with temporary hooks (SFT on the UNet's resnets, CFW on the VAE decoder's
upsamplers) needs the hooks again when the block is recomputed in the backward pass, after their ``with`` block has
ended: :class:`TemporaryHooks` installs such hooks and :func:`checkpoint_with_hooks`, the checkpointing function
handed to diffusers, re-installs those that were live at forward time around the recomputation. Without it the
recomputation would run the unmodulated block and the gradients of the SFT / CFW layers would be wrong.
"""

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Self

from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.hooks import RemovableHandle

from sr.models.acceleration import accelerate

ATTENTION = ("sdpa", "classic")

# The TemporaryHooks inside their ``with`` block now (any thread: CUDA runs the backward in its own threads).
_LIVE: list["TemporaryHooks"] = []


class TemporaryHooks:
    """Hooks that ``install()`` registers (returning their handles) for the duration of a ``with`` block; re-entered
    by :func:`checkpoint_with_hooks` around a recomputation that runs after the block has ended."""

    def __init__(self, install: Callable[[], list[RemovableHandle]]):
        self.install = install
        self.handles: list[RemovableHandle] = []

    @property
    def live(self) -> bool:
        return self in _LIVE

    def __enter__(self) -> Self:
        if self.live:
            raise RuntimeError("these hooks are already installed")
        self.handles = self.install()
        _LIVE.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        _LIVE.remove(self)


def checkpoint_with_hooks(module: nn.Module, *args):
    """``torch.utils.checkpoint`` (non-reentrant: parameters inside get gradients even when no input needs one) of
    ``module(*args)``, with the temporary hooks live now re-installed for the recomputation if they have ended."""
    hooks = list(_LIVE)

    def run(*inputs):
        with ExitStack() as stack:
            for hook in hooks:
                if not hook.live:  # the recomputation, in the backward pass after the with block
                    stack.enter_context(hook)
            return module(*inputs)

    return checkpoint(run, *args, use_reentrant=False)


@dataclass(frozen=True)
class MemoryLevers:
    """The switches of the module docstring (``module.memory`` in the training configs); all off is the plain model
    with SDPA attention, diffusers' default."""

    gradient_checkpointing_unet: bool = False
    gradient_checkpointing_encoder: bool = False
    gradient_checkpointing_vae: bool = False
    attention: str = "sdpa"
    channels_last: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"module.memory.attention must be one of {ATTENTION}, got {self.attention!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def apply_memory_levers(model: nn.Module, levers: MemoryLevers) -> nn.Module:
    """Set ``levers`` on ``model`` (a ``StableSR``: ``unet``, ``time_aware_encoder``, ``vae``) in place; return it."""
    if levers.gradient_checkpointing_unet:
        model.unet.enable_gradient_checkpointing(checkpoint_with_hooks)
    else:
        model.unet.disable_gradient_checkpointing()
    if levers.gradient_checkpointing_vae:
        model.vae.enable_gradient_checkpointing(checkpoint_with_hooks)
    else:
        model.vae.disable_gradient_checkpointing()
    model.time_aware_encoder.checkpoint_blocks = levers.gradient_checkpointing_encoder
    sdpa = levers.attention == "sdpa"
    for part in (model.unet, model.vae):
        part.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
    for block in model.time_aware_encoder.modules():
        if hasattr(block, "use_sdpa"):
            block.use_sdpa = sdpa
    if levers.channels_last:
        accelerate(model, channels_last=True)
    return model


def memory_levers(config: dict | MemoryLevers | None) -> MemoryLevers:
    """``module.memory`` (a mapping, possibly partial, or None: all defaults) as :class:`MemoryLevers`; an unknown
    switch is one line naming it."""
    if isinstance(config, MemoryLevers):
        return config
    config = dict(config or {})
    known = set(MemoryLevers.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"module.memory: unknown switch {unknown[0]!r}; expected one of {sorted(known)}")
    return MemoryLevers(**config)
