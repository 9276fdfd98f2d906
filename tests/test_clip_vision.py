"""CLIP encoders against transformers on tiny random models (weights re-randomised so nothing is zero or one)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mindport.models.clip import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection  # noqa: E402
from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close, torch_state_to_numpy  # noqa: E402


def _vision_pair(seed, **cfg):
    config = transformers.CLIPVisionConfig(**cfg)
    torch.manual_seed(seed)
    ref = randomise(transformers.CLIPVisionModelWithProjection(config).eval(), seed)
    ours = CLIPVisionModelWithProjection.from_config(config.to_dict())
    state = torch_state_to_numpy(ref)
    state.pop("vision_model.embeddings.position_ids", None)
    ours.load_arrays(state)
    return ref, ours, config


VISION_CASES = {
    # name: config (tiny), batch
    "gelu_h2_l2_32px_p8": (dict(hidden_size=32, intermediate_size=48, projection_dim=16, num_hidden_layers=2,
                                num_attention_heads=2, image_size=32, patch_size=8, hidden_act="gelu"), 2),
    "quick_gelu_h4_l1_28px_p7": (dict(hidden_size=64, intermediate_size=40, projection_dim=24, num_hidden_layers=1,
                                      num_attention_heads=4, image_size=28, patch_size=7, hidden_act="quick_gelu"), 1),
    "gelu_h1_l3_16px_p4_eps1e-6": (dict(hidden_size=24, intermediate_size=96, projection_dim=8, num_hidden_layers=3,
                                        num_attention_heads=1, image_size=16, patch_size=4, hidden_act="gelu",
                                        layer_norm_eps=1e-6), 3),
}


@pytest.mark.parametrize("case", sorted(VISION_CASES))
def test_vision_fp32_matches_transformers(case, rng):
    cfg, batch = VISION_CASES[case]
    ref, ours, config = _vision_pair(0, **cfg)
    pixels = rng.standard_normal((batch, 3, config.image_size, config.image_size)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(pixels), output_hidden_states=True)
    got = ours(pixels, output_hidden_states=True)
    assert_close(got.image_embeds, expected.image_embeds, rel_l2=1e-5, where=f"{case} image_embeds")
    assert_close(got.last_hidden_state, expected.last_hidden_state, rel_l2=1e-5, where=f"{case} last_hidden_state")
    assert len(got.hidden_states) == len(expected.hidden_states) == config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        assert_close(a, b, rel_l2=1e-5, where=f"{case} hidden_states[{i}]")
    # default call: exactly the two fields, in transformers' order, positional access works
    plain = ours(pixels)
    assert list(plain.keys()) == ["image_embeds", "last_hidden_state"]
    assert_close(plain[0], expected.image_embeds, rel_l2=1e-5, where=f"{case} [0]")


def test_vision_parameter_names_match_state_dict():
    ref, ours, _ = _vision_pair(0, **VISION_CASES["gelu_h2_l2_32px_p8"][0])
    torch_names = set(ref.state_dict()) - {"vision_model.embeddings.position_ids"}
    assert set(ours.parameter_spec()) == torch_names
    assert "vision_model.pre_layrnorm.weight" in torch_names
    assert "vision_model.encoder.layers.1.self_attn.q_proj.weight" in torch_names


def test_vision_fp16_against_torch_fp32(rng):
    cfg, batch = VISION_CASES["gelu_h2_l2_32px_p8"]
    ref, ours, config = _vision_pair(1, **cfg)
    ours.to_dtype("fp16")
    pixels = rng.standard_normal((batch, 3, config.image_size, config.image_size)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(pixels))
    got = ours(pixels)
    assert str(got.image_embeds.dtype) == "Float16"
    assert_close(got.image_embeds, expected.image_embeds, rel_l2=1e-2, where="fp16 image_embeds")
    assert_close(got.last_hidden_state, expected.last_hidden_state, rel_l2=1e-2, where="fp16 last_hidden_state")


def test_vision_interpolate_pos_encoding(rng):
    cfg, _ = VISION_CASES["gelu_h1_l3_16px_p4_eps1e-6"]
    ref, ours, _ = _vision_pair(2, **cfg)
    pixels = rng.standard_normal((1, 3, 24, 20)).astype(np.float32)  # 6x5 patches from a 4x4 table
    with torch.no_grad():
        expected = ref(torch.from_numpy(pixels), interpolate_pos_encoding=True)
    got = ours(pixels, interpolate_pos_encoding=True)
    assert_close(got.last_hidden_state, expected.last_hidden_state, rel_l2=1e-5, where="interpolated last_hidden_state")
    assert_close(got.image_embeds, expected.image_embeds, rel_l2=1e-5, where="interpolated image_embeds")


def test_vision_rejects_wrong_size_and_bad_heads(rng):
    _, ours, _ = _vision_pair(0, **VISION_CASES["gelu_h2_l2_32px_p8"][0])
    with pytest.raises(ValueError, match=r"16\*16"):
        ours(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="num_attention_heads=5"):
        CLIPVisionModelWithProjection(hidden_size=32, num_attention_heads=5)
    with pytest.raises(ValueError, match="relu6"):
        CLIPVisionModelWithProjection(hidden_size=32, num_attention_heads=2, hidden_act="relu6")


# ---------------------------------------------------------------------------------------------------------------------
# Text encoders (shared blocks + causal mask + EOS pooling)
# ---------------------------------------------------------------------------------------------------------------------

TEXT_CFG = dict(vocab_size=50, hidden_size=32, intermediate_size=40, projection_dim=12, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=12, hidden_act="quick_gelu", eos_token_id=49)


@pytest.mark.parametrize("eos_token_id", [49, 2])
@pytest.mark.parametrize("with_projection", [False, True])
def test_text_matches_transformers(with_projection, eos_token_id, rng):
    config = transformers.CLIPTextConfig(**{**TEXT_CFG, "eos_token_id": eos_token_id})
    torch_cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    ours_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    torch.manual_seed(0)
    ref = randomise(torch_cls(config).eval(), 3)
    ours = ours_cls.from_config(config.to_dict())
    state = {k: v for k, v in torch_state_to_numpy(ref).items() if not k.endswith("position_ids")}
    ours.load_arrays(state)
    ids = rng.integers(3, 45, size=(2, 10))
    ids[0, 6] = 49  # EOS in the middle (first occurrence wins), padding after it repeats EOS
    ids[0, 7:] = 49
    ids[1, 9] = 49
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    got = ours(ids, attention_mask=mask, output_hidden_states=True)
    assert_close(got.last_hidden_state, expected.last_hidden_state, rel_l2=1e-5, where="text last_hidden_state")
    pooled_name = "text_embeds" if with_projection else "pooler_output"
    assert_close(got[pooled_name], expected[pooled_name], rel_l2=1e-5, where=f"text {pooled_name}")
    assert len(got.hidden_states) == len(expected.hidden_states)
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        assert_close(a, b, rel_l2=1e-5, where=f"text hidden_states[{i}]")
