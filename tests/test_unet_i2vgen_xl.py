"""I2VGenXLUNet against diffusers on tiny random configs: image latents smaller and larger than the 32x32 context
pool, sizes the up blocks cannot double back to, odd frame counts, two and three levels, fp16 against torch fp32,
and loading through the converter (`from_pretrained` on a diffusers folder)."""

import numpy as np
import pytest
import torch

from mindport.models import I2VGenXLUNet
from parity.fixtures import randomise
from tests.helpers import assert_close

TWO_LEVEL = dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
THREE_LEVEL = dict(block_out_channels=(32, 32, 64), layers_per_block=2, attention_head_dim=8, cross_attention_dim=24,
                   down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"))

# (name, config, batch, frames, latent H, W, text length). Each new shape costs MindSpore ~10 s of first-call
# kernel setup on the shared CPU, so the table is short: small latents (the 32x32 context pool enlarges), latents
# beyond 32 rows (it shrinks them and enlarges the 5 columns; 33 is odd, so the up block takes the skip's size).
CASES = [
    ("2level-8x8-batch2-3frames", TWO_LEVEL, 2, 3, 8, 8, 7),
    ("2level-33x5-pool-shrinks-and-enlarges", TWO_LEVEL, 1, 2, 33, 5, 5),
]


def _pair(cfg, seed):
    torch.manual_seed(seed)
    from diffusers import I2VGenXLUNet as TorchUNet

    ref = randomise(TorchUNet(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **cfg), seed)
    ours = I2VGenXLUNet.from_config({"sample_size": 8, "in_channels": 4, "out_channels": 4, "norm_num_groups": 32,
                                     **cfg})
    ours.load_arrays({k: v.numpy() for k, v in ref.state_dict().items()})
    return ref, ours


def _inputs(cfg, batch, frames, h, w, text_len, seed):
    rng = np.random.Generator(np.random.PCG64(seed))
    d = cfg["cross_attention_dim"]
    return dict(
        sample=rng.standard_normal((batch, 4, frames, h, w)).astype(np.float32),
        image_latents=rng.standard_normal((batch, 4, frames, h, w)).astype(np.float32),
        image_embeddings=rng.standard_normal((batch, 1, d)).astype(np.float32),
        encoder_hidden_states=rng.standard_normal((batch, text_len, d)).astype(np.float32),
        fps=np.full((batch,), 16, np.int64),
    )


def _run_torch(ref, x, timestep):
    with torch.no_grad():
        return ref(torch.from_numpy(x["sample"]), torch.tensor(timestep), fps=torch.from_numpy(x["fps"]),
                   image_latents=torch.from_numpy(x["image_latents"]),
                   image_embeddings=torch.from_numpy(x["image_embeddings"]),
                   encoder_hidden_states=torch.from_numpy(x["encoder_hidden_states"])).sample


@pytest.mark.parametrize("name, cfg, batch, frames, h, w, text_len", CASES, ids=[c[0] for c in CASES])
def test_unet_matches_diffusers_fp32(name, cfg, batch, frames, h, w, text_len):
    ref, ours = _pair(cfg, seed=len(name))
    x = _inputs(cfg, batch, frames, h, w, text_len, seed=1)
    expected = _run_torch(ref, x, 981)
    out = ours(x["sample"], 981, x["fps"], x["image_latents"], image_embeddings=x["image_embeddings"],
               encoder_hidden_states=x["encoder_hidden_states"])
    assert out.sample.shape == (batch, 4, frames, h, w)
    assert_close(out.sample, expected, rel_l2=1e-5, where=f"I2VGenXLUNet {name} fp32")
    assert_close(out[0], expected, rel_l2=1e-5, where=f"I2VGenXLUNet {name} fp32 out[0]")


def test_unet_fp16_close_to_torch_fp32():
    ref, ours = _pair(TWO_LEVEL, seed=3)
    x = _inputs(TWO_LEVEL, 2, 3, 8, 8, 7, seed=2)
    expected = _run_torch(ref, x, 500)
    ours.to_dtype("fp16")
    out = ours(x["sample"], np.int64(500), x["fps"], x["image_latents"], image_embeddings=x["image_embeddings"],
               encoder_hidden_states=x["encoder_hidden_states"], return_dict=False)[0]
    assert str(out.dtype) == "Float16"
    assert_close(out, expected, rel_l2=1e-2, where="I2VGenXLUNet fp16 vs torch fp32")


def test_from_pretrained_3level_odd_sizes_5_frames(tmp_path):
    """Three levels, two layers per block, 6x10 latents (the up blocks cannot double 2x3 back to 3x5: they take the
    skips' sizes), 5 frames; loaded through the converter from a diffusers folder."""
    ref, _ = _pair(THREE_LEVEL, seed=5)
    ref.save_pretrained(tmp_path / "unet")
    ours = I2VGenXLUNet.from_pretrained(tmp_path, subfolder="unet")
    assert ours.config.block_out_channels == [32, 32, 64]
    x = _inputs(THREE_LEVEL, 1, 5, 6, 10, 4, seed=4)
    expected = _run_torch(ref, x, 1)
    out = ours(x["sample"], 1, x["fps"], x["image_latents"], image_embeddings=x["image_embeddings"],
               encoder_hidden_states=x["encoder_hidden_states"]).sample
    assert_close(out, expected, rel_l2=1e-5, where="I2VGenXLUNet 3level from_pretrained")


def test_parameter_names_equal_diffusers_state_dict():
    from diffusers import I2VGenXLUNet as TorchUNet

    ref = TorchUNet(sample_size=8, norm_num_groups=32, **TWO_LEVEL)
    ours = I2VGenXLUNet.from_config({"sample_size": 8, "norm_num_groups": 32, **TWO_LEVEL})
    spec = ours.parameter_spec()
    assert set(spec) == set(ref.state_dict())
    assert all(tuple(v.shape) == spec[k][0] for k, v in ref.state_dict().items())


@pytest.mark.parametrize("bad, message", [
    (dict(attention_head_dim=(4, 4)), "attention_head_dim must be an int"),
    (dict(up_block_types=("UpBlock3D",)), "down_block_types but 1 up_block_types"),
    (dict(down_block_types=("CrossAttnDownBlock3D", "Nope3D")), "unknown down_block_type 'Nope3D'"),
])
def test_config_errors_name_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        I2VGenXLUNet.from_config({"norm_num_groups": 32, **TWO_LEVEL, **bad})


def test_mismatched_image_latents_are_refused():
    ours = I2VGenXLUNet.from_config({"norm_num_groups": 32, **TWO_LEVEL})
    x = _inputs(TWO_LEVEL, 1, 2, 8, 8, 3, seed=0)
    with pytest.raises(ValueError, match=r"image_latents has shape \(1, 4, 3, 8, 8\)"):
        ours(x["sample"], 1, x["fps"], np.zeros((1, 4, 3, 8, 8), np.float32), image_embeddings=x["image_embeddings"],
             encoder_hidden_states=x["encoder_hidden_states"])
    with pytest.raises(ValueError, match="image_embeddings must be given"):
        ours(x["sample"], 1, x["fps"], x["image_latents"], encoder_hidden_states=x["encoder_hidden_states"])
