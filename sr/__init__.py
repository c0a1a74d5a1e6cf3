"""StableSR on PyTorch Lightning, diffusers and Hydra."""

import logging

# diffusers imports bitsandbytes whenever it is installed (pyiqa requires it). On CPUs with AVX512-BF16 that import
# asks the `kernels` package for an optional 4-bit CPU kernel from the Hugging Face hub, and both log a warning when
# it is unavailable or the hub is offline, so every command would open with them. Nothing here is quantised: drop the
# records about that one kernel (this package is imported before diffusers by every entry point), keep the rest.
_BNB_HUB_KERNEL = "kernels-community/quantization-bitsandbytes"
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(lambda record: _BNB_HUB_KERNEL not in record.getMessage())
