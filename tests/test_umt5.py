"""Parity of UMT5EncoderModel (Wan 2.1's text encoder) against transformers 5 (tiny random configs, seeded): relative
position buckets, fp32 with and without padding, hidden_states, fp16, loading transformers' own folders (fp32 and
bf16, the tied embedding alias), config nulls and bad inputs."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mindspore as ms  # noqa: E402

from mindport.models.umt5 import UMT5EncoderModel, relative_position_buckets  # noqa: E402
from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close, torch_state_to_numpy  # noqa: E402

CONFIGS = {
    "gated-gelu": dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16,
                       feed_forward_proj="gated-gelu"),
    # heads * d_kv != d_model, more buckets, 3 layers, a plain (ungated) relu feed-forward
    "relu-3layer": dict(vocab_size=50, d_model=24, d_kv=10, d_ff=40, num_layers=3, num_heads=3,
                        relative_attention_num_buckets=12, relative_attention_max_distance=20,
                        feed_forward_proj="relu", layer_norm_epsilon=1e-5),
}
BATCH, LENGTH = 2, 40  # longer than max_distance: the logarithmic buckets saturate
PADDED_FROM = (29, 35)  # per sample: the first padding position


def reference(name, seed=0):
    torch.manual_seed(seed)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**CONFIGS[name]))
    return randomise(model, seed)


def state(ref):
    arrays = torch_state_to_numpy(ref)
    assert np.array_equal(arrays.pop("encoder.embed_tokens.weight"), arrays["shared.weight"])  # the tied alias
    return arrays


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    ref = reference(request.param)
    ours = UMT5EncoderModel.from_config(CONFIGS[request.param])
    ours.load_arrays(state(ref))
    return request.param, ref, ours


def inputs(vocab, seed=1):
    rng = np.random.Generator(np.random.PCG64(seed))
    ids = rng.integers(0, vocab, (BATCH, LENGTH))
    mask = np.ones((BATCH, LENGTH), np.int64)
    for i, start in enumerate(PADDED_FROM):
        mask[i, start:] = 0
        ids[i, start:] = 0  # pad token
    return ids, mask


def run_ref(ref, ids, mask=None, hidden=False):
    with torch.no_grad():
        return ref(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask),
                   output_hidden_states=hidden)


def test_parameter_names_are_transformers_state_dict():
    ref = reference("gated-gelu")
    ours = UMT5EncoderModel.from_config(CONFIGS["gated-gelu"])
    spec = ours.parameter_spec()
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
    assert {k: s for k, (s, _) in spec.items()} == want
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in spec  # per block in UMT5


@pytest.mark.parametrize("buckets,distance", [(8, 16), (12, 20), (32, 128), (64, 300)])
def test_relative_position_buckets_match_transformers(buckets, distance):
    att = reference("gated-gelu").encoder.block[0].layer[0].SelfAttention
    att.relative_attention_num_buckets, att.relative_attention_max_distance = buckets, distance
    length = 600
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    np.testing.assert_array_equal(relative_position_buckets(length, length, buckets, distance),
                                  att._relative_position_bucket(rel).numpy())


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padding-mask"])
def test_fp32_parity(pair, masked):
    name, ref, ours = pair
    ids, mask = inputs(CONFIGS[name]["vocab_size"])
    mask = mask if masked else None
    expected = run_ref(ref, ids, mask, hidden=True)
    out = ours(ids, mask, output_hidden_states=True)
    assert_close(out[0], expected.last_hidden_state, 1e-5, f"{name} last_hidden_state")
    assert len(out.hidden_states) == len(expected.hidden_states) == CONFIGS[name]["num_layers"] + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, expected.hidden_states)):
        assert_close(a, b, 1e-5, f"{name} hidden_states[{i}]")
    plain = ours(ms.Tensor(ids.astype(np.int32)), None if mask is None else ms.Tensor(mask))
    assert set(plain) == {"last_hidden_state"}
    assert_close(plain.last_hidden_state, expected.last_hidden_state, 1e-5, f"{name} without hidden_states")
    (last,) = ours(ids, mask, return_dict=False)
    assert_close(last, expected.last_hidden_state, 1e-5, f"{name} return_dict=False")


def test_fp16_against_torch_fp32(pair):
    name, ref, _ = pair
    ours = UMT5EncoderModel.from_config(CONFIGS[name])
    ours.load_arrays(state(ref), ms.float16)
    params = dict(ours.parameters_and_names())
    assert params["encoder.block.0.layer.1.DenseReluDense.wo.weight"].dtype == ms.float32  # _keep_in_fp32_modules
    assert params["encoder.block.0.layer.0.SelfAttention.q.weight"].dtype == ms.float16
    ids, mask = inputs(CONFIGS[name]["vocab_size"])
    out = ours(ids, mask).last_hidden_state
    assert out.dtype == ms.float16
    assert_close(out, run_ref(ref, ids, mask).last_hidden_state, 1e-2, f"{name} fp16")


def test_from_pretrained_transformers_folders(tmp_path):
    ref = reference("gated-gelu", seed=3)
    ids, mask = inputs(64, seed=4)
    ref.save_pretrained(tmp_path / "fp32")
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["architectures"] == ["UMT5EncoderModel"]
    ours = UMT5EncoderModel.from_pretrained(tmp_path / "fp32")
    assert_close(ours(ids, mask)[0], run_ref(ref, ids, mask).last_hidden_state, 1e-5, "from_pretrained fp32")
    # bf16 weights widen exactly: compare with transformers running the bf16-rounded weights in fp32
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    ref.float()
    ours = UMT5EncoderModel.from_pretrained(tmp_path / "bf16", mindspore_dtype=ms.float32)
    assert ours.dtype == ms.float32
    assert_close(ours(ids, mask)[0], run_ref(ref, ids, mask).last_hidden_state, 1e-5, "from_pretrained bf16->fp32")


@pytest.mark.parametrize("keys", ["both", "alias-only"])
def test_tied_embedding_alias(tmp_path, keys):
    """A full state_dict stores `encoder.embed_tokens.weight` beside `shared.weight` (dropped by a converter row);
    a file with the alias only fills `shared.weight` from it."""
    from safetensors.numpy import save_file

    ref = reference("gated-gelu", seed=5)
    arrays = torch_state_to_numpy(ref)
    if keys == "alias-only":
        arrays.pop("shared.weight")
    save_file(arrays, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["UMT5EncoderModel"], **CONFIGS["gated-gelu"]}))
    ids, mask = inputs(64)
    ours = UMT5EncoderModel.from_pretrained(tmp_path)
    assert_close(ours(ids, mask)[0], run_ref(ref, ids, mask).last_hidden_state, 1e-5, f"tied alias ({keys})")


def _one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("bad", ["vocab_size", "negative"])
def test_out_of_vocabulary_ids(pair, bad):
    name, _, ours = pair
    vocab = CONFIGS[name]["vocab_size"]
    ids, _ = inputs(vocab)
    ids[1, 3] = vocab if bad == "vocab_size" else -1
    with pytest.raises(ValueError) as e:
        ours(ids)
    _one_line_error(e, f"token id {ids[1, 3]},", f"[0, {vocab})")


def test_bad_inputs_and_configs():
    ours = UMT5EncoderModel.from_config(CONFIGS["gated-gelu"])
    ids, mask = inputs(64)
    with pytest.raises(ValueError) as e:
        ours(ids, mask[:, :10])
    _one_line_error(e, "attention_mask", "(2, 40)")
    with pytest.raises(ValueError) as e:
        UMT5EncoderModel.from_config(dict(CONFIGS["gated-gelu"], feed_forward_proj="gelu-gated"))
    _one_line_error(e, "feed_forward_proj", "gelu-gated")
    with pytest.raises(ValueError) as e:
        UMT5EncoderModel.from_config(dict(CONFIGS["gated-gelu"], feed_forward_proj="gated-tanh"))
    _one_line_error(e, "tanh", "gelu_new")
    with pytest.raises(ValueError) as e:
        UMT5EncoderModel.from_config(dict(CONFIGS["gated-gelu"], is_decoder=True))
    _one_line_error(e, "is_decoder")


@pytest.mark.parametrize("field", ["vocab_size", "d_kv", "relative_attention_num_buckets", "feed_forward_proj",
                                   "layer_norm_epsilon"])
def test_null_config_fields(tmp_path, field):
    """transformers refuses these null (strict config); so do we, in one line naming the field."""
    ref = reference("gated-gelu")
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(Exception):
        transformers.UMT5Config.from_dict({**cfg, field: None})
    (tmp_path / "config.json").write_text(json.dumps({**cfg, field: None}))
    with pytest.raises(Exception) as e:
        UMT5EncoderModel.from_pretrained(tmp_path)
    _one_line_error(e, repr(field), "null")


def test_nullable_config_fields(tmp_path):
    """Fields transformers accepts null (token ids the encoder does not use; num_decoder_layers) load and run."""
    ref = reference("gated-gelu")
    ref.save_pretrained(tmp_path)
    nulls = dict(pad_token_id=None, eos_token_id=None, decoder_start_token_id=None, num_decoder_layers=None)
    cfg = {**json.loads((tmp_path / "config.json").read_text()), **nulls}
    transformers.UMT5EncoderModel(transformers.UMT5Config.from_dict(cfg))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ids, mask = inputs(64)
    ours = UMT5EncoderModel.from_pretrained(tmp_path)
    assert_close(ours(ids, mask)[0], run_ref(ref, ids, mask).last_hidden_state, 1e-5, "nullable fields")
    # and fields left out take transformers' defaults
    defaults = UMT5EncoderModel.config_defaults()
    want = transformers.UMT5Config()
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj"):
        assert defaults[key] == getattr(want, key), key


def test_wan_bucket_settings_long_padded_sequence():
    """Wan's UMT5-XXL settings (32 buckets, max_distance 128, gelu_new) on 300 tokens padded to different lengths:
    distances well past max_distance, both directions."""
    cfg = dict(vocab_size=100, d_model=48, d_kv=12, d_ff=80, num_layers=2, num_heads=4)  # buckets: defaults 32/128
    torch.manual_seed(7)
    ref = randomise(transformers.UMT5EncoderModel(transformers.UMT5Config(**cfg)), 7)
    ours = UMT5EncoderModel.from_config(cfg)
    ours.load_arrays(state(ref))
    rng = np.random.Generator(np.random.PCG64(8))
    ids = rng.integers(1, 100, (2, 300))
    mask = np.ones((2, 300), np.int64)
    mask[0, 140:] = 0
    mask[1, 290:] = 0
    assert_close(ours(ids, mask)[0], run_ref(ref, ids, mask).last_hidden_state, 1e-5, "wan buckets, 300 tokens")
