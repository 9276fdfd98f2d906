"""LoRA on Wan 2.1 (WanPipeline, WanImageToVideoPipeline) as diffusers' WanLoraLoaderMixin loads it, proven against
diffusers' own load_lora_weights / set_adapters on the same tiny random checkpoints and the same initial latents.

The files are seeded (parity.lora.tiny_wan_loras): a diffusers/peft file (rank 4, lora_alpha 8 and lora_bias in its
adapter metadata, lora_B biases) and a file in the original Wan layout (`diffusion_model.`: lora_down / lora_up,
alpha, diff_b, the I2V image projections k_img / v_img, ffn.0 / ffn.2, time / text / image embedders, head.head, zero
norm diffs). Its musubi-tuner and lora_A / lora_B spellings and its diffusers twin (diffusers' own conversion of it)
are derived here."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from converters import ConversionError  # noqa: E402
from mindport.pipelines import WanImageToVideoPipeline, WanPipeline  # noqa: E402
from parity.adapter import quiet_reference_libraries  # noqa: E402
from parity.fixtures import build, synthetic_image  # noqa: E402
from parity.lora import tiny_wan_loras  # noqa: E402

from helpers import assert_close, rel_l2  # noqa: E402

quiet_reference_libraries()

T2V = dict(prompt="the cat in a hat", negative_prompt="blurry", height=32, width=48, num_frames=5,
           num_inference_steps=2, guidance_scale=5.0)
I2V = dict(T2V, height=32, width=64, num_frames=9)
LATENTS = {"t2v": (1, 4, 2, 8, 12), "i2v": (1, 4, 3, 8, 16)}


def _latents(kind):
    return np.random.default_rng(3).standard_normal(LATENTS[kind]).astype(np.float32)


def _call(kind):
    return dict(T2V) if kind == "t2v" else dict(I2V, image=synthetic_image(90, 50, 1))


@pytest.fixture(scope="module")
def case():
    """{kind: (folder, peft file, original file, our pipeline)}."""
    out = {}
    for kind, preset, cls in (("t2v", "wan-t2v-tiny", WanPipeline), ("i2v", "wan-i2v-tiny", WanImageToVideoPipeline)):
        folder = build(preset)
        pipe = cls.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        out[kind] = (folder, *tiny_wan_loras(folder), pipe)
    return out


def frames(pipe, kind, **call):
    return np.asarray(pipe(**{**_call(kind), **call}, latents=_latents(kind), output_type="np")[0])


def reference(kind, folder, loras, weights=None, pipe=None, **call):
    """diffusers' frames with `loras` [(file, adapter name, load kwargs)] through its load_lora_weights."""
    if pipe is None:
        name = "WanPipeline" if kind == "t2v" else "WanImageToVideoPipeline"
        pipe = getattr(diffusers, name).from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for path, name, *kw in loras:
        pipe.load_lora_weights(str(path), adapter_name=name, **(kw[0] if kw else {}))
    if weights is not None:
        pipe.set_adapters([n for _, n, *_ in loras], adapter_weights=weights)
    with torch.no_grad():
        return np.asarray(pipe(**{**_call(kind), **call}, latents=torch.from_numpy(_latents(kind)),
                               output_type="np").frames)


def _params(pipe, comp="transformer"):
    return {n: p.asnumpy().copy() for n, p in getattr(pipe, comp).parameters_and_names()}


def test_t2v_peft_and_original_loras_match_diffusers(case):
    """A peft file (with lora_B biases) and an original-layout file at two weights: frames within 1e-4 (fp32) of
    diffusers; fused equals unfused within 1e-5 and unfuse restores every parameter bit for bit;
    attention_kwargs={"scale": 0.5} matches diffusers' call-time scale; unload gives the plain frames exactly."""
    folder, peft, original, pipe = case["t2v"]
    plain, before = frames(pipe, "t2v"), _params(pipe)
    pipe.load_lora_weights(str(peft), adapter_name="peft")
    pipe.load_lora_weights(str(original), adapter_name="orig")
    assert pipe.get_list_adapters() == {"transformer": ["peft", "orig"]}
    pipe.set_adapters(["peft", "orig"], adapter_weights=[0.7, 1.3])
    ours = frames(pipe, "t2v")
    ref_pipe = diffusers.WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    expected = reference("t2v", folder, [(peft, "peft"), (original, "orig")], [0.7, 1.3], pipe=ref_pipe)
    assert rel_l2(expected, plain) > 5e-2, "the LoRAs must move the frames for the test to mean anything"
    assert_close(ours, expected, rel_l2=1e-4, where="Wan T2V peft + original LoRAs at [0.7, 1.3] vs diffusers")
    scaled_ref = reference("t2v", folder, [], pipe=ref_pipe, attention_kwargs={"scale": 0.5})
    scaled = frames(pipe, "t2v", attention_kwargs={"scale": 0.5})
    assert rel_l2(scaled, ours) > 1e-2
    assert_close(scaled, scaled_ref, rel_l2=1e-4, where="attention_kwargs scale 0.5 vs diffusers")
    assert np.array_equal(frames(pipe, "t2v"), ours), "the call-time scale must not outlive its call"
    with pytest.raises(ValueError, match=r"attention_kwargs: only 'scale' \(the LoRA scale\) is supported, got "
                                         r"\['x'\]"):
        frames(pipe, "t2v", attention_kwargs={"scale": 0.5, "x": 1})
    pipe.fuse_lora()
    assert_close(frames(pipe, "t2v"), ours, rel_l2=1e-5, where="fused vs unfused")
    pipe.unfuse_lora()
    after = _params(pipe)
    assert all(np.array_equal(after[k], v) for k, v in before.items()), "unfuse_lora must restore weights exactly"
    pipe.fuse_lora(lora_scale=0.5)
    pipe.unload_lora_weights()
    assert pipe.get_active_adapters() == [] and all(np.array_equal(_params(pipe)[k], v) for k, v in before.items())
    assert np.array_equal(frames(pipe, "t2v"), plain), "unload_lora_weights must give back the plain frames"


def test_i2v_original_layout_matches_diffusers_and_its_twin(case, tmp_path):
    """The original Wan layout on I2V (k_img / v_img image cross-attention, image embedder, diff_b biases, alphas,
    norm diffs skipped): frames within 1e-4 of diffusers; diffusers' own conversion of the file (peft layout,
    alphas folded into the pairs, diff_b as lora_B.bias) gives our frames within 1e-6; the lora_A / lora_B spelling
    maps to the same entries."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
    from safetensors.torch import load_file, save_file

    folder, _, original, pipe = case["i2v"]
    plan = pipe.lora_plan(str(original))
    assert plan.layouts == ["wan-original"] and len(plan.skipped) == 4  # blocks.{0,1}.norm3.diff / diff_b
    paths = {e.path for e in plan.entries}
    assert {"blocks.0.attn2.add_k_proj", "blocks.1.attn2.add_v_proj", "blocks.0.ffn.net.0.proj", "proj_out",
            "condition_embedder.image_embedder.ff.net.2", "condition_embedder.time_proj"} <= paths
    assert all(e.bias is not None and e.bias_scale == 1.0 for e in plan.entries)
    assert {round(e.scale, 6) for e in plan.entries if e.path.startswith("blocks.")} == {1.5}
    pipe.load_lora_weights(str(original), adapter_name="orig")
    try:
        pipe.set_adapters("orig", 0.8)
        ours = frames(pipe, "i2v")
        expected = reference("i2v", folder, [(original, "orig")], [0.8])
        assert_close(ours, expected, rel_l2=1e-4, where="Wan I2V original-layout LoRA vs diffusers")
    finally:
        pipe.unload_lora_weights()
    sd = load_file(str(original))
    twin = tmp_path / "twin.safetensors"
    converted = _convert_non_diffusers_wan_lora_to_diffusers({k: v.clone() for k, v in sd.items()})  # (in place)
    save_file({k: v.contiguous() for k, v in converted.items()}, str(twin))
    assert pipe.lora_plan(str(twin)).layouts == ["peft"]
    pipe.load_lora_weights(str(twin), adapter_name="twin")
    try:
        pipe.set_adapters("twin", 0.8)
        assert_close(frames(pipe, "i2v"), ours, rel_l2=1e-6, where="original layout vs its diffusers twin")
    finally:
        pipe.unload_lora_weights()
    ab = tmp_path / "lora_ab.safetensors"
    save_file({k.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B."): v for k, v in sd.items()},
              str(ab))
    _same_entries(pipe.lora_plan(str(ab)), plan)


def _same_entries(a, b, paths=None):
    keep = (lambda e: True) if paths is None else (lambda e: e.path in paths)
    ea, eb = [e for e in a.entries if keep(e)], [e for e in b.entries if keep(e)]
    assert [(e.path, e.rank, e.scale) for e in ea] == [(e.path, e.rank, e.scale) for e in eb]
    assert all(np.array_equal(x.down.load(), y.down.load()) and np.array_equal(x.up.load(), y.up.load())
               for x, y in zip(ea, eb))


def test_musubi_layout_is_the_original_blocks(case, tmp_path):
    """musubi-tuner's spelling (lora_unet_blocks_N_self_attn_q...) of the original file's blocks maps to the same
    modules, ranks, scales and arrays (diffusers reads it with the same table)."""
    from safetensors.torch import load_file, save_file

    _, _, original, pipe = case["i2v"]
    sd = load_file(str(original))
    musubi = {}
    for key, v in sd.items():
        name, _, suffix = key[len("diffusion_model."):].partition(".lora_")
        if name.startswith("blocks.") and "norm" not in name and not key.endswith(".diff_b"):
            module = name[: -len(".alpha")] if name.endswith(".alpha") else name
            tail = "alpha" if name.endswith(".alpha") else f"lora_{suffix}"
            musubi[f"lora_unet_{module.replace('.', '_')}.{tail}"] = v
    save_file(musubi, str(tmp_path / "musubi.safetensors"))
    plan = pipe.lora_plan(str(tmp_path / "musubi.safetensors"))
    assert plan.layouts == ["wan-musubi"] and len(plan.entries) == 2 * 12
    _same_entries(plan, pipe.lora_plan(str(original)), {e.path for e in plan.entries})


def test_two_experts_load_into_transformer_2(tmp_path):
    """Wan 2.2 A14B's two experts: load_into_transformer_2=True puts the LoRA on the second expert only, as
    diffusers does (frames within 1e-4); fuse_lora's default (the transformer) leaves it unfused there, as
    diffusers'; components=["transformer_2"] fuses it."""
    import copy

    from parity.fixtures import randomise
    from parity.wan import PRESETS, tiny_components

    parts = tiny_components(PRESETS["wan-t2v-tiny"], 3)
    second = randomise(copy.deepcopy(parts["transformer"]), 99)
    ref = diffusers.WanPipeline(**parts, transformer_2=second, boundary_ratio=0.875)
    ref.save_pretrained(str(tmp_path / "ref"))
    peft, _ = tiny_wan_loras(build("wan-t2v-tiny"))
    ours = WanPipeline.from_pretrained(str(tmp_path / "ref"))
    ours.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=4, guidance_scale_2=3.0)
    plain = frames(ours, "t2v", **call)
    first = _params(ours, "transformer")
    ours.load_lora_weights(str(peft), adapter_name="low", load_into_transformer_2=True)
    assert ours.get_list_adapters() == {"transformer_2": ["low"]}
    got = frames(ours, "t2v", **call)
    expected = reference("t2v", None, [(peft, "low", {"load_into_transformer_2": True})], pipe=ref, **call)
    assert rel_l2(got, plain) > 1e-2
    assert_close(got, expected, rel_l2=1e-4, where="LoRA on transformer_2 vs diffusers")
    ours.fuse_lora()
    assert not ours._lora.fused and np.array_equal(frames(ours, "t2v", **call), got)
    ours.fuse_lora(components=["transformer_2"])
    assert_close(frames(ours, "t2v", **call), got, rel_l2=1e-5, where="transformer_2 fused vs unfused")
    assert all(np.array_equal(_params(ours, "transformer")[k], v) for k, v in first.items())
    ours.unload_lora_weights()
    assert np.array_equal(frames(ours, "t2v", **call), plain)
    single = WanPipeline.from_pretrained(str(build("wan-t2v-tiny")))
    with pytest.raises(ValueError, match="load_into_transformer_2=True, but WanPipeline has no transformer_2"):
        single.load_lora_weights(str(peft), load_into_transformer_2=True)


def _bad_files(case, root):
    from safetensors.torch import load_file, save_file

    folder, peft, original, _ = case["t2v"]
    good, orig = load_file(str(peft)), load_file(str(original))
    attn = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    animatediff_like = {f"{attn}.lora_A.weight": torch.ones(2, 8), f"{attn}.lora_B.weight": torch.ones(8, 2)}
    files = {
        "unknown_key": {**good, "transformer.blocks.0.attn1.to_q.hada_w1_a": torch.zeros(4, 4)},
        "no_such_module": {**good, "transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(4, 24),
                           "transformer.blocks.7.attn1.to_q.lora_B.weight": torch.zeros(24, 4)},
        "rank_mismatch": {**good, "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 3)},
        "bias_shape": {**good, "transformer.blocks.0.attn1.to_q.lora_B.bias": torch.zeros(23)},
        "full_diff": {**orig, "diffusion_model.blocks.0.self_attn.q.diff": torch.zeros(24, 24)},
        "animatediff": animatediff_like,
        "original_other_arch": {**orig, "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 40)},
    }
    out = {}
    for name, sd in files.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / f"{name}.safetensors"))
        out[name] = root / f"{name}.safetensors"
    return out


@pytest.mark.parametrize("name, message", [
    ("unknown_key", "matches no LoRA layout"),
    ("no_such_module", "targets transformer module 'blocks.7.attn1.to_q', which does not exist"),
    ("rank_mismatch", r"has shape \(24, 3\), but transformer.blocks.0.attn1.to_q \(weight \(24, 24\)\) needs down "
                      r"\(4, 24\) and up \(24, 4\)"),
    ("bias_shape", r"bias delta must be floating point \(24,\)"),
    ("full_diff", r"is a full weight difference \(.diff\)"),
    ("animatediff", r"is for the unet, which this pipeline does not have \(it has transformer\)"),
    ("original_other_arch", r"has shape \(2, 40\), but transformer.blocks.0.attn1.to_q"),
])
def test_bad_files_refused_in_one_line_pipeline_unchanged(case, tmp_path, name, message):
    _, peft, _, pipe = case["t2v"]
    pipe.load_lora_weights(str(peft), adapter_name="kept")
    try:
        before = _params(pipe)
        path = _bad_files(case, tmp_path)[name]
        with pytest.raises(ConversionError, match=message) as err:
            pipe.load_lora_weights(str(path), adapter_name="bad")
        assert "\n" not in str(err.value) and str(err.value).startswith(str(path))
        assert pipe.get_active_adapters() == ["kept"] and list(pipe._lora.adapters) == ["kept"]
        after = _params(pipe)
        assert all(np.array_equal(after[k], v) for k, v in before.items())
    finally:
        pipe.unload_lora_weights()


def test_convert_and_convert_lora_on_wan(case, tmp_path):
    """`mindport convert SRC DST --lora FILE:SCALE` on a Wan folder fuses into the transformer (frames within 1e-5 of
    the unfused adapters) and records the touched weights and biases; `mindport convert-lora` writes the LoRA in
    mindport naming (diff_b biases included), which loads back to identical frames."""
    from mindport.cli import main

    folder, peft, original, pipe = case["t2v"]
    dst = tmp_path / "converted"
    assert main(["convert", str(folder), str(dst), "--lora", f"{original}:0.6", "--lora", f"{peft}:1.2"]) == 0
    records = json.loads((dst / "manifest.json").read_text())["lora"]
    assert [r["layouts"] for r in records] == [["wan-original"], ["peft"]]
    assert "transformer.blocks.0.attn1.to_out.0.bias" in records[0]["touched"]
    converted = WanPipeline.from_pretrained(str(dst))
    converted.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(original), adapter_name="orig")
    pipe.load_lora_weights(str(peft), adapter_name="peft")
    try:
        pipe.set_adapters(["orig", "peft"], [0.6, 1.2])
        unfused = frames(pipe, "t2v")
        assert_close(frames(converted, "t2v"), unfused, rel_l2=1e-5, where="convert --lora (fused) vs unfused")
    finally:
        pipe.unload_lora_weights()
    assert main(["convert-lora", str(original), str(tmp_path / "ml"), "--pipeline", str(dst)]) == 0
    pipe.load_lora_weights(str(tmp_path / "ml"), adapter_name="mine")
    pipe.load_lora_weights(str(original), adapter_name="orig")
    try:
        assert pipe.lora_plan(str(tmp_path / "ml")).layouts == ["mindport"]
        pipe.set_adapters("mine", 0.9)
        mine = frames(pipe, "t2v")
        pipe.set_adapters("orig", 0.9)
        assert np.array_equal(mine, frames(pipe, "t2v"))
    finally:
        pipe.unload_lora_weights()


def test_parity_with_lora_on_wan(case, tmp_path):
    """`mindport parity SRC --lora FILE:SCALE` on a Wan folder: diffusers loads the original-layout and peft files
    through load_lora_weights / set_adapters / fuse_lora, ours is converted with them fused; the report passes."""
    from mindport.cli import main

    folder, peft, original, _ = case["t2v"]
    out = tmp_path / "r"
    assert main(["parity", str(folder), "--lora", f"{original}:0.6", "--lora", f"{peft}:1.2", "--steps", "2",
                 "--no-isolation", "--no-floor", "--weight-samples", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["frames"]["rel_l2"] <= 1e-4 and not report["problems"]
    assert [r["scale"] for r in report["settings"]["loras"]] == [0.6, 1.2]


def test_fused_weights_equal_diffusers_bit_for_bit(case):
    """fuse_lora with the peft file (lora_B biases) and the original-layout file (alpha folded into the pair as
    diffusers folds it) at [0.8, 1.2] on I2V gives diffusers' fused weights and biases bit for bit (what the parity
    report's weight-mapping check relies on: it finds a reference tensor among ours by value)."""
    folder, peft, original, _ = case["i2v"]
    ref = diffusers.WanImageToVideoPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    ours = WanImageToVideoPipeline.from_pretrained(str(folder))
    for pipe in (ref, ours):
        pipe.load_lora_weights(str(peft), adapter_name="peft")
        pipe.load_lora_weights(str(original), adapter_name="orig")
        pipe.set_adapters(["peft", "orig"], [0.8, 1.2])
        pipe.fuse_lora()
    ref.unload_lora_weights()
    expected = {k: v.numpy() for k, v in ref.transformer.state_dict().items()}
    fused = [f"{path}.{name}" for _, path, name in ours._lora.fused]
    assert len(fused) == 64 and sum(k.endswith(".bias") for k in fused) == 32
    got = dict(_params(ours))
    assert [k for k in fused if not np.array_equal(got[k], expected[k])] == []


def test_t2v_lora_on_i2v_and_fp16(case):
    """A LoRA made for the T2V transformer (no image projections) on the I2V pipeline, which diffusers pads with zero
    add_k_proj / add_v_proj pairs: frames within 1e-4 of diffusers (fp32); the same adapters on an fp16 pipeline
    (pairs and bias deltas cast to the layers' dtype, Wan's float32-kept modules stay float32) within the fp16 bar
    (1e-2) of diffusers fp32, unfused and fused."""
    import mindspore as ms

    t2v_peft = case["t2v"][1]
    folder, _, original, pipe = case["i2v"]
    assert not any("add_k_proj" in e.path for e in pipe.lora_plan(str(t2v_peft)).entries)
    pipe.load_lora_weights(str(t2v_peft), adapter_name="t2v")
    try:
        ours = frames(pipe, "i2v")
    finally:
        pipe.unload_lora_weights()
    expected = reference("i2v", folder, [(t2v_peft, "t2v")])
    assert_close(ours, expected, rel_l2=1e-4, where="T2V LoRA on Wan I2V vs diffusers")
    half = WanImageToVideoPipeline.from_pretrained(str(folder), mindspore_dtype=ms.float16)
    half.set_progress_bar_config(disable=True)
    half.load_lora_weights(str(t2v_peft), adapter_name="t2v")
    assert_close(frames(half, "i2v"), expected, rel_l2=1e-2, where="fp16 unfused LoRA vs diffusers fp32")
    half.fuse_lora()
    assert half.transformer.blocks[0].attn1.to_q.weight.dtype == ms.float16  # fused in the weights' dtype
    assert_close(frames(half, "i2v"), expected, rel_l2=1e-2, where="fp16 fused LoRA vs diffusers fp32")
