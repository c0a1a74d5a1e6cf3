"""Memory levers (sr/models/memory.py): each lever alone and all together leave one training step's loss and every
trainable gradient equal to the all-off run, for stage 1 and the CFW stage; the switches compose from the configs.

Tolerances, relative to the largest gradient entry of the all-off run (per-tensor relative errors are meaningless for
the parameters whose true gradient is zero and whose computed one is float rounding, e.g. a conv bias before a
one-channel-per-group GroupNorm):
- gradient checkpointing recomputes the same operations in the same order: bit-exact on the CPU, asserted to 1e-6;
- SDPA vs classic attention and NHWC convolutions sum in another order (fused kernels, other reductions): float32
  rounding carried through the network's GroupNorms; observed up to 9.5e-6 in stage 1, asserted to 1e-4;
- the CFW generator loss (L1 + the stand-in perceptual net) has kinks: sign(output - target), ReLU and max-pool
  switch where a value meets its neighbour within rounding, which moves its gradients by more than rounding (observed
  up to 5.8e-4; a mean squared error alone moves by 1.7e-6). Its gradients are asserted to 2e-3 for those levers; the
  gradients of that smooth loss on the same decoded image to 1e-4, as in stage 1.
"""

import copy

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from hydra.utils import instantiate
from omegaconf import open_dict

from sr.commands.train import compose_train_config, train
from sr.models.cfw import encoder_features
from sr.models.memory import MemoryLevers, apply_memory_levers, memory_levers
from sr.training.losses import AutoencoderLoss, Reconstruction
from sr.training.stage1 import Stage1Module
from sr.training.stage2 import CFWModule

CHECKPOINTING_TOLERANCE = 1e-6
REORDERING_TOLERANCE = 1e-4
GENERATOR_LOSS_TOLERANCE = 2e-3
STAGE1_LEVERS = {
    "gradient_checkpointing_unet": ({"gradient_checkpointing_unet": True}, CHECKPOINTING_TOLERANCE),
    "gradient_checkpointing_encoder": ({"gradient_checkpointing_encoder": True}, CHECKPOINTING_TOLERANCE),
    "classic_attention": ({"attention": "classic"}, REORDERING_TOLERANCE),
    "channels_last": ({"channels_last": True}, REORDERING_TOLERANCE),
    "all": ({"gradient_checkpointing_unet": True, "gradient_checkpointing_encoder": True, "attention": "classic",
             "channels_last": True}, REORDERING_TOLERANCE),
}
CFW_LEVERS = {
    "gradient_checkpointing_vae": ({"gradient_checkpointing_vae": True}, CHECKPOINTING_TOLERANCE),
    "classic_attention": ({"attention": "classic"}, REORDERING_TOLERANCE),
    "channels_last": ({"channels_last": True}, REORDERING_TOLERANCE),
    "all": ({"gradient_checkpointing_vae": True, "attention": "classic", "channels_last": True},
            REORDERING_TOLERANCE),
}


@pytest.fixture(scope="module")
def perturbed_pipe(tiny_pipe):
    """The tiny pipeline with every encoder/SFT weight perturbed: the zero-initialised layers would otherwise leave
    most stage-1 gradients exactly zero, where any lever would trivially pass."""
    pipe = copy.deepcopy(tiny_pipe)
    with torch.no_grad():
        for part in (pipe.time_aware_encoder, pipe.sft):
            for index, parameter in enumerate(part.parameters()):
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(index)) * 0.05)
    return pipe


def _images(seed: int, batch: int = 2, side: int = 128) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _stage1_step(pipe, memory: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One stage-1 training step (the module's objective, fixed batch and noise): loss and trainable gradients."""
    module = Stage1Module(copy.deepcopy(pipe), memory=memory)
    loss = module.stage1_loss(_images(1), _images(2), torch.Generator().manual_seed(5))
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in module.named_parameters() if p.requires_grad}


def _cfw_step(pipe, memory: dict) -> tuple[tuple, tuple]:
    """One CFW generator step at w = 1 (the module's decode and generator loss): (loss, fusion-layer gradients) of the
    generator loss and of the mean squared error of the same decoded image (smooth, module docstring)."""
    loss_fn = AutoencoderLoss(perceptual="stand_in", disc_channels=8)
    model = CFWModule(copy.deepcopy(pipe), loss_fn, memory=memory).model
    loss_fn.discriminator.requires_grad_(False)  # the generator step, as toggled_optimizer sets it
    lq, gt = _images(3), _images(4)
    latent = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _, features = encoder_features(model.vae, lq)
    output = model.decode(latent, features, w=1.0)
    steps = []
    for loss in (loss_fn.generator_loss(gt, Reconstruction(output), step=0)[0], ((output - gt) ** 2).mean()):
        model.cfw.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        steps.append((loss.detach(), {name: p.grad for name, p in model.cfw.named_parameters()}))
    return tuple(steps)


def _assert_same_step(step, reference, tolerance: float) -> None:
    (loss, grads), (ref_loss, ref_grads) = step, reference
    assert abs(loss - ref_loss) <= tolerance * abs(ref_loss)
    scale = max(grad.abs().max() for grad in ref_grads.values())
    assert scale > 0
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad is not None, f"{name}: no gradient"
        error = (grad - ref_grads[name]).abs().max() / scale
        assert error <= tolerance, f"{name}: {error:.2e} of the largest gradient"


@pytest.fixture(scope="module")
def stage1_reference(perturbed_pipe):
    return _stage1_step(perturbed_pipe, {})


@pytest.fixture(scope="module")
def cfw_reference(tiny_pipe):
    return _cfw_step(tiny_pipe, {})


@pytest.mark.parametrize("lever", STAGE1_LEVERS)
def test_stage1_step_with_a_lever_equals_the_step_without(perturbed_pipe, stage1_reference, lever):
    memory, tolerance = STAGE1_LEVERS[lever]
    _assert_same_step(_stage1_step(perturbed_pipe, memory), stage1_reference, tolerance)


@pytest.mark.parametrize("lever", CFW_LEVERS)
def test_cfw_step_with_a_lever_equals_the_step_without(tiny_pipe, cfw_reference, lever):
    memory, tolerance = CFW_LEVERS[lever]
    generator_step, smooth_step = _cfw_step(tiny_pipe, memory)
    _assert_same_step(smooth_step, cfw_reference[1], tolerance)
    loss_tolerance = CHECKPOINTING_TOLERANCE if tolerance == CHECKPOINTING_TOLERANCE else GENERATOR_LOSS_TOLERANCE
    _assert_same_step(generator_step, cfw_reference[0], loss_tolerance)


def test_plain_diffusers_unet_checkpointing_would_lose_the_sft_hooks(perturbed_pipe):
    """Why the UNet is checkpointed through ``checkpoint_with_hooks``: diffusers' own function recomputes the blocks
    after the SFT ``with`` block, without the modulation, and the backward pass refuses the mismatch."""
    module = Stage1Module(copy.deepcopy(perturbed_pipe))
    module.model.unet.enable_gradient_checkpointing()
    loss = module.stage1_loss(_images(1), _images(2), torch.Generator().manual_seed(5))
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        loss.backward()


def test_unknown_switch_or_attention_is_one_line():
    with pytest.raises(ValueError, match="unknown switch 'gradient_checkpointing'"):
        memory_levers({"gradient_checkpointing": True})
    with pytest.raises(ValueError, match="attention must be one of"):
        MemoryLevers(attention="flash")


def test_levers_are_set_where_they_act(tiny_pipe):
    model = apply_memory_levers(copy.deepcopy(tiny_pipe).model, MemoryLevers(
        gradient_checkpointing_unet=True, gradient_checkpointing_encoder=True, gradient_checkpointing_vae=True,
        attention="classic", channels_last=True))
    assert model.unet.is_gradient_checkpointing and model.vae.is_gradient_checkpointing
    assert model.time_aware_encoder.checkpoint_blocks
    assert all(type(p) is AttnProcessor for part in (model.unet, model.vae) for p in part.attn_processors.values())
    assert not any(getattr(block, "use_sdpa", False) for block in model.time_aware_encoder.modules())
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    off = apply_memory_levers(model, MemoryLevers())
    assert not off.unet.is_gradient_checkpointing and not off.vae.is_gradient_checkpointing
    assert not off.time_aware_encoder.checkpoint_blocks
    assert all(type(p) is AttnProcessor2_0 for p in off.unet.attn_processors.values())


ALL_STAGE1 = ["module.memory.gradient_checkpointing_unet=true", "module.memory.gradient_checkpointing_encoder=true",
              "module.memory.attention=classic", "module.memory.channels_last=true"]


def test_switches_compose_from_the_configs(tmp_path):
    stage1 = compose_train_config(["experiment=stablesr_tiny", "model.pretrained=null"] + ALL_STAGE1, tmp_path)
    cfw = compose_train_config(["experiment=cfw_tiny", "model.pretrained=null", "module.loss.perceptual=stand_in",
                                "module.memory.gradient_checkpointing_vae=true"], tmp_path)
    default = compose_train_config(["experiment=stablesr_sd21_base"], tmp_path)
    assert dict(default.module.memory) == MemoryLevers().as_dict()
    module = instantiate(stage1.module, model=instantiate(stage1.model))
    assert module.model.unet.is_gradient_checkpointing and module.model.time_aware_encoder.checkpoint_blocks
    assert type(next(iter(module.model.unet.attn_processors.values()))) is AttnProcessor
    assert module.hparams.memory == memory_levers(stage1.module.memory).as_dict()  # plain dict in checkpoints
    cfw_module = instantiate(cfw.module, model=instantiate(cfw.model))
    assert cfw_module.model.vae.is_gradient_checkpointing and not cfw_module.model.unet.is_gradient_checkpointing


def test_stage1_fast_dev_run_with_every_lever(tmp_path):
    cfg = compose_train_config(["experiment=stablesr_tiny", "trainer=cpu", "+trainer.fast_dev_run=true",
                                "logger=none", "model.pretrained=null", "~callbacks.progress_bar"] + ALL_STAGE1,
                               tmp_path)
    with open_dict(cfg):
        cfg.module.validation.num_inference_steps = 1
    result = train(cfg)
    assert result["trainer"].state.finished
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in result["metrics"].values())
