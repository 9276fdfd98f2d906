"""Parity of Transformer2DModel (continuous inputs) against diffusers, tiny random configs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mindspore as ms
from mindspore import Tensor

from mindport.models.transformer_2d import Transformer2DModel
from parity.fixtures import randomise
from tests.helpers import assert_close, torch_state_to_numpy

CONFIGS = {
    "sd15-conv": dict(num_attention_heads=2, attention_head_dim=8, in_channels=16, norm_num_groups=4, cross_attention_dim=12),
    "linear-2layers": dict(num_attention_heads=2, attention_head_dim=8, in_channels=16, norm_num_groups=8,
                           cross_attention_dim=12, num_layers=2, use_linear_projection=True),
    "self-only": dict(num_attention_heads=4, attention_head_dim=4, in_channels=8, norm_num_groups=2),
    "double-self-gelu": dict(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4,
                             double_self_attention=True, activation_fn="gelu", attention_bias=True),
    "only-cross-outch": dict(num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
                             norm_num_groups=4, cross_attention_dim=12, only_cross_attention=True,
                             use_linear_projection=True, upcast_attention=True),
}


def _build(cfg, seed):
    ref = randomise(diffusers.Transformer2DModel(**cfg), seed)
    ours = Transformer2DModel.from_config(cfg)
    ours.load_arrays(torch_state_to_numpy(ref))
    return ref, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformer_2d_matches_diffusers(name, rng):
    cfg = CONFIGS[name]
    ref, ours = _build(cfg, seed=len(name))
    x = rng.standard_normal((2, cfg["in_channels"], 3, 5)).astype(np.float32)  # batch 2, non-square
    ctx = rng.standard_normal((2, 7, cfg["cross_attention_dim"])).astype(np.float32) if cfg.get("cross_attention_dim") else None
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), None if ctx is None else torch.from_numpy(ctx)).sample
    out = ours(Tensor(x), None if ctx is None else Tensor(ctx))
    assert_close(out.sample, expected, 1e-5, where=f"Transformer2DModel[{name}]")
    assert_close(ours(Tensor(x), None if ctx is None else Tensor(ctx), return_dict=False)[0], expected, 1e-5,
                 where=f"Transformer2DModel[{name}] return_dict=False")


def test_transformer_2d_encoder_attention_mask(rng):
    cfg = CONFIGS["sd15-conv"]
    ref, ours = _build(cfg, seed=3)
    x = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    ctx = rng.standard_normal((2, 6, 12)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 1], [1, 0, 1, 1, 1, 1]], np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(ctx), encoder_attention_mask=torch.from_numpy(mask)).sample
    out = ours(Tensor(x), Tensor(ctx), encoder_attention_mask=Tensor(mask)).sample
    assert_close(out, expected, 1e-5, where="Transformer2DModel encoder_attention_mask")


def test_transformer_2d_fp16(rng):
    cfg = CONFIGS["linear-2layers"]
    ref, ours = _build(cfg, seed=5)
    ours.to_dtype(ms.float16)
    x = rng.standard_normal((2, 16, 4, 6)).astype(np.float32)
    ctx = rng.standard_normal((2, 7, 12)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(ctx)).sample
    out = ours(Tensor(x).astype(ms.float16), Tensor(ctx).astype(ms.float16)).sample
    assert out.dtype == ms.float16
    assert_close(out, expected, 1e-2, where="Transformer2DModel fp16 vs torch fp32")


def test_transformer_2d_parameter_names_match_state_dict():
    for name, cfg in CONFIGS.items():
        ref = diffusers.Transformer2DModel(**cfg)
        spec = Transformer2DModel.from_config(cfg).parameter_spec()
        expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert {k: s for k, (s, _) in spec.items()} == expected, name


@pytest.mark.parametrize("bad", [dict(in_channels=None, num_vector_embeds=5), dict(in_channels=8, patch_size=2),
                                 dict(in_channels=8, norm_type="ada_norm_zero", num_embeds_ada_norm=10)])
def test_transformer_2d_unported_variants_refused(bad):
    with pytest.raises(NotImplementedError, match="Transformer2DModel"):
        Transformer2DModel(num_attention_heads=2, attention_head_dim=4, norm_num_groups=2, **bad)
