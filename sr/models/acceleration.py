"""Inference speed-ups of a ``StableSR`` model that leave its numbers (nearly) unchanged: channels-last memory
format and ``torch.compile`` of the UNet. Half precision is the preset's ``torch_dtype`` (``float16``/``bfloat16``).

- ``channels_last``: the UNet, time-aware encoder, VAE and CFW weights in NHWC order, which cuDNN/oneDNN convolutions
  prefer (tensor cores on GPU); inputs stay NCHW and are converted by the first convolution.
- ``compile``: ``nn.Module.compile`` on the UNet, so the module object, its SFT hooks and its state dict stay as they
  are (saving and loading are unaffected). The SFT features reach the compiled UNet as inputs, not constants: a new
  LR image does not recompile and cannot be served stale features (tested). Tile batches of another size or a
  smaller last batch compile once more; ``dynamic=None`` lets torch decide when to generalise.
"""

from collections.abc import Callable

import torch
from torch import nn


def accelerate(
    model: nn.Module,
    compile: bool = False,
    channels_last: bool = False,
    backend: str | Callable = "inductor",
    mode: str | None = None,
) -> nn.Module:
    """Apply the speed-ups above in place to ``model`` (a ``StableSR`` or anything with the same ``unet``/``vae``/...
    attributes) and return it (``backend``/``mode``: ``torch.compile``'s)."""
    if channels_last:
        # ``encoder`` on a StableSR model, ``time_aware_encoder`` on a StableSRPipeline; ``cfw`` may be None.
        for name in ("unet", "encoder", "time_aware_encoder", "vae", "cfw"):
            part = getattr(model, name, None)
            if isinstance(part, nn.Module):
                part.to(memory_format=torch.channels_last)
    if compile:
        model.unet.compile(backend=backend, mode=mode)
    return model
