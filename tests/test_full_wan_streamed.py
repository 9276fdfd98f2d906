"""The streamed comparison (parity/full/streamed.py) on tiny 2-block Wan transformer and UMT5 checkpoints: streaming
one block at a time gives the numbers of the whole-model comparison; the checkpoint writer's sharded layout loads in
diffusers / transformers and in mindport; the Wan released configs hang together."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.capture import Capture  # noqa: E402
from parity.compare import compare_modules  # noqa: E402
from parity.full.build import CONFIGS, MODELS, STREAMED  # noqa: E402
from parity.full.streamed import Checkpoint, run_streamed, spec_for, write_checkpoint  # noqa: E402
from parity.store import ActivationStore  # noqa: E402

WAN = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
           text_dim=16, freq_dim=16, ffn_dim=24, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
           eps=1e-6, image_dim=12, added_kv_proj_dim=16, rope_max_seq_len=32)
UMT5 = dict(vocab_size=100, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=16, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
            is_encoder_decoder=True, dense_act_fn="gelu_new", is_gated_act=True, model_type="umt5",
            tie_word_embeddings=False)


def _inputs(kind):
    rng = np.random.Generator(np.random.PCG64(0))
    if kind == "wan":
        return {"hidden_states": rng.standard_normal((1, 4, 2, 4, 4)).astype(np.float32),
                "timestep": np.array([500], np.int64),
                "encoder_hidden_states": rng.standard_normal((1, 512, 16)).astype(np.float32),
                "encoder_hidden_states_image": rng.standard_normal((1, 5, 12)).astype(np.float32)}, "sample"
    ids = rng.integers(2, 100, (2, 12))
    mask = np.ones((2, 12), np.int64)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}, "last_hidden_state"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed")
    # fp32 so that the whole models (loaded by the libraries) hold exactly the streamed blocks' values; tiny shards
    return {"wan": write_checkpoint("WanTransformer3DModel", WAN, root / "wan", 3, "fp32", shard_bytes=4000, log=None),
            "umt5": write_checkpoint("UMT5EncoderModel", UMT5, root / "umt5", 3, "fp32", shard_bytes=4000, log=None)}


def _whole(folder, kind, inputs, field):
    """The whole-model comparison: both models in memory, every module captured (as parity.full.components)."""
    import mindspore as ms

    from mindport.models import model_class

    store = ActivationStore()
    if kind == "wan":
        from diffusers import WanTransformer3DModel as Ref

        cls = "WanTransformer3DModel"
    else:
        from transformers import UMT5EncoderModel as Ref

        cls = "UMT5EncoderModel"
    model = Ref.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    ref = Capture("torch", store=store)
    ref.attach_torch("x", model)
    with torch.no_grad():
        ref_out = getattr(model(**{k: torch.from_numpy(v) for k, v in inputs.items()}), field).numpy()
    ref.detach()
    ours_model = model_class(cls).from_pretrained(str(folder))
    ours = Capture("mindspore", reference=ref)
    ours.attach_mindspore("x", ours_model)
    our_out = getattr(ours_model(**{k: ms.Tensor(v) for k, v in inputs.items()}), field).asnumpy()
    ours.detach()
    _, layers, _ = compare_modules(ref, ours, "fp32")
    store.close()
    return {r["module"]: r["rel_l2"] for r in layers}, ref_out, our_out


@pytest.mark.parametrize("kind", ["wan", "umt5"])
def test_streamed_chaining_our_outputs_gives_the_whole_model_numbers(checkpoints, kind):
    inputs, field = _inputs(kind)
    whole, _, _ = _whole(checkpoints[kind], kind, inputs, field)
    row = run_streamed(checkpoints[kind], "x", inputs, field, ("fp32",), floor=False, feed="own", log=None)["fp32"]
    streamed = {r["module"]: r["rel_l2"] for r in row["per_module"]}
    alias = dict(spec_for(row["class"]).aliases)
    whole = {alias.get(m, m): v for m, v in whole.items()}
    # the streamed run also pairs the modules the libraries name differently (UMT5: encoder.embed_tokens / shared)
    assert set(whole) <= set(streamed) and set(streamed) - set(whole) <= set(alias.values())
    for m, v in whole.items():
        # the same computation up to float32 summation-order noise (a 1e-7 spread in either run): equal to 1e-7
        assert streamed[m] == pytest.approx(v, abs=1e-7), m
    assert row["passed"] and row["converter_audit_passed"] and not row["coverage"]["reference_only"]
    assert row["modules_compared"] > 25 and len(row["per_block"]) == 2


@pytest.mark.parametrize("kind", ["wan", "umt5"])
def test_streamed_reference_feed_judges_each_block_on_the_reference_inputs(checkpoints, kind):
    inputs, field = _inputs(kind)
    rows = run_streamed(checkpoints[kind], "x", inputs, field, ("fp32", "fp16"), floor=True, log=None)
    fp32, fp16 = rows["fp32"], rows["fp16"]
    assert fp32["passed"], fp32["first_divergence"]
    assert fp32["worst_module"]["rel_l2"] < 2e-6 and fp32["output"]["rel_l2"] < 1e-6
    # each block's float64 re-run gives its modules a floor (not those the reference computes in float32 even then,
    # e.g. diffusers' FP32LayerNorm: fixed bar instead, as in the whole-model comparison)
    floors = {r["module"]: r["floor"] for r in fp32["per_module"]}
    for b in ("blocks.0", "blocks.1") if kind == "wan" else ("encoder.block.0", "encoder.block.1"):
        assert floors[f"{b}.attn1.to_q" if kind == "wan" else f"{b}.layer.0.SelfAttention.q"] > 0
    assert fp16["passed"] and 1e-5 < fp16["worst_module"]["rel_l2"] < 5e-2
    assert fp32["memory"]["peak_anon_mb"] >= 0 and fp32["streamed"]["blocks"] == 2


def test_a_planted_weight_error_in_one_block_is_found_in_that_block(checkpoints, tmp_path):
    """Scale one tensor of block 1 in the file our side reads: the reference's copy stays; only block 1 fails."""
    import shutil

    from converters.safetensors_io import load_safetensors, save_arrays

    folder = tmp_path / "wan"
    shutil.copytree(checkpoints["wan"], folder)
    ckpt = Checkpoint(folder, spec_for("WanTransformer3DModel"))
    path = ckpt.file_of["blocks.1.ffn.net.2.weight"]
    arrays = load_safetensors(path)
    arrays["blocks.1.ffn.net.2.weight"] = arrays["blocks.1.ffn.net.2.weight"] * 1.01
    save_arrays(path, arrays)
    # the reference reads the original tensor: patch its reader for this key only
    original = Checkpoint.torch_tensor

    def reference_reads_original(self, key, rows=None):
        t = original(self, key, rows)
        return t / 1.01 if key == "blocks.1.ffn.net.2.weight" else t

    Checkpoint.torch_tensor = reference_reads_original
    try:
        inputs, field = _inputs("wan")
        row = run_streamed(folder, "x", inputs, field, ("fp32",), floor=False, log=None)["fp32"]
    finally:
        Checkpoint.torch_tensor = original
    assert not row["passed"]
    assert row["first_divergence"]["module"] == "blocks.1.ffn.net.2"
    assert [b["passed"] for b in row["per_block"]] == [True, False]


def test_checkpoint_writer_layout_loads_in_the_libraries(checkpoints):
    folder = checkpoints["umt5"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and "encoder.embed_tokens.weight" not in index["weight_map"]
    # drawn per (seed, name): re-drawing one tensor alone gives the stored values
    from parity.full.streamed import draw

    stored = Checkpoint(folder, spec_for("UMT5EncoderModel")).torch_tensor("encoder.block.1.layer.1.DenseReluDense.wo.weight")
    again = torch.cat(list(draw("encoder.block.1.layer.1.DenseReluDense.wo.weight", (16, 24), 3)))
    assert torch.equal(stored, again)


def test_wan_released_configs_hang_together():
    t2v, i2v = CONFIGS / "wan2.1-t2v-1.3b", CONFIGS / "wan2.1-i2v-14b-480p"
    # the 14B pipeline's text encoder and VAE are the 1.3B's (compared once, under wan2.1-t2v-1.3b)
    for folder in ("text_encoder", "vae"):
        assert (t2v / folder / "config.json").read_text() == (i2v / folder / "config.json").read_text()
    assert STREAMED["wan2.1-t2v-1.3b"] == {"text_encoder"}
    assert STREAMED["wan2.1-i2v-14b-480p"] == {"transformer", "text_encoder"}
    for name in ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b-480p"):
        index = json.loads((CONFIGS / name / "model_index.json").read_text())
        assert {f for f, _, _ in MODELS[name]} <= set(index)
