"""``sr.models.rrdb.RRDB`` against basicsr's block: same parameter names, same initial weights under a seed, same
output for the same weights (so CFW weights load unchanged and the recipe trains the same numbers)."""

import torch

from sr.compat.basicsr import RRDB as BasicsrRRDB
from sr.models.cfw import CFW
from sr.models.rrdb import RRDB


def test_same_parameters_and_initialisation_under_a_seed():
    torch.manual_seed(7)
    ours = RRDB(16, 8).state_dict()
    after_ours = torch.randn(4)
    torch.manual_seed(7)
    reference = BasicsrRRDB(16, 8).state_dict()
    after_reference = torch.randn(4)
    assert list(ours) == list(reference)
    assert {name: tuple(value.shape) for name, value in ours.items()} == {
        name: tuple(value.shape) for name, value in reference.items()}
    assert all(torch.equal(ours[name], reference[name]) for name in ours)
    assert torch.equal(after_ours, after_reference)   # the same number of random draws: the next ones match too
    # the initialisation is ESRGAN's (0.1 x Kaiming, zero bias), not torch's default
    assert all(torch.count_nonzero(ours[name]) == 0 for name in ours if name.endswith("bias"))


def test_same_output_for_the_same_weights():
    torch.manual_seed(0)
    reference = BasicsrRRDB(12, 6)
    with torch.no_grad():   # weights away from the 0.1-scaled initialisation, so every branch matters
        for parameter in reference.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    ours = RRDB(12, 6)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 12, 9, 11)
    with torch.no_grad():
        expected = reference(x.clone())
        actual = ours(x.clone())
    assert torch.equal(actual, expected)
    assert not torch.allclose(actual, x, atol=1e-2)   # the block does change its input


def test_cfw_uses_it():
    cfw = CFW(channels=(32, 32), growth_channels=8, num_rrdb=2, norm_groups=8)
    assert isinstance(cfw.fusion_layer_1.encode_enc_2[0], RRDB)
    assert "fusion_layer_1.encode_enc_2.0.rdb3.conv5.weight" in cfw.state_dict()
