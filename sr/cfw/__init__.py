"""Stage-2 (CFW) data: generating ``{inputs, gts, latents, samples}`` with the stage-1 model, and reading it back."""
