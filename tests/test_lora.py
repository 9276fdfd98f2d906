"""LoRA as AnimateDiff users load it, proven against diffusers' own load_lora_weights / set_adapters.

The LoRA files are made here, seeded: a style LoRA with peft on diffusers' tiny AnimateDiff UNet (attention q/k/v/out,
feed-forward, proj_in/out, time_emb_proj and LoCon on the resnet 3x3 convs; motion modules excluded) and its CLIP
text encoder, saved by diffusers' `save_lora_weights`; the same pairs renamed to kohya/A1111 names with `.alpha`
tensors; a motion LoRA on every motion-module attention in the layout of the diffusers-converted releases
(`unet.<...>.attn1.processor.to_q_lora.down.weight`) and its twin in the original AnimateDiff release layout (a torch
pickle with `temporal_transformer` / `attention_blocks` names)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from converters import ConversionError  # noqa: E402
from mindport import AnimateDiffPipeline  # noqa: E402
from parity.fixtures import build  # noqa: E402
from tests.helpers import assert_close, rel_l2  # noqa: E402

PRESET = "animatediff-tiny"
RUN = dict(prompt="the cat walking at night", negative_prompt="a dog, static", num_frames=4, num_inference_steps=2,
           guidance_scale=7.5, height=16, width=16)
STYLE_TARGETS = (r"^(?!.*motion_modules).*(to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out"
                 r"|conv1|conv2|time_emb_proj)$")


def _latents():
    return np.random.Generator(np.random.PCG64(7)).standard_normal((1, 4, 4, 8, 8)).astype(np.float32)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("lora")
    folder = build(PRESET)
    ref = diffusers.AnimateDiffPipeline.from_pretrained(str(folder))
    # 1. style LoRA with peft (random A and B), written by diffusers: peft layout + adapter config in the metadata
    torch.manual_seed(0)
    ucfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=STYLE_TARGETS)
    tcfg = LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    ref.unet.add_adapter(ucfg)
    ref.text_encoder.add_adapter(tcfg)
    usd, tsd = get_peft_model_state_dict(ref.unet), get_peft_model_state_dict(ref.text_encoder)
    scale_b = 0.15  # B around the size of a trained LoRA's, so that the style moves frames by a few percent
    usd = {k: v * scale_b if "lora_B" in k else v for k, v in usd.items()}
    tsd = {k: v * scale_b if "lora_B" in k else v for k, v in tsd.items()}
    diffusers.AnimateDiffPipeline.save_lora_weights(root / "peft", unet_lora_layers=usd, text_encoder_lora_layers=tsd,
                                                    unet_lora_adapter_metadata=ucfg.to_dict(),
                                                    text_encoder_lora_adapter_metadata=tcfg.to_dict())
    # 2. the same pairs with kohya/A1111 names and alpha 3 (scales 3/4 on the UNet, 3/2 on the text encoder)
    kohya = {}
    for comp, sd in (("lora_unet_", usd), ("lora_te_text_model_", tsd)):
        for key, v in sd.items():
            path, role = key.rsplit(".lora_", 1)
            name = comp + path.replace(".", "_")
            kohya[f"{name}.lora_{'down' if role.startswith('A') else 'up'}.weight"] = v.contiguous()
            kohya[f"{name}.alpha"] = torch.tensor(3.0)
    save_file(kohya, str(root / "style_kohya.safetensors"))
    # 3. a motion LoRA (rank 2) on every motion-module attention, in both release layouts
    gen = torch.Generator().manual_seed(1)
    motion_diffusers, motion_original = {}, {}
    for name, module in ref.unet.named_modules():
        if ".motion_modules." not in name or not name.endswith(("attn1", "attn2")):
            continue
        block, rest = name.split(".motion_modules.")
        j, _, k, attn = rest.split(".")
        original = f"{block}.motion_modules.{j}.temporal_transformer.transformer_blocks.{k}.attention_blocks." \
                   f"{int(attn[-1]) - 1}.processor"
        for proj, out_name in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")):
            w = module.get_submodule(out_name).base_layer.weight if hasattr(module.get_submodule(out_name), "base_layer") \
                else module.get_submodule(out_name).weight
            down = torch.randn(2, w.shape[1], generator=gen) * 0.2
            up = torch.randn(w.shape[0], 2, generator=gen) * 0.2
            for role, t in (("down", down), ("up", up)):
                motion_diffusers[f"unet.{name}.processor.{proj}_lora.{role}.weight"] = t
                motion_original[f"{original}.{proj}_lora.{role}.weight"] = t
    save_file(motion_diffusers, str(root / "motion_diffusers.safetensors"))
    torch.save(motion_original, str(root / "v2_lora_Test.ckpt"))
    return dict(folder=folder, peft=root / "peft" / "pytorch_lora_weights.safetensors",
                kohya=root / "style_kohya.safetensors", motion=root / "motion_diffusers.safetensors",
                original=root / "v2_lora_Test.ckpt", root=root)


def reference_frames(folder, loras, weights, **call):
    """diffusers' frames with `loras` [(file, adapter name)] loaded by its own load_lora_weights, set to `weights`."""
    ref = diffusers.AnimateDiffPipeline.from_pretrained(str(folder))
    ref.set_progress_bar_config(disable=True)
    for path, name in loras:
        ref.load_lora_weights(str(path), adapter_name=name)
    if loras:
        ref.set_adapters([n for _, n in loras], adapter_weights=weights)
    with torch.no_grad():
        return ref(**RUN, latents=torch.from_numpy(_latents()), output_type="np", **call).frames


def frames(pipe, **call):
    return np.asarray(pipe(**RUN, latents=_latents(), output_type="np", **call)[0])


@pytest.fixture(scope="module")
def pipe(files):
    p = AnimateDiffPipeline.from_pretrained(str(files["folder"]))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def plain(pipe):
    return frames(pipe)


def _weights(pipe):
    return {f"{c}.{n}": p.asnumpy().copy() for c in ("unet", "text_encoder")
            for n, p in getattr(pipe, c).parameters_and_names()}


def test_style_kohya_and_motion_lora_match_diffusers(files, pipe, plain):
    """A kohya-style style LoRA and a diffusers-layout motion LoRA at two pairs of scales: frames within 1e-4
    (fp32) of diffusers with the same files through its load_lora_weights / set_adapters; fused equals unfused within
    1e-5; unfuse_lora restores every weight bit for bit; unload gives the plain frames exactly."""
    before = _weights(pipe)
    pipe.load_lora_weights(str(files["kohya"]), adapter_name="style")
    pipe.load_lora_weights(str(files["motion"]), adapter_name="motion")
    assert pipe.get_active_adapters() == ["style", "motion"]
    assert pipe.get_list_adapters() == {"unet": ["style", "motion"], "text_encoder": ["style"]}
    for weights in ([0.7, 1.3], [1.0, -0.5]):
        pipe.set_adapters(["style", "motion"], adapter_weights=weights)
        ours = frames(pipe)
        expected = reference_frames(files["folder"], [(files["kohya"], "style"), (files["motion"], "motion")], weights)
        assert rel_l2(expected, plain) > 1e-2, "the LoRAs must move the frames visibly for the test to mean anything"
        assert_close(ours, expected, rel_l2=1e-4, where=f"style (kohya) + motion LoRA at {weights} vs diffusers")
        pipe.fuse_lora(lora_scale=1.0)
        assert_close(frames(pipe), ours, rel_l2=1e-5, where=f"fused vs unfused at {weights}")
        pipe.unfuse_lora()
        after = _weights(pipe)
        assert all(np.array_equal(after[k], before[k]) for k in before), "unfuse_lora must restore weights exactly"
        assert_close(frames(pipe), ours, rel_l2=0, where="unfused again")
    pipe.disable_lora()
    assert np.array_equal(frames(pipe), plain)
    pipe.enable_lora()
    pipe.fuse_lora(lora_scale=0.5)  # a fused adapter is unloaded with its weights restored
    pipe.unload_lora_weights()
    after = _weights(pipe)
    assert pipe.get_active_adapters() == [] and all(np.array_equal(after[k], v) for k, v in before.items())
    assert np.array_equal(frames(pipe), plain), "unload_lora_weights must give back the plain pipeline's frames"


def test_peft_file_matches_diffusers(files, pipe):
    """The peft-layout file diffusers' save_lora_weights wrote (alpha and rank from its adapter metadata: 8 / 4 on
    the UNet), with the motion LoRA: frames within 1e-4 of diffusers; the kohya twin (alpha 3) differs."""
    pipe.load_lora_weights(str(files["peft"].parent), adapter_name="style")
    pipe.load_lora_weights(str(files["motion"]), adapter_name="motion")
    try:
        pipe.set_adapters(["style", "motion"], [0.6, 1.0])
        ours = frames(pipe)
        expected = reference_frames(files["folder"], [(files["peft"], "style"), (files["motion"], "motion")], [0.6, 1.0])
        assert_close(ours, expected, rel_l2=1e-4, where="peft style + motion LoRA vs diffusers")
        plan = pipe.lora_plan(files["peft"])
        assert plan.layouts == ["peft"] and {round(e.scale, 6) for e in plan.entries} == {2.0, 1.0}
        assert any(e.kind == "conv" and e.path.endswith("conv1") for e in plan.entries)
    finally:
        pipe.unload_lora_weights()


def test_original_release_motion_lora_is_its_diffusers_twin(files, pipe):
    """The original AnimateDiff release layout (torch pickle) and its diffusers twin give identical frames; both map
    to the same modules with the same arrays."""
    a = pipe.lora_plan(files["original"])
    b = pipe.lora_plan(files["motion"])
    assert a.layouts == ["animatediff-original"] and b.layouts == ["diffusers-old"]
    assert [(e.path, e.scale) for e in a.entries] == [(e.path, e.scale) for e in b.entries]
    assert len(a.entries) == 4 * sum(1 for n, _ in pipe.unet.cells_and_names()
                                     if ".motion_modules." in n and n.endswith(("attn1", "attn2")))
    results = []
    for path in (files["original"], files["motion"]):
        pipe.load_lora_weights(str(path), adapter_name="zoom")
        pipe.set_adapters("zoom", 0.8)
        results.append(frames(pipe))
        pipe.unload_lora_weights()
    assert np.array_equal(results[0], results[1])


def _bad_files(files, root: Path):
    from safetensors.torch import load_file, save_file

    root.mkdir(parents=True, exist_ok=True)
    good = load_file(str(files["kohya"]))
    peft = load_file(str(files["peft"]))
    bad = {}

    def write(name, sd):
        save_file(sd, str(root / name))
        bad[name] = root / name

    k_up = next(k for k in good if k.endswith("attn1_to_q.lora_up.weight"))
    write("stray_key.safetensors", {**good, "lora_unet_down_blocks_0_attentions_0_nonexistent.lora_down.weight":
                                    torch.zeros(4, 32), "lora_unet_down_blocks_0_attentions_0_nonexistent.lora_up.weight":
                                    torch.zeros(32, 4)})
    write("rank_mismatch.safetensors", {**good, k_up: torch.zeros(good[k_up].shape[0], 3)})
    k_down = next(k for k in good if k.endswith("resnets_0_conv1.lora_down.weight"))
    write("conv_shape.safetensors", {**good, k_down: torch.zeros(4, 32, 1, 1)})
    write("missing_up.safetensors", {k: v for k, v in good.items() if k != k_up})
    # SDXL's second text encoder and its deeper UNet: another architecture
    write("sdxl.safetensors", {**good, "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                               torch.zeros(4, 32)})
    write("sdxl_unet.safetensors", {**peft, "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q.lora_A"
                                    ".weight": torch.zeros(4, 64)})
    write("unknown_format.safetensors", {**good, "lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a": torch.zeros(4, 4)})
    write("int_weights.safetensors", {**good, k_up: torch.zeros(good[k_up].shape, dtype=torch.int32)})
    (root / "truncated.safetensors").write_bytes(Path(files["kohya"]).read_bytes()[:200])
    bad["truncated.safetensors"] = root / "truncated.safetensors"
    bad["missing.safetensors"] = root / "missing.safetensors"
    return bad


def test_bad_lora_files_are_refused_in_one_line_and_change_nothing(files, pipe, plain, tmp_path):
    pipe.load_lora_weights(str(files["motion"]), adapter_name="motion")  # an adapter already active stays as it is
    try:
        with_motion = frames(pipe)
        before = _weights(pipe)
        for name, path in _bad_files(files, tmp_path).items():
            with pytest.raises(ConversionError) as err:
                pipe.load_lora_weights(str(path), adapter_name="bad")
            message = str(err.value)
            assert "\n" not in message and str(path) in message, f"{name}: {message}"
            assert pipe.get_active_adapters() == ["motion"], name
            after = _weights(pipe)
            assert all(np.array_equal(after[k], v) for k, v in before.items()), name
        with pytest.raises(ConversionError, match=r"^guoyww/animatediff-motion-lora-zoom-in: cannot fetch the LoRA "
                                                  r"from the Hub \(HF_HUB_OFFLINE"):
            pipe.load_lora_weights("guoyww/animatediff-motion-lora-zoom-in", adapter_name="zoom")
        with pytest.raises(ValueError, match="already in use"):
            pipe.load_lora_weights(str(files["kohya"]), adapter_name="motion")
        with pytest.raises(ValueError, match="no adapter named 'nope'"):
            pipe.set_adapters(["nope"])
        assert np.array_equal(frames(pipe), with_motion)
    finally:
        pipe.unload_lora_weights()
    assert np.array_equal(frames(pipe), plain)


def test_convert_with_lora_fuses_and_records(files, pipe, tmp_path, capsys):
    """`mindport convert SRC DST --lora FILE:SCALE ...` gives the frames of the unfused adapters at those weights
    (1e-5); the manifest records file, sha256, scale, layouts and touched weights; a refused LoRA exits 2 and
    leaves no DST and no staging folder."""
    import json

    from mindport.cli import main

    dst = tmp_path / "converted"
    assert main(["convert", str(files["folder"]), str(dst), "--lora", f"{files['kohya']}:0.7",
                 "--lora", f"{files['motion']}:1.3"]) == 0
    records = json.loads((dst / "manifest.json").read_text())["lora"]
    assert [(r["file"], r["scale"], r["sha256"]) for r in records] == [
        (str(files["kohya"]), 0.7, _sha(files["kohya"])), (str(files["motion"]), 1.3, _sha(files["motion"]))]
    assert records[0]["layouts"] == ["kohya"] and records[1]["layouts"] == ["diffusers-old"]
    assert "unet.down_blocks.0.resnets.0.conv1.weight" in records[0]["touched"]
    assert "text_encoder.encoder.layers.0.mlp.fc1.weight" in records[0]["touched"]
    assert all(".motion_modules." in t for t in records[1]["touched"])
    converted = AnimateDiffPipeline.from_pretrained(str(dst))
    converted.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(files["kohya"]), adapter_name="style")
    pipe.load_lora_weights(str(files["motion"]), adapter_name="motion")
    try:
        pipe.set_adapters(["style", "motion"], [0.7, 1.3])
        assert_close(frames(converted), frames(pipe), rel_l2=1e-5, where="convert --lora (fused) vs unfused adapters")
    finally:
        pipe.unload_lora_weights()
    bad = _bad_files(files, tmp_path / "bad")["rank_mismatch.safetensors"]
    capsys.readouterr()
    assert main(["convert", str(files["folder"]), str(tmp_path / "refused"), "--lora", str(bad)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (and a cleared progress bar)
    assert len(err) == 1 and err[0].startswith("mindport convert: error: ") and str(bad) in err[0], err
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused*"))


def test_parity_with_lora(files, tmp_path, capsys):
    """`mindport parity SRC --lora FILE:SCALE ...`: diffusers loads the files through load_lora_weights /
    set_adapters / fuse_lora, ours is converted with them fused; every module compares (peft's wrappers are gone),
    the report passes and records the files. A --converted folder without those LoRAs is refused."""
    import json

    from mindport.cli import main

    args = ["parity", str(files["folder"]), "--lora", f"{files['kohya']}:0.7", "--lora", f"{files['motion']}:1.3",
            "--steps", "2", "--no-isolation", "--no-floor", "--weight-samples", "2"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["passed"] and report["frames"]["rel_l2"] <= 1e-4 and not report["problems"]
    assert [(r["file"], r["scale"]) for r in report["settings"]["loras"]] == [(str(files["kohya"]), 0.7),
                                                                                (str(files["motion"]), 1.3)]
    plain = tmp_path / "plain"
    assert main(["convert", str(files["folder"]), str(plain)]) == 0
    capsys.readouterr()
    assert main([*args, "--converted", str(plain), "--out", str(tmp_path / "r2")]) == 2
    assert "records LoRAs" in capsys.readouterr().err
    # (ours is proven to carry the LoRAs by test_convert_with_lora_fuses_and_records, so the passing run above also
    # proves that the reference applied them: a plain reference would differ from ours by 20-40%)


def test_fp16_pipeline_with_loras_against_diffusers_fp32(files):
    """An fp16 pipeline runs the low-rank paths in fp16 (pairs cast to the layer's dtype) and fuses into fp16
    weights: frames within the fp16 bar (1e-2) of diffusers fp32 with the same LoRAs, fused and unfused alike."""
    import mindspore as ms

    pipe16 = AnimateDiffPipeline.from_pretrained(str(files["folder"]), mindspore_dtype=ms.float16)
    pipe16.set_progress_bar_config(disable=True)
    pipe16.load_lora_weights(str(files["kohya"]), adapter_name="style")
    pipe16.load_lora_weights(str(files["motion"]), adapter_name="motion")
    pipe16.set_adapters(["style", "motion"], [0.7, 1.3])
    expected = reference_frames(files["folder"], [(files["kohya"], "style"), (files["motion"], "motion")], [0.7, 1.3])
    assert_close(frames(pipe16), expected, rel_l2=1e-2, where="fp16 unfused LoRAs vs diffusers fp32")
    pipe16.fuse_lora()
    assert pipe16.unet.dtype == ms.float16
    assert_close(frames(pipe16), expected, rel_l2=1e-2, where="fp16 fused LoRAs vs diffusers fp32")


def test_call_time_lora_scale_matches_diffusers(files, pipe):
    """cross_attention_kwargs={"scale": 0.5} scales the unfused LoRA paths for one call, as diffusers does (text
    encoder and UNet): frames within 1e-4; the next call is back at full scale; other keys are refused."""
    pipe.load_lora_weights(str(files["kohya"]), adapter_name="style")
    pipe.load_lora_weights(str(files["motion"]), adapter_name="motion")
    try:
        pipe.set_adapters(["style", "motion"], [0.7, 1.3])
        full = frames(pipe)
        ours = frames(pipe, cross_attention_kwargs={"scale": 0.5})
        expected = reference_frames(files["folder"], [(files["kohya"], "style"), (files["motion"], "motion")],
                                    [0.7, 1.3], cross_attention_kwargs={"scale": 0.5})
        assert rel_l2(ours, full) > 1e-2
        assert_close(ours, expected, rel_l2=1e-4, where="call-time LoRA scale 0.5 vs diffusers")
        assert np.array_equal(frames(pipe), full)
        with pytest.raises(ValueError, match="only 'scale'"):
            frames(pipe, cross_attention_kwargs={"scale": 0.5, "foo": 1})
    finally:
        pipe.unload_lora_weights()


# ------------------------------------------------------------------------------------------------------------------
# converters.lora on its own: every layout row, alphas, refusals (no pipelines, milliseconds)
# ------------------------------------------------------------------------------------------------------------------

TARGETS = {
    "unet": {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (8, 6),
             "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": (6, 8),
             "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj": (12, 6),
             "down_blocks.0.resnets.0.conv1": (6, 4, 3, 3),
             "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_v": (6, 6),
             "down_blocks.0.temp_convs.0.conv1.2": (6, 4, 3, 1, 1)},
    "text_encoder": {"encoder.layers.0.self_attn.q_proj": (4, 4), "encoder.layers.0.mlp.fc1": (5, 4)},
}


def _refs(arrays: dict):
    from converters.safetensors_io import TensorRef

    return {k: TensorRef("mem", k, "F32", tuple(np.shape(v)), 0, 0, (lambda v=v: np.asarray(v, np.float32)))
            for k, v in arrays.items()}


def _pair(out, inp, r=2, conv=None):
    down = np.ones((r, inp, *conv)) if conv else np.ones((r, inp))
    up = np.ones((out, r, 1, 1)) if conv else np.ones((out, r))
    return down, up


def _plan(arrays, metadata=None):
    from converters.lora import map_lora

    return map_lora(_refs(arrays), metadata or {}, TARGETS, "mem.safetensors")


@pytest.mark.parametrize("down_key, up_key, component, path", [
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight", "unet",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
     "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight", "text_encoder", "encoder.layers.0.mlp.fc1"),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight", "unet",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.lora.down.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.lora.up.weight", "unet",
     "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight",
     "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight", "text_encoder",
     "encoder.layers.0.self_attn.q_proj"),
    ("text_encoder.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight",
     "text_encoder.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight", "text_encoder", "encoder.layers.0.mlp.fc1"),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight",
     "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight", "unet",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
     "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", "text_encoder",
     "encoder.layers.0.self_attn.q_proj"),
    ("down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.processor.to_v_lora"
     ".down.weight", "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1"
     ".processor.to_v_lora.up.weight", "unet", "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_v"),
    # a bare UNet file (no component prefix), as diffusers reads one
    ("down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.processor.to_v_lora.down.weight",
     "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.processor.to_v_lora.up.weight", "unet",
     "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_v"),
])
def test_layout_rows(down_key, up_key, component, path):
    out, inp = TARGETS[component][path]
    down, up = _pair(out, inp)
    (entry,) = _plan({down_key: down, up_key: up}).entries
    assert (entry.component, entry.path, entry.kind, entry.rank, entry.scale) == (component, path, "linear", 2, 1.0)


def test_alphas_and_locon():
    down, up = _pair(6, 4, r=4, conv=(3, 3))
    kohya = {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": down,
             "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": up,
             "lora_unet_down_blocks_0_resnets_0_conv1.alpha": np.float32(1.0)}
    (e,) = _plan(kohya).entries
    assert (e.kind, e.rank, e.alpha, e.scale) == ("conv", 4, 1.0, 0.25)
    peft = {"unet.down_blocks.0.resnets.0.conv1.lora_A.weight": down, "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": up}
    assert _plan(peft).entries[0].scale == 1.0  # no alpha anywhere: alpha = rank
    meta = lambda cfg: {"lora_adapter_metadata": __import__("json").dumps({f"unet.{k}": v for k, v in cfg.items()})}  # noqa: E731
    assert _plan(peft, meta({"r": 4, "lora_alpha": 8})).entries[0].scale == 2.0
    assert _plan(peft, meta({"r": 4, "lora_alpha": 8, "use_rslora": True})).entries[0].scale == 4.0
    assert _plan(peft, meta({"r": 4, "lora_alpha": 8, "alpha_pattern": {"resnets.0.conv1": 2}})).entries[0].scale == 0.5
    with pytest.raises(ConversionError, match="DoRA"):
        _plan(peft, meta({"r": 4, "lora_alpha": 8, "use_dora": True}))


def test_locon_on_a_temporal_conv3d():
    """kohya LoCon and peft on a Conv3d (3, 1, 1) (I2VGen-XL's TemporalConvLayer, SVD's temporal resnets): down
    (r, in, 3, 1, 1), up (out, r, 1, 1, 1); a 2-D up is refused naming both shapes."""
    down, up = np.ones((2, 4, 3, 1, 1)), np.ones((6, 2, 1, 1, 1))
    kohya = {"lora_unet_down_blocks_0_temp_convs_0_conv1_2.lora_down.weight": down,
             "lora_unet_down_blocks_0_temp_convs_0_conv1_2.lora_up.weight": up,
             "lora_unet_down_blocks_0_temp_convs_0_conv1_2.alpha": np.float32(1.0)}
    (e,) = _plan(kohya).entries
    assert (e.path, e.kind, e.rank, e.scale) == ("down_blocks.0.temp_convs.0.conv1.2", "conv", 2, 0.5)
    peft = {"unet.down_blocks.0.temp_convs.0.conv1.2.lora_A.weight": down,
            "unet.down_blocks.0.temp_convs.0.conv1.2.lora_B.weight": np.ones((6, 2, 1, 1))}
    with pytest.raises(ConversionError, match=r"has shape \(6, 2, 1, 1\), but unet.down_blocks.0.temp_convs.0.conv1.2 "
                                              r"\(weight \(6, 4, 3, 1, 1\)\) needs down \(2, 4, 3, 1, 1\) and up "
                                              r"\(6, 2, 1, 1, 1\)"):
        _plan(peft)


@pytest.mark.parametrize("arrays, message", [
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": np.ones((2, 6))},
     "has no up weight"),
    ({"unet.mid_block.attentions.0.proj_in.lora_A.weight": np.ones((2, 6)),
      "unet.mid_block.attentions.0.proj_in.lora_B.weight": np.ones((6, 2))}, "which does not exist"),
    ({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": np.ones((2, 6))}, "names no unet module"),
    # a Wan file on an AnimateDiff pipeline: another architecture
    ({"transformer.blocks.0.attn1.to_q.lora_A.weight": np.ones((2, 6))},
     r"is for the transformer, which this pipeline does not have \(it has text_encoder, unet\)"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": np.ones((2, 6))}, "is for the transformer"),
    # a bare file is read as a UNet LoRA (as diffusers does): a VAE key names no module of it
    ({"decoder.conv_in.lora_A.weight": np.ones((2, 4))}, "unet module 'decoder.conv_in'"),
    ({"unet.down_blocks.0.resnets.0.conv1.hada_w1_a": np.ones((2, 4))}, "matches no LoRA layout"),
    ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.ones((2, 4))}, "matches no LoRA layout"),
    ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": np.ones((2, 6)),
      "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": np.ones((8, 3))},
     r"has shape \(8, 3\), but unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q \(weight \(8, 6\)\)"),
    ({"unet.down_blocks.0.resnets.0.conv1.lora_A.weight": np.ones((2, 4)),
      "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": np.ones((6, 2))}, "needs down"),
    ({"vae.decoder.conv_in.lora_A.weight": np.ones((2, 4))}, "unet module 'vae.decoder.conv_in'"),
])
def test_refusals(arrays, message):
    with pytest.raises(ConversionError, match=message) as err:
        _plan(arrays)
    assert "\n" not in str(err.value) and str(err.value).startswith("mem.safetensors: ")


def test_kohya_name_fitting_two_modules_is_refused():
    from converters.lora import map_lora

    targets = {"unet": {"a.b_c": (4, 4), "a_b.c": (4, 4), "d.e": (4, 4)}}
    arrays = {"lora_unet_a_b_c.lora_down.weight": np.ones((2, 4)), "lora_unet_a_b_c.lora_up.weight": np.ones((4, 2))}
    with pytest.raises(ConversionError, match="fits several unet modules"):
        map_lora(_refs(arrays), {}, targets, "mem.safetensors")
    ok = {"lora_unet_d_e.lora_down.weight": np.ones((2, 4)), "lora_unet_d_e.lora_up.weight": np.ones((4, 2))}
    assert [e.path for e in map_lora(_refs(ok), {}, targets, "mem.safetensors").entries] == ["d.e"]
