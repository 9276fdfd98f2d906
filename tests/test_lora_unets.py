"""LoRA on the SVD and I2VGen-XL UNets through the same pipeline calls as AnimateDiff (load_lora_weights, fuse_lora,
unfuse_lora, unload_lora_weights), against the diffusers UNet with the same adapter injected by peft (diffusers
0.42 has no LoRA loader for these pipelines). The file is a peft-layout UNet LoRA (random A and B, alpha 8 on rank
4 in the adapter metadata) on attention, feed-forward, proj_in/out, time_emb_proj, the 2-D resnet convs and the 3-D
temporal convolutions (nn.Conv3d, kernel (3, 1, 1): SVD's temporal resnets, I2VGen-XL's TemporalConvLayer), which peft
wraps with a Conv3d down and a 1x1x1 up."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from mindspore import Tensor  # noqa: E402

from parity.fixtures import build  # noqa: E402
from tests.helpers import assert_close, rel_l2  # noqa: E402

TARGETS = (r"^(?!.*conv_in)(?!.*conv_out)(?!.*temp_convs\.\d+\.conv\d$)"  # (temp_convs.N.convK: Sequentials)
           r".*\.(to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out|conv1|conv2|time_emb_proj"
           r"|temp_convs\.\d+\.(?:conv1\.2|conv[234]\.3))$")


def _lora_unet(reference, path):
    """Inject a random peft LoRA into the torch UNet (in place) and write it as a diffusers/peft file."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=TARGETS)
    inject_adapter_in_model(cfg, reference)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name:
                p.mul_(0.15)
    sd = get_peft_model_state_dict(reference)
    assert len(sd) > 20
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
    save_file({f"unet.{k}": v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    return reference


def _check(pipe, reference, path, run_ms, run_torch, temporal: str, unfused_check=None):
    plain = run_ms()
    pipe.load_lora_weights(str(path), adapter_name="style")
    plan = pipe.lora_plan(str(path))
    assert plan.layouts == ["peft"]
    conv3d = [e for e in plan.entries if len(e.down.shape) == 5]
    assert conv3d and all(temporal in e.path and e.down.shape[2:] == (3, 1, 1) for e in conv3d), \
        "the temporal Conv3d layers must carry the LoRA too"
    expected = run_torch()
    ours = run_ms()
    assert rel_l2(ours, plain) > 1e-2, "the LoRA must move the UNet output for the test to mean anything"
    assert_close(ours, expected, rel_l2=1e-4, where="unfused LoRA vs diffusers + peft")
    if unfused_check is not None:
        unfused_check(ours)
    pipe.fuse_lora()
    fused = run_ms()
    assert_close(fused, ours, rel_l2=1e-5, where="fused vs unfused")
    print(f"LoRA moves the UNet output by {rel_l2(ours, plain):.3f}; vs diffusers+peft: unfused "
          f"{rel_l2(ours, expected):.2e}, fused {rel_l2(fused, expected):.2e}")
    assert_close(fused, expected, rel_l2=1e-4, where="fused LoRA vs diffusers + peft")
    pipe.unfuse_lora()
    assert_close(run_ms(), ours, rel_l2=1e-6, where="unfused again")
    pipe.unload_lora_weights()
    assert_close(run_ms(), plain, rel_l2=0, where="unloaded")


def test_svd_unet_lora_matches_peft(tmp_path):
    from mindport import StableVideoDiffusionPipeline

    folder = build("svd-tiny")
    pipe = StableVideoDiffusionPipeline.from_pretrained(str(folder))
    reference = diffusers.UNetSpatioTemporalConditionModel.from_pretrained(str(folder / "unet")).eval()
    rng = np.random.Generator(np.random.PCG64(1))
    c = reference.config
    x = rng.standard_normal((1, 3, c.in_channels, 8, 10)).astype(np.float32)
    ehs = rng.standard_normal((1, 1, c.cross_attention_dim)).astype(np.float32)
    ids = np.array([[6.0, 127.0, 0.02]], np.float32)
    path = tmp_path / "svd_lora.safetensors"
    _lora_unet(reference, path)

    def run_torch():
        with torch.no_grad():
            return reference(torch.from_numpy(x), 0.7, torch.from_numpy(ehs), torch.from_numpy(ids)).sample.numpy()

    def run_ms():
        return pipe.unet(Tensor(x), 0.7, Tensor(ehs), Tensor(ids)).sample.asnumpy()

    _check(pipe, reference, path, run_ms, run_torch, "temporal_res_block")


def test_i2vgen_xl_unet_lora_matches_peft(tmp_path):
    from mindport import I2VGenXLPipeline

    folder = build("i2vgen-xl-tiny")
    pipe = I2VGenXLPipeline.from_pretrained(str(folder))
    reference = diffusers.I2VGenXLUNet.from_pretrained(str(folder / "unet")).eval()
    rng = np.random.Generator(np.random.PCG64(1))
    d = reference.config.cross_attention_dim
    x = {"sample": rng.standard_normal((1, 4, 3, 8, 8)).astype(np.float32),
         "image_latents": rng.standard_normal((1, 4, 3, 8, 8)).astype(np.float32),
         "image_embeddings": rng.standard_normal((1, 1, d)).astype(np.float32),
         "encoder_hidden_states": rng.standard_normal((1, 5, d)).astype(np.float32),
         "fps": np.full((1,), 16, np.int64)}
    path = tmp_path / "i2vgen_lora.safetensors"
    _lora_unet(reference, path)

    def run_torch(**kw):
        with torch.no_grad():
            return reference(torch.from_numpy(x["sample"]), torch.tensor(981), fps=torch.from_numpy(x["fps"]),
                             image_latents=torch.from_numpy(x["image_latents"]),
                             image_embeddings=torch.from_numpy(x["image_embeddings"]),
                             encoder_hidden_states=torch.from_numpy(x["encoder_hidden_states"]), **kw).sample.numpy()

    def run_ms(**kw):
        return pipe.unet(x["sample"], 981, x["fps"], x["image_latents"], image_embeddings=x["image_embeddings"],
                         encoder_hidden_states=x["encoder_hidden_states"], **kw).sample.asnumpy()

    def call_time_scale(unscaled):
        """diffusers' I2VGen-XL UNet (what its pipeline passes cross_attention_kwargs to) ignores "scale": its
        attention processors drop it. Ours ignores it too, with a warning, and matches diffusers' scaled call."""
        half = {"cross_attention_kwargs": {"scale": 0.5}}
        expected = run_torch(**half)
        assert np.array_equal(expected, run_torch()), "diffusers' I2VGen-XL UNet now applies the LoRA scale"
        with pytest.warns(UserWarning, match=r"cross_attention_kwargs\['scale'\] is ignored, as in diffusers"):
            ours = run_ms(**half)
        assert np.array_equal(ours, unscaled)
        assert_close(ours, expected, rel_l2=1e-4, where="cross_attention_kwargs scale 0.5 vs diffusers")

    _check(pipe, reference, path, run_ms, run_torch, "temp_convs", call_time_scale)
