"""`mindport export`: MindSpore folders back to PyTorch, bit for bit.

- every registered tiny pipeline (each fixture preset of converters/registry.py): convert, then export, gives the
  source's safetensors tensors exactly (names, dtypes, shapes, bytes), and diffusers / transformers load every
  exported component with no missing, unexpected or mismatched keys;
- diffusers' own pipelines produce identical frames from the export and from the source (SVD and Wan T2V, 2 steps:
  bit-identical tensors and configs imply it for the other pipelines, so they are not run);
- a weight changed on the MindSpore side (load, change, save_pretrained, export) comes out with exactly the new
  values, and nothing else changes;
- original single files (SD 1.5 LDM, SVD generative-models, AnimateDiff motion modules, Wan-AI release files) round
  trip through convert and `export --format original` bit for bit (keys the conversion drops and the MindSpore side
  cannot hold — EMA copies, schedule buffers, OpenCLIP's text tower — are listed in the manifest, not invented);
- the rule tables read backwards: every row of every registered converter and original layout is invertible, each
  transform's inverse undoes it, an uninvertible row is refused by name;
- bad input exits 2 with one line and writes nothing.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from converters import converter_for, registry  # noqa: E402
from converters.base import INVERSE_TRANSFORMS, TRANSFORMS, NotInvertible, Rule, invert_rule  # noqa: E402
from converters.export import export, sinusoid_table  # noqa: E402
from converters.safetensors_io import read_header  # noqa: E402
from mindport.cli import main  # noqa: E402
from mindport.loading import convert_checkpoint  # noqa: E402
from parity.adapter import adapter_for, quiet_reference_libraries  # noqa: E402
from parity.fixtures import build, randomise  # noqa: E402

PRESETS = [p for row in registry.PIPELINES for p in row.fixtures]
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def tensors(path: Path) -> dict:
    """{name: (dtype, shape, bytes)} of a safetensors file, read with numpy only."""
    refs, _ = read_header(path)
    data = Path(path).read_bytes()
    return {k: (r.dtype, tuple(r.shape), data[r.offset:r.offset + r.nbytes]) for k, r in refs.items()}


def assert_same_file(got: Path, want: Path, missing_ok=()):
    a, b = tensors(got), tensors(want)
    assert set(a) == set(b) - set(missing_ok), (f"{got}: names differ: extra {sorted(set(a) - set(b))[:4]}, "
                                                 f"missing {sorted(set(b) - set(a) - set(missing_ok))[:4]}")
    for k in a:
        assert a[k][:2] == b[k][:2], f"{got}: {k}: {a[k][:2]} != {b[k][:2]}"
        assert a[k][2] == b[k][2], f"{got}: {k}: bytes differ"


def assert_same_folder(got: Path, want: Path):
    """Every weight file of the source pipeline folder has its twin in the export, bit for bit."""
    compared = 0
    for comp in sorted(p for p in want.iterdir() if p.is_dir()):
        for name in WEIGHT_FILES:
            if (comp / name).exists():
                assert (got / comp.name / name).exists(), f"{got / comp.name / name} not written"
                assert_same_file(got / comp.name / name, comp / name)
                compared += 1
    assert compared >= 3
    return compared


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """preset -> (source folder, converted folder, exported folder), built on first use."""
    root = tmp_path_factory.mktemp("export")
    cache = {}

    def get(preset: str):
        if preset not in cache:
            src = build(preset)
            convert_checkpoint(src, root / f"{preset}-ms", progress=False)
            export(root / f"{preset}-ms", root / f"{preset}-pt")
            cache[preset] = (src, root / f"{preset}-ms", root / f"{preset}-pt")
        return cache[preset]

    return get


# ---------------------------------------------------------------------------------------------------------------
# diffusers folders: every registered tiny pipeline
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_convert_then_export_is_the_identity(exported, preset):
    src, converted, out = exported(preset)
    assert_same_folder(out, src)
    assert json.loads((out / "model_index.json").read_text()) == json.loads((src / "model_index.json").read_text())
    for comp in src.iterdir():  # scheduler, tokenizer, processors: copied
        if comp.is_dir() and not (comp / "config.json").exists():
            for f in comp.iterdir():
                assert (out / comp.name / f.name).read_bytes() == f.read_bytes(), f
    manifest = json.loads((out / "mindport_export.json").read_text())
    for name, comp in manifest["components"].items():
        if "audit" in comp:
            audit = comp["audit"]
            assert audit["passed"] and audit["used_once"] == audit["parameters"], (name, audit)
            assert all(len(f["sha256"]) == 64 for f in comp["source_files"])
    assert not manifest.get("not_restored"), manifest.get("not_restored")


@pytest.mark.parametrize("preset", [row.fixtures[0] for row in registry.PIPELINES])
def test_reference_libraries_load_the_export_without_missing_keys(exported, preset):
    quiet_reference_libraries()
    _, _, out = exported(preset)
    index = json.loads((out / "model_index.json").read_text())
    loaded = 0
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None or \
                not (out / name / "config.json").exists():
            continue
        cls = getattr(diffusers if entry[0] == "diffusers" else transformers, entry[1])
        _, info = cls.from_pretrained(str(out / name), output_loading_info=True)
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        assert not problems, f"{preset} {name}: {problems}"
        loaded += 1
    assert loaded >= 3


def _tiny_models():
    """Registered models no tiny pipeline holds as a component: built here, seeded, saved by diffusers/transformers."""
    from tests.test_single_file import SD_CASES

    text = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=8, projection_dim=12)
    return {
        "UNet2DConditionModel": lambda: diffusers.UNet2DConditionModel(**SD_CASES["2lvl"]["unet"]),
        "Transformer2DModel": lambda: diffusers.Transformer2DModel(num_attention_heads=2, attention_head_dim=4,
                                                                   in_channels=8, norm_num_groups=4,
                                                                   cross_attention_dim=12),
        "CLIPTextModelWithProjection": lambda: transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(**text)),
    }


def _fixture_classes() -> dict:
    out = {}
    for preset in PRESETS:
        index = json.loads((build(preset) / "model_index.json").read_text())
        for name, entry in index.items():
            if isinstance(entry, list) and len(entry) == 2 and entry[1] in registry.MODEL_ROWS:
                out.setdefault(entry[1], (preset, name))
    return out


def test_every_registered_model_is_covered():
    """Each registered model class is exported by a test here: as a component of a tiny pipeline, or built alone."""
    assert set(registry.MODEL_ROWS) <= set(_fixture_classes()) | set(_tiny_models())


@pytest.mark.parametrize("class_name", ["UNet2DConditionModel", "Transformer2DModel", "CLIPTextModelWithProjection"])
def test_registered_models_outside_the_fixtures_round_trip(tmp_path, class_name):
    torch.manual_seed(0)
    model = randomise(_tiny_models()[class_name](), 7)
    model.save_pretrained(tmp_path / "src")
    convert_checkpoint(tmp_path / "src", tmp_path / "ms", progress=False)
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "pt")]) == 0
    name = next(n for n in WEIGHT_FILES if (tmp_path / "src" / n).exists())
    assert_same_file(tmp_path / "pt" / name, tmp_path / "src" / name)
    quiet_reference_libraries()
    _, info = type(model).from_pretrained(str(tmp_path / "pt"), output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


def test_fp16_variant_round_trips(tmp_path):
    src = build("wan-t2v-tiny")
    convert_checkpoint(src, tmp_path / "ms", variant="fp16", progress=False)
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "pt")]) == 0
    for comp in ("transformer", "vae", "text_encoder"):
        name = "model" if comp == "text_encoder" else "diffusion_pytorch_model"
        assert_same_file(tmp_path / "pt" / comp / f"{name}.safetensors", src / comp / f"{name}.fp16.safetensors")


@pytest.mark.parametrize("preset, component, prefix", [("animatediff-tiny", "text_encoder", "text_model."),
                                                       ("wan-i2v-tiny", "image_encoder", "vision_model.")])
def test_prefixed_transformers_spelling_round_trips(tmp_path, preset, component, prefix):
    """transformers 4 and released files prefix CLIP's tower (`text_model.`, `vision_model.`); transformers 5 saves
    these two bare. The converters accept both; the export gives the source's spelling back (recorded by convert)."""
    from converters.safetensors_io import load_safetensors, save_arrays

    src = build(preset) / component
    folder = tmp_path / "prefixed"
    folder.mkdir()
    shutil.copy(src / "config.json", folder / "config.json")
    save_arrays(folder / "model.safetensors", {prefix + k: v for k, v in load_safetensors(src / "model.safetensors").items()},
                {"format": "pt"})
    convert_checkpoint(folder, tmp_path / "ms", progress=False)
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "pt")]) == 0
    assert_same_file(tmp_path / "pt" / "model.safetensors", folder / "model.safetensors")


def test_export_dtype_casts(exported, tmp_path):
    _, converted, _ = exported("svd-tiny")
    export(converted / "unet", tmp_path / "unet16", dtype="fp16")
    got = tensors(tmp_path / "unet16" / "diffusion_pytorch_model.safetensors")
    assert {v[0] for v in got.values()} == {"F16"}
    src = tensors(build("svd-tiny") / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert got == src  # fp32 rounded to fp16 by numpy = torch's .half(): the fixture's fp16 variant


@pytest.mark.parametrize("preset", ["svd-tiny", "wan-t2v-tiny"])
def test_diffusers_frames_identical_from_the_export(exported, preset):
    """Bit-identical tensors and equivalent configs imply this for every pipeline; run for two, 2 steps each."""
    quiet_reference_libraries()
    src, _, out = exported(preset)
    adapter = adapter_for(registry.pipeline_for_fixture(preset).name)
    kwargs = adapter.call_kwargs({**adapter.settings(src), "steps": 2, "seed": 0})
    frames = []
    for folder in (src, out):
        pipe = adapter.load_reference(folder)
        frames.append(np.asarray(pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames))
    assert frames[0].shape == frames[1].shape and np.array_equal(frames[0], frames[1])


def test_export_needs_no_torch(exported, tmp_path):
    """converters.export reads and writes safetensors with numpy: it runs with torch, diffusers, transformers and
    mindspore unimportable."""
    import subprocess
    import sys

    _, converted, _ = exported("animatediff-tiny")
    code = ("import sys\n"
            "for m in ('torch', 'diffusers', 'transformers', 'mindspore', 'safetensors'): sys.modules[m] = None\n"
            "from converters.export import export\n"
            f"export({str(converted)!r}, {str(tmp_path / 'pt')!r})\n"
            f"export({str(converted / 'motion_adapter')!r}, {str(tmp_path / 'orig')!r}, fmt='original')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert_same_folder(tmp_path / "pt", build("animatediff-tiny"))


# ---------------------------------------------------------------------------------------------------------------
# a weight changed on the MindSpore side
# ---------------------------------------------------------------------------------------------------------------
def test_changed_parameter_comes_out_exactly(exported, tmp_path):
    import mindspore as ms

    from mindport import WanPipeline

    src, converted, _ = exported("wan-t2v-tiny")
    pipe = WanPipeline.from_pretrained(converted)
    param = dict(pipe.transformer.parameters_and_names())["blocks.0.attn1.to_q.weight"]
    new = (param.asnumpy() * np.float32(1.5) + np.float32(0.25)).astype(np.float32)
    param.set_data(ms.Tensor(new))
    pipe.save_pretrained(tmp_path / "tuned")
    assert main(["export", str(tmp_path / "tuned"), str(tmp_path / "pt")]) == 0
    got = tensors(tmp_path / "pt" / "transformer" / "diffusion_pytorch_model.safetensors")
    want = tensors(src / "transformer" / "diffusion_pytorch_model.safetensors")
    assert set(got) == set(want)
    assert got["blocks.0.attn1.to_q.weight"][2] == new.tobytes()
    assert got["blocks.0.attn1.to_q.weight"][2] != want["blocks.0.attn1.to_q.weight"][2]
    assert all(got[k] == want[k] for k in want if k != "blocks.0.attn1.to_q.weight")
    for comp in ("vae", "text_encoder"):
        name = "model" if comp == "text_encoder" else "diffusion_pytorch_model"
        assert_same_file(tmp_path / "pt" / comp / f"{name}.safetensors", src / comp / f"{name}.safetensors")
    quiet_reference_libraries()  # diffusers loads the whole exported pipeline (tokenizer and scheduler included)
    ref = diffusers.WanPipeline.from_pretrained(str(tmp_path / "pt"))
    assert torch.equal(ref.transformer.blocks[0].attn1.to_q.weight, torch.from_numpy(new))


def test_saved_model_without_kept_buffers_recomputes_them(exported, tmp_path):
    """A model saved by save_pretrained carries no buffers.safetensors: the motion modules' position tables are
    recomputed (float64 sin/cos of the same float32 angles, rounded once). PyTorch's float32 sin/cos are less exact
    at large angles, so the source's tables differ on a few percent of the entries, by at most ~2e-6."""
    from mindport import MotionAdapter

    src, converted, _ = exported("animatediff-tiny")
    MotionAdapter.from_pretrained(converted / "motion_adapter").save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "buffers.safetensors").exists()
    assert main(["export", str(tmp_path / "saved"), str(tmp_path / "pt")]) == 0
    got = tensors(tmp_path / "pt" / "diffusion_pytorch_model.safetensors")
    want = tensors(src / "motion_adapter" / "diffusion_pytorch_model.safetensors")
    assert set(got) == set(want)
    for k in want:
        if k.endswith(".pe"):
            a, b = (np.frombuffer(x[2], np.float32).reshape(x[1]) for x in (got[k], want[k]))
            assert np.abs(a - b).max() <= 4e-6 and np.mean(a != b) < 0.1, k
        else:
            assert got[k] == want[k], k
    cfg = json.loads((src / "motion_adapter" / "config.json").read_text())
    table = sinusoid_table(cfg["motion_max_seq_length"], cfg["block_out_channels"][0])
    assert table.shape == want["down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe"][1]


# ---------------------------------------------------------------------------------------------------------------
# original single files
# ---------------------------------------------------------------------------------------------------------------
def test_sd15_single_file_round_trip(tmp_path):
    from tests.test_single_file import make_sd_folder, write_sd15_file

    folder = make_sd_folder(tmp_path / "sd", "2lvl")
    path = write_sd15_file(folder, tmp_path / "sd15.safetensors")
    convert_checkpoint(path, tmp_path / "ms", progress=False, config_dir=folder)
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "orig"), "--format", "original"]) == 0
    assert_same_file(tmp_path / "orig" / "ldm-sd15.safetensors", path, missing_ok={"alphas_cumprod", "model_ema.decay"})
    manifest = json.loads((tmp_path / "orig" / "mindport_export.json").read_text())
    lost = sorted(k for entry in manifest["not_restored"].values() for k in entry["keys"])
    assert lost == ["alphas_cumprod", "model_ema.decay"]
    # diffusers reads the exported file into the same weights as the original file
    quiet_reference_libraries()
    a = diffusers.UNet2DConditionModel.from_single_file(str(tmp_path / "orig" / "ldm-sd15.safetensors"),
                                                        config=str(folder), subfolder="unet")
    b = diffusers.UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_sd15_file_plus_motion_module_round_trip(tmp_path):
    """An AnimateDiff folder converted from an SD 1.5 file and a motion-module file exports as those two files."""
    from safetensors.torch import save_file

    from tests.test_animatediff_convert import to_original
    from tests.test_single_file import make_sd_folder, write_sd15_file

    folder = make_sd_folder(tmp_path / "sd", "2lvl")
    path = write_sd15_file(folder, tmp_path / "sd15.safetensors")
    ucfg = json.loads((folder / "unet" / "config.json").read_text())
    torch.manual_seed(0)
    adapter = randomise(diffusers.MotionAdapter(block_out_channels=tuple(ucfg["block_out_channels"]),
                                                motion_layers_per_block=1, motion_num_attention_heads=2,
                                                motion_norm_num_groups=4, motion_max_seq_length=8), 5)
    mm = tmp_path / "mm_sd_v15.safetensors"
    save_file({k: v.contiguous() for k, v in to_original(adapter.state_dict()).items()}, str(mm))
    cfg = tmp_path / "config"  # heads and norm groups do not show in a motion module's shapes
    shutil.copytree(folder, cfg, ignore=shutil.ignore_patterns("*.safetensors"))
    adapter.save_config(cfg / "motion_adapter")
    assert main(["convert", str(path), str(tmp_path / "ms"), "--config", str(cfg), "--motion-adapter", str(mm)]) == 0
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "orig"), "--format", "original"]) == 0
    assert_same_file(tmp_path / "orig" / "ldm-sd15.safetensors", path, missing_ok={"alphas_cumprod", "model_ema.decay"})
    assert_same_file(tmp_path / "orig" / "motion_module.safetensors", mm)


def test_full_size_rows_write_every_parameter_back():
    """Released sizes (SD 1.5, SVD-xt built-in configs; models on the meta device, names and shapes only): every
    parameter is written back by exactly one row, each output name once, splits regrouped (OpenCLIP's in_proj)."""
    from converters.export import plan_names
    from converters.safetensors_io import TensorRef
    from converters.single_file import SD15, SVD

    for layout in (SD15, SVD):
        for name, (cls, _, rows) in layout.components.items():
            cfg = {k: v for k, v in layout.defaults[name].items() if not k.startswith("_") and k != "architectures"}
            with torch.device("meta"):
                if cls == "CLIPTextModel":
                    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg))
                elif cls == "CLIPVisionModelWithProjection":
                    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**cfg))
                else:
                    model = getattr(diffusers, cls)(**cfg)
            refs = {k: TensorRef("-", k, "F32", tuple(v.shape), 0, 0) for k, v in model.state_dict().items()
                    if not k.endswith("position_ids")}
            outs = plan_names(rows(layout.defaults[name]), refs, strict=True, where=name, layout=layout.name)
            assert sum(len(o.refs) for o in outs) == len(refs) and len({o.name for o in outs}) == len(outs)
            assert all(o.name.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.",
                                          "conditioner.")) for o in outs)


def test_svd_single_file_round_trip(tmp_path):
    from tests.test_single_file import write_svd_file

    folder = build("svd-tiny")
    path = write_svd_file(folder, tmp_path / "svd_xt.safetensors")
    convert_checkpoint(path, tmp_path / "ms", progress=False, config_dir=folder)
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "orig"), "--format", "original"]) == 0
    clip = "conditioner.embedders.0.open_clip.model."
    unused = {clip + k for k in ("token_embedding.weight", "positional_embedding", "ln_final.weight",
                                 "text_projection", "logit_scale")} | {"conditioner.embedders.3.encoder.encoder.conv_in.weight"}
    assert_same_file(tmp_path / "orig" / "sgm-svd.safetensors", path, missing_ok=unused)
    # and it converts again to the same MindSpore weights
    convert_checkpoint(tmp_path / "orig" / "sgm-svd.safetensors", tmp_path / "ms2", progress=False, config_dir=folder)
    for comp in ("unet", "vae", "image_encoder"):
        assert_same_file(tmp_path / "ms2" / comp / "mindspore_model.safetensors",
                         tmp_path / "ms" / comp / "mindspore_model.safetensors")


def test_motion_module_round_trip(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    from tests.test_animatediff_convert import to_original

    src, converted, _ = exported("animatediff-tiny")
    state = load_file(str(src / "motion_adapter" / "diffusion_pytorch_model.safetensors"))
    mm = tmp_path / "mm_sd_v15.safetensors"
    save_file({k: v.contiguous() for k, v in to_original(state).items()}, str(mm))
    convert_checkpoint(mm, tmp_path / "ms", progress=False)
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "orig"), "--format", "original"]) == 0
    assert_same_file(tmp_path / "orig" / "motion_module.safetensors", mm)
    # the adapter of a diffusers pipeline folder, exported in the original layout: the same file
    assert main(["export", str(converted / "motion_adapter"), str(tmp_path / "orig2"), "--format", "original"]) == 0
    assert_same_file(tmp_path / "orig2" / "motion_module.safetensors", mm)


def test_wan_release_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    from tests.test_wan_convert import released_config, wan_transformer_key, wan_umt5_key, wan_vae_key

    src = build("wan-t2v-tiny")
    rel = tmp_path / "Wan2.1-T2V-tiny"
    rel.mkdir()
    (rel / "config.json").write_text(json.dumps(released_config(
        json.loads((src / "transformer" / "config.json").read_text()), "t2v")))
    vcfg = json.loads((src / "vae" / "config.json").read_text())
    writers = {"transformer/diffusion_pytorch_model": ("diffusion_pytorch_model", wan_transformer_key),
               "vae/diffusion_pytorch_model": ("Wan2.1_VAE", lambda k: wan_vae_key(k, vcfg)),
               "text_encoder/model": ("models_t5_umt5-xxl-enc-bf16", wan_umt5_key)}
    for source, (stem, key) in writers.items():
        state = load_file(str(src / f"{source}.safetensors"))
        save_file({key(k): v for k, v in state.items() if k != "encoder.embed_tokens.weight"},
                  str(rel / f"{stem}.safetensors"))
    shutil.copytree(src / "tokenizer", rel / "google" / "umt5-xxl")
    assert main(["convert", str(rel), str(tmp_path / "ms")]) == 0
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "orig"), "--format", "original"]) == 0
    for f in rel.glob("*.safetensors"):
        assert_same_file(tmp_path / "orig" / f.name, f)
    assert (tmp_path / "orig" / "google" / "umt5-xxl" / "tokenizer_config.json").exists()
    # the exported folder is a release folder again: it converts to the same MindSpore weights
    assert main(["convert", str(tmp_path / "orig"), str(tmp_path / "ms2")]) == 0
    for comp in ("transformer", "vae", "text_encoder"):
        assert_same_file(tmp_path / "ms2" / comp / "mindspore_model.safetensors",
                         tmp_path / "ms" / comp / "mindspore_model.safetensors")


def test_wan_clip_round_trip(tmp_path):
    from safetensors.torch import save_file

    from tests.test_wan_convert import WAN_CLIP, wan_clip_state

    torch.manual_seed(0)
    model = randomise(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**WAN_CLIP)), 0)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors"
    save_file({k: v.contiguous() for k, v in wan_clip_state(state).items()}, str(path))
    convert_checkpoint(path, tmp_path / "ms", progress=False)
    assert main(["export", str(tmp_path / "ms"), str(tmp_path / "orig"), "--format", "original"]) == 0
    dropped = {"log_scale", "textual.token_embedding.weight", "visual.head"}  # not held by a CLIPVisionModel
    assert_same_file(tmp_path / "orig" / path.name, path, missing_ok=dropped)
    manifest = json.loads((tmp_path / "orig" / "mindport_export.json").read_text())
    assert sorted(manifest["not_restored"]["."]["keys"]) == sorted(dropped)


# ---------------------------------------------------------------------------------------------------------------
# the rule tables read backwards
# ---------------------------------------------------------------------------------------------------------------
def _layout_rows():
    from converters import wan_original as wan
    from converters.single_file import LAYOUTS

    rows = {}
    for layout in LAYOUTS.values():
        for name, (_, _, make) in layout.components.items():
            rows[f"{layout.name}/{name}"] = make(layout.defaults[name])
    rows.update({"wan/transformer": wan.TRANSFORMER_ROWS, "wan/umt5": wan.UMT5_ROWS, "wan/clip": wan.CLIP_ROWS,
                 "wan/vae": wan.vae_rows({}), "wan/umt5-transformers": wan.UMT5_TRANSFORMERS_ALIAS_ROWS})
    rows.update({f"registry/{name}": converter_for(name).rules for name in registry.MODEL_ROWS})
    return rows


@pytest.mark.parametrize("table", list(_layout_rows()))
def test_every_row_is_invertible(table):
    rows = _layout_rows()[table]
    for rule in rows:
        for inv in invert_rule(rule):
            assert inv.transform in TRANSFORMS


def test_inverse_transforms_undo_the_transforms(rng):
    shapes = {"conv1x1_to_linear": (6, 4, 1, 1), "linear_to_conv1x1": (6, 4), "transpose": (5, 3),
              "drop_unit_axes": (1, 7, 4), "identity": (3, 2)}
    for name, shape in shapes.items():
        a = rng.standard_normal(shape).astype(np.float32)
        inverse, shape_of = INVERSE_TRANSFORMS[name]
        target_shape = {"conv1x1_to_linear": (6, 4), "linear_to_conv1x1": (6, 4, 1, 1), "transpose": (3, 5),
                        "drop_unit_axes": (7, 4), "identity": shape}[name]
        b = TRANSFORMS[name](a, target_shape)
        assert b.shape == target_shape and shape_of(target_shape) == shape
        assert np.array_equal(TRANSFORMS[inverse](b, shape), a), name


@pytest.mark.parametrize("rule, needle", [
    (Rule(r"a\.\d+\.b", "c"), "no single spelling"),
    (Rule(r"a\.(\d+)\.(\w+)", r"c.\1"), "does not keep group"),
    (Rule(r"a\.(x)", r"b.\1", "squash"), "declares no inverse"),
])
def test_uninvertible_rows_are_refused_by_name(rule, needle):
    with pytest.raises(NotInvertible, match=needle):
        invert_rule(rule)


# ---------------------------------------------------------------------------------------------------------------
# bad input: exit 2, one line, nothing written
# ---------------------------------------------------------------------------------------------------------------
def _refused(capsys, args, out: Path, needle: str):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    siblings = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not siblings, f"temporary folder left behind: {siblings}"


def test_bad_inputs(exported, tmp_path, capsys):
    src, converted, _ = exported("svd-tiny")
    out = tmp_path / "out"
    _refused(capsys, ["export", str(src), str(out)], out, "not a mindport folder")
    assert not out.exists()
    _refused(capsys, ["export", str(tmp_path / "nowhere"), str(out)], out, "no such file or folder")
    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    (broken / "unet" / "mindspore_model.safetensors").unlink()
    _refused(capsys, ["export", str(broken), str(out)], out, "mindspore_model.safetensors")
    assert not out.exists()
    truncated = tmp_path / "truncated"
    shutil.copytree(converted, truncated)
    w = truncated / "vae" / "mindspore_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    _refused(capsys, ["export", str(truncated), str(out)], out, "truncated")
    assert not out.exists()
    _refused(capsys, ["export", str(converted), str(out), "--format", "onnx"], out, "--format 'onnx'")
    _refused(capsys, ["export", str(converted), str(out), "--dtype", "fp8"], out, "--dtype 'fp8'")
    assert not out.exists()
    i2v = exported("i2vgen-xl-tiny")[1]
    _refused(capsys, ["export", str(i2v), str(out), "--format", "original"], out, "no original single-file layout")
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(capsys, ["export", str(converted), str(out)], out, "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(converted), str(out), "--overwrite"]) == 0
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists() and not (out / "keep.txt").exists()
