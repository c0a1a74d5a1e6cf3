"""Half precision, channels-last and torch.compile of the tiny preset on CPU, against the fp32 eager upscale."""

import pytest
import torch
from hydra.utils import instantiate

from sr.commands.config import compose
from sr.models.acceleration import accelerate

# bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2%); through 3 sampling steps, the VAE and the colour fix
# the tiny preset's output moved by 0.0027 mean / 0.017 max (on [0, 1]) when measured.
BF16_MEAN_TOLERANCE = 0.01
BF16_MAX_TOLERANCE = 0.05


def _upscaler(*overrides: str):
    """The tiny preset's pipeline (random weights) and ``(lr, generator) -> image`` with 3 steps."""
    pipe = instantiate(compose("upscale", ["input=unset", "output=unset", "model=tiny", *overrides]).model)
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda lr, generator: pipe(lr, num_inference_steps=3, generator=generator, output_type="pt").images


def _lr(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fp32_outputs():
    _, upscaler = _upscaler()
    return [upscaler(_lr(seed), torch.Generator().manual_seed(0)) for seed in (0, 1)]


def test_bfloat16_upscale_stays_within_the_stated_tolerance_of_float32(fp32_outputs):
    pipe, upscaler = _upscaler("model.torch_dtype=bfloat16")
    assert {parameter.dtype for parameter in pipe.unet.parameters()} == {torch.bfloat16}
    assert {parameter.dtype for parameter in pipe.vae.parameters()} == {torch.bfloat16}
    output = upscaler(_lr(0), torch.Generator().manual_seed(0))
    difference = (output.float() - fp32_outputs[0]).abs()
    assert 0 < difference.mean() < BF16_MEAN_TOLERANCE
    assert difference.max() < BF16_MAX_TOLERANCE


def test_channels_last_changes_the_layout_not_the_result(fp32_outputs):
    model, upscaler = _upscaler()
    accelerate(model, channels_last=True)
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    output = upscaler(_lr(0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(output, fp32_outputs[0], rtol=1e-4, atol=1e-4)


def test_compiled_unet_matches_eager_and_does_not_recompile_for_a_new_image(fp32_outputs):
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model, upscaler = _upscaler()
    accelerate(model, compile=True, backend=counting_backend)
    first = upscaler(_lr(0), torch.Generator().manual_seed(0))
    compiled_graphs = len(graphs)
    second = upscaler(_lr(1), torch.Generator().manual_seed(0))
    assert compiled_graphs > 0
    assert len(graphs) == compiled_graphs  # the second LR image's SFT features are inputs, not baked constants
    torch.testing.assert_close(first, fp32_outputs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, fp32_outputs[1], rtol=1e-5, atol=1e-5)
    assert not any("_orig_mod" in key for key in model.unet.state_dict())
