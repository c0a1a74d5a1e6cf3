"""SFT modulation of the frozen UNet's residual blocks (spec section 4).

Every ``ResnetBlock2D`` of a diffusers UNet gets a ``spade`` submodule that re-normalises and modulates the output of
its residual branch (after ``conv2``, before the skip add) with the time-aware encoder feature of the same width::

    n     = GroupNorm(h)                      # learnable affine, 32 groups, eps 1e-5
    a     = ReLU(conv3x3(feature))            # cond_channels -> hidden_channels
    out   = n * (1 + conv3x3_gamma(a)) + conv3x3_beta(a)

It is injected with a forward hook on ``conv2`` rather than a copy of diffusers' block code, so any SD-family UNet
config works, and the parameters land at ``<resnet path>.spade.*``: the names diffusers' own LDM converter gives the
released checkpoint's SPADE weights. SPADE is not identity at initialisation (as released).
"""

from contextlib import contextmanager

import torch
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from sr.models.encoder import GroupNorm32

SFT_PARAMETER_TAG = ".spade."


class SPADE(nn.Module):
    """``GN(h) * (1 + gamma(c)) + beta(c)`` with ``gamma, beta`` from a shared conv-ReLU trunk over the condition."""

    def __init__(self, norm_channels: int, cond_channels: int = 256, hidden_channels: int = 128, norm_groups: int = 32):
        super().__init__()
        self.param_free_norm = GroupNorm32(norm_groups, norm_channels, eps=1e-5, affine=True)
        self.mlp_shared = nn.Sequential(nn.Conv2d(cond_channels, hidden_channels, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden_channels, norm_channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden_channels, norm_channels, 3, padding=1)

    def forward(self, h: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if condition.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"SFT condition is {tuple(condition.shape[-2:])}, feature is {tuple(h.shape[-2:])}")
        shared = self.mlp_shared(condition.to(h.dtype))
        return self.param_free_norm(h) * (1 + self.mlp_gamma(shared)) + self.mlp_beta(shared)


class _SFTState:
    """The encoder features of the current UNet call, shared by all hooks of one UNet."""

    def __init__(self):
        self.features: dict[int, torch.Tensor] | None = None
        self.enabled = True


def modulated_resnets(unet: nn.Module) -> list[tuple[str, ResnetBlock2D]]:
    """The UNet's residual blocks in module order (22 for SD-1/2 UNets)."""
    return [(name, module) for name, module in unet.named_modules() if isinstance(module, ResnetBlock2D)]


def attach_sft(unet: nn.Module, cond_channels: int, hidden_channels: int = 128, norm_groups: int = 32) -> int:
    """Give every residual block of ``unet`` a ``spade`` layer and the hook that applies it; returns their number."""
    if hasattr(unet, "_sft_state"):
        raise RuntimeError("SFT is already attached to this UNet")
    state = _SFTState()
    resnets = modulated_resnets(unet)
    for _, resnet in resnets:
        resnet.spade = SPADE(resnet.conv2.out_channels, cond_channels, hidden_channels, norm_groups).to(
            device=resnet.conv2.weight.device, dtype=resnet.conv2.weight.dtype
        )
        resnet._sft_hook = resnet.conv2.register_forward_hook(_make_hook(resnet.spade, state))
    unet._sft_state = state
    return len(resnets)


def _make_hook(spade: SPADE, state: _SFTState):
    def apply_spade(_module, _inputs, h):
        if not state.enabled:
            return h
        if state.features is None:
            raise RuntimeError("SFT is attached but no time-aware encoder features were set (use set_sft_features)")
        width = h.shape[-1]
        if width not in state.features:
            raise KeyError(f"no encoder feature of width {width}; have widths {sorted(state.features)}")
        return spade(h, state.features[width])

    return apply_spade


def detach_sft(unet: nn.Module) -> None:
    """Remove the SFT layers and hooks: the UNet is the plain diffusers UNet again."""
    for _, resnet in modulated_resnets(unet):
        resnet._sft_hook.remove()
        del resnet._sft_hook
        del resnet.spade
    del unet._sft_state


def set_sft_features(unet: nn.Module, features: dict[int, torch.Tensor] | None) -> None:
    """Features used by the following UNet calls (kept set so gradient checkpointing can recompute)."""
    unet._sft_state.features = features


@contextmanager
def sft_disabled(unet: nn.Module):
    """Run the UNet as the plain diffusers UNet (e.g. to train the tiny prior) while SFT stays attached."""
    state = unet._sft_state
    previous, state.enabled = state.enabled, False
    try:
        yield
    finally:
        state.enabled = previous


def is_sft_parameter(name: str) -> bool:
    return SFT_PARAMETER_TAG in f".{name}"


def sft_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Only the SFT parameters of the UNet, under their diffusers paths (``down_blocks.0.resnets.0.spade....``)."""
    return {name: tensor for name, tensor in unet.state_dict().items() if is_sft_parameter(name)}
