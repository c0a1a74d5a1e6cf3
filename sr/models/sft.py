"""SFT modulation of the frozen UNet's residual blocks (docs/method.md#sft), as an adapter kept outside the UNet.

Every ``ResnetBlock2D`` of a diffusers UNet gets a SPADE layer that re-normalises and modulates the output of its
residual branch (after ``conv2``, before the skip add) with the time-aware encoder feature of the same width::

    n     = GroupNorm(h)                      # learnable affine, 32 groups, eps 1e-5
    a     = ReLU(conv3x3(feature))            # cond_channels -> hidden_channels
    out   = n * (1 + conv3x3_gamma(a)) + conv3x3_beta(a)

The layers live in :class:`SFTAdapter` (a diffusers ``ModelMixin``), keyed by the resnet's path in the UNet:
parameter ``down_blocks.0.resnets.0.mlp_gamma.weight`` modulates ``unet.down_blocks[0].resnets[0]``. The UNet itself
stays an untouched diffusers ``UNet2DConditionModel`` (its ``state_dict`` is the plain one): ``adapter.applied(unet,
features)`` registers a forward hook on each ``conv2`` for the duration of one ``with`` block only, and the encoder
features reach the hooks through that block's closure, so nothing is left set after a call. Not diffusers'
``HookRegistry`` registered once: it replaces ``module.forward`` with a partial over closures that ``copy.deepcopy``
shares, so a deep copy of the UNet (tests, training) would run the original module's ``conv2`` weights. UNet gradient
checkpointing (``module.memory.gradient_checkpointing_unet``) recomputes blocks in the backward pass, after the
``with`` block: the hooks are ``sr.models.memory.TemporaryHooks``, which its checkpointing function re-installs there.
SPADE is not identity at initialisation (as released).
"""

from contextlib import contextmanager

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from sr.models.encoder import GroupNorm32
from sr.models.memory import TemporaryHooks


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


def modulated_resnets(unet: nn.Module) -> list[tuple[str, ResnetBlock2D]]:
    """The UNet's residual blocks in module order (22 for SD-1/2 UNets), with their paths."""
    return [(name, module) for name, module in unet.named_modules() if isinstance(module, ResnetBlock2D)]


class SFTAdapter(ModelMixin, ConfigMixin):
    """One SPADE layer per UNet residual block, stored under the block's path (module docstring).

    ``resnet_paths[i]`` is a ``ResnetBlock2D`` path in the UNet and ``norm_channels[i]`` its ``conv2`` width.
    """

    @register_to_config
    def __init__(
        self,
        resnet_paths: list[str],
        norm_channels: list[int],
        cond_channels: int = 256,
        hidden_channels: int = 128,
        norm_groups: int = 32,
    ):
        super().__init__()
        if len(resnet_paths) != len(norm_channels):
            raise ValueError(f"SFT adapter: {len(resnet_paths)} resnet paths but {len(norm_channels)} widths")
        for path, channels in zip(resnet_paths, norm_channels):
            _set_nested(self, path, SPADE(channels, cond_channels, hidden_channels, norm_groups))

    @classmethod
    def for_unet(cls, unet: nn.Module, cond_channels: int, hidden_channels: int = 128,
                 norm_groups: int = 32) -> "SFTAdapter":
        """A freshly initialised adapter for every residual block of ``unet`` (in module order)."""
        resnets = modulated_resnets(unet)
        return cls([path for path, _ in resnets], [resnet.conv2.out_channels for _, resnet in resnets],
                   cond_channels, hidden_channels, norm_groups)

    def forward(self, resnet_path: str, h: torch.Tensor, features: dict[int, torch.Tensor]) -> torch.Tensor:
        """SPADE of ``resnet_path`` on ``h`` with the encoder feature of ``h``'s width (``features`` by width)."""
        width = h.shape[-1]
        if width not in features:
            raise KeyError(f"no encoder feature of width {width}; have widths {sorted(features)}")
        return self.get_submodule(resnet_path)(h, features[width])

    @contextmanager
    def applied(self, unet: nn.Module, features: dict[int, torch.Tensor]):
        """Within the ``with`` block, ``unet``'s residual blocks are modulated with ``features`` (by width); and in the
        recomputation of a block checkpointed by ``sr.models.memory.checkpoint_with_hooks``."""

        def install():
            return [unet.get_submodule(path).conv2.register_forward_hook(
                lambda _module, _inputs, h, path=path: self(path, h, features)
            ) for path in self.config.resnet_paths]

        with TemporaryHooks(install):
            yield


def _set_nested(root: nn.Module, path: str, module: nn.Module) -> None:
    """``root.<path> = module``, creating ``nn.ModuleDict`` containers for the missing parents of the dotted path."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        if not hasattr(node, name):
            node.add_module(name, nn.ModuleDict())
        node = getattr(node, name)
    node.add_module(leaf, module)
