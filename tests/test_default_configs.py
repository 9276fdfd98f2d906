"""Configs as diffusers and transformers write them (issue 15): a class saved with its defaults writes nulls
(`UNetSpatioTemporalConditionModel().save_config(d)` writes `"sample_size": null`), older files leave fields out.

- absent fields: every ported class's defaults are diffusers' / transformers' own;
- `Class().save_config(d)`, literally (built on torch's meta device), converts and is accepted as it is; the small
  default VAEs are built and compared in full;
- configs written by a diffusers / transformers model with small sizes and everything else default, then with
  every field that diffusers reads as None set to null, load through `from_pretrained` (config.json + safetensors,
  converted on load) and match the reference numerically (fp32, 1e-5);
- every other null field is refused in one line naming it, and diffusers indeed cannot build or run with it;
- the single-file row generators and the pipelines' size / scaling defaults follow the same rules.
"""

from __future__ import annotations

import inspect
import json
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from mindspore import Tensor  # noqa: E402

from converters import ConversionError, converter_for  # noqa: E402
from converters.ldm import sd_unet_rows, vae_rows  # noqa: E402
from converters.sgm import svd_unet_rows, svd_vae_rows  # noqa: E402
from mindport import image_processing as ip  # noqa: E402
from mindport.modeling import Config, check_null_config  # noqa: E402
from mindport.models import model_class  # noqa: E402
from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

# small sizes on top of a class's defaults (everything not named here stays as diffusers writes it)
SMALL = {
    "UNetSpatioTemporalConditionModel": dict(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16, num_attention_heads=(2, 4),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12),
    "AutoencoderKLTemporalDecoder": {},  # the default is one 64-channel level: small already
    "AutoencoderKL": {},
    "UNet2DConditionModel": dict(
        block_out_channels=(16, 32), norm_num_groups=4, layers_per_block=1, cross_attention_dim=12,
        attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "UNetMotionModel": dict(
        block_out_channels=(32, 64), layers_per_block=1, num_attention_heads=(2, 4), cross_attention_dim=16,
        norm_num_groups=8, motion_num_attention_heads=2, down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion")),
    "MotionAdapter": dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                          motion_norm_num_groups=8),
    "I2VGenXLUNet": dict(
        block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")),
}
DIFFUSERS_CLASSES = list(SMALL)
CLIP_CONFIGS = {"CLIPTextModel": transformers.CLIPTextConfig, "CLIPTextModelWithProjection": transformers.CLIPTextConfig,
                "CLIPVisionModelWithProjection": transformers.CLIPVisionConfig}


def _inputs(name: str, seed: int = 1) -> dict:
    """Forward arguments (numpy) for the small configs above."""
    rng = np.random.Generator(np.random.PCG64(seed))

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return {
        "UNetSpatioTemporalConditionModel": lambda: dict(sample=randn(1, 3, 8, 8, 8), timestep=np.asarray([10.0], np.float32),
                                                         encoder_hidden_states=randn(1, 1, 16),
                                                         added_time_ids=np.asarray([[6.0, 127.0, 0.02]], np.float32)),
        "AutoencoderKLTemporalDecoder": lambda: dict(sample=randn(2, 3, 16, 16), num_frames=2),
        "AutoencoderKL": lambda: dict(sample=randn(1, 3, 16, 16)),
        "UNet2DConditionModel": lambda: dict(sample=randn(1, 4, 8, 8), timestep=np.int64(10),
                                             encoder_hidden_states=randn(1, 3, 12)),
        "UNetMotionModel": lambda: dict(sample=randn(1, 4, 2, 8, 8), timestep=np.int64(10),
                                        encoder_hidden_states=randn(2, 3, 16)),
        "I2VGenXLUNet": lambda: dict(sample=randn(1, 4, 2, 8, 8), timestep=np.int64(10), fps=np.asarray([8]),
                                     image_latents=randn(1, 4, 2, 8, 8), image_embeddings=randn(1, 1, 32),
                                     encoder_hidden_states=randn(1, 3, 32)),
    }[name]()


def _torch_forward(ref, x: dict):
    args = {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in x.items()}
    with torch.no_grad():
        return ref(**args).sample


def _ours_forward(model, x: dict):
    return model(**x).sample


def _nulls(name: str) -> dict:
    """Every field diffusers reads as None, set to null: those whose default is None, and our `nullable_config`."""
    cls = model_class(name)
    sig = inspect.signature(cls.__init__).parameters
    return {k: None for k, p in sig.items() if k != "self" and (p.default is None or k in cls.nullable_config)}


def _refused(name: str) -> list[str]:
    """Fields we refuse as null: a non-None default and not nullable."""
    cls = model_class(name)
    sig = inspect.signature(cls.__init__).parameters
    return [k for k, p in sig.items() if k != "self" and p.default is not inspect.Parameter.empty
            and p.default is not None and k not in cls.nullable_config]


def _default_config(name: str, tmp_path) -> dict:
    """`Class().save_config(d)`, literally: the config diffusers writes for the class's defaults."""
    with torch.device("meta"):
        getattr(diffusers, name)().save_config(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


def _roundtrip(ref, name: str, folder, edit=None):
    """diffusers / transformers `save_pretrained` -> (optionally edited config.json) -> our `from_pretrained`."""
    ref.save_pretrained(folder)
    if edit is not None:
        path = folder / "config.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return model_class(name).from_pretrained(str(folder))


# ---------------------------------------------------------------------------------------------------------------
# absent fields: diffusers' / transformers' defaults
# ---------------------------------------------------------------------------------------------------------------


def _same(a, b) -> bool:
    norm = (lambda v: list(v) if isinstance(v, tuple) else v)  # noqa: E731
    return norm(a) == norm(b)


@pytest.mark.parametrize("name", DIFFUSERS_CLASSES + ["Transformer2DModel"])
def test_signature_defaults_are_diffusers_defaults(name):
    theirs = inspect.signature(getattr(diffusers, name).__init__).parameters
    ours = inspect.signature(model_class(name).__init__).parameters
    fields = [k for k, p in theirs.items() if k != "self" and p.kind is not p.VAR_KEYWORD]
    assert [k for k in fields if k not in ours] == []
    assert {k: (ours[k].default, theirs[k].default) for k in fields if not _same(ours[k].default, theirs[k].default)} == {}


@pytest.mark.parametrize("name", sorted(CLIP_CONFIGS))
def test_signature_defaults_are_transformers_defaults(name):
    theirs = CLIP_CONFIGS[name]().to_dict()
    ours = {k: p.default for k, p in inspect.signature(model_class(name).__init__).parameters.items() if k != "self"}
    assert {k: (v, theirs.get(k, "absent")) for k, v in ours.items() if not _same(v, theirs.get(k, "absent"))} == {}


# ---------------------------------------------------------------------------------------------------------------
# Class().save_config, literally
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIFFUSERS_CLASSES)
def test_literal_default_config_is_accepted(name, tmp_path):
    raw = _default_config(name, tmp_path)
    cls = model_class(name)
    config = converter_for(name).convert_config(raw)
    assert config == {k: v for k, v in raw.items() if not k.startswith("_")}
    check_null_config(cls, config)  # what from_config checks before building: no null is refused
    written_nulls = {k for k, v in raw.items() if v is None}
    assert written_nulls <= set(_nulls(name)), written_nulls - set(_nulls(name))
    if name.startswith("UNet") or name == "I2VGenXLUNet":
        assert raw["sample_size"] is None  # the case the issue names


@pytest.mark.parametrize("name", ["AutoencoderKL", "AutoencoderKLTemporalDecoder"])
def test_literal_default_vae_matches_diffusers(name, tmp_path):
    """The default VAEs are small (one 64-channel level): built as saved, nothing changed."""
    torch.manual_seed(0)
    ref = randomise(getattr(diffusers, name)().eval(), 0, vector_std=0.5)
    ours = _roundtrip(ref, name, tmp_path)
    x = _inputs(name)
    assert_close(_ours_forward(ours, x), _torch_forward(ref, x), where=f"{name}()")


# ---------------------------------------------------------------------------------------------------------------
# small sizes, everything else as diffusers writes it; then every None-meaning field null
# ---------------------------------------------------------------------------------------------------------------

FORWARD = ["UNetSpatioTemporalConditionModel", "AutoencoderKLTemporalDecoder", "AutoencoderKL", "UNet2DConditionModel",
           "UNetMotionModel", "I2VGenXLUNet"]


@pytest.mark.parametrize("nulls", [False, True], ids=["defaults", "nulls"])
@pytest.mark.parametrize("name", FORWARD)
def test_saved_config_loads_and_matches_diffusers(name, nulls, tmp_path):
    config = {**_default_config(name, tmp_path / "default"), **SMALL[name]}
    if nulls:
        config.update(_nulls(name))
    torch.manual_seed(0)
    ref = randomise(getattr(diffusers, name).from_config(config).eval(), 0, vector_std=0.5)
    ours = _roundtrip(ref, name, tmp_path / "model")
    written = json.loads((tmp_path / "model" / "config.json").read_text())
    assert {k for k in _nulls(name) if nulls and k in written} <= {k for k, v in written.items() if v is None}
    x = _inputs(name)
    assert_close(_ours_forward(ours, x), _torch_forward(ref, x), where=f"{name} ({'nulls' if nulls else 'defaults'})")


def test_transformer_2d_nulls_match_diffusers(tmp_path):
    """The spatial transformer on its own: switches null (no attention biases, no norm affines, conv projections),
    attention_type null."""
    config = {**_nulls("Transformer2DModel"), "num_attention_heads": 2, "attention_head_dim": 8, "norm_num_groups": 4,
              "in_channels": 16, "cross_attention_dim": 12}  # (a null in_channels is the discrete variant: not ported)
    torch.manual_seed(0)
    ref = randomise(diffusers.Transformer2DModel(**config).eval(), 0)
    ours = _roundtrip(ref, "Transformer2DModel", tmp_path)
    rng = np.random.Generator(np.random.PCG64(1))
    x, ctx = rng.standard_normal((2, 16, 4, 3)).astype(np.float32), rng.standard_normal((2, 5, 12)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(ctx)).sample
    got = ours(Tensor(x), encoder_hidden_states=Tensor(ctx)).sample
    assert_close(got, expected, where="Transformer2DModel (nulls)")


def test_motion_adapter_nulls_and_from_unet2d(tmp_path):
    """MotionAdapter with its None-meaning fields null (use_motion_mid_block: no mid modules), merged into a UNet
    whose config is diffusers' default with small sizes (sample_size null): the same module tree as diffusers."""
    a_cfg = {**_default_config("MotionAdapter", tmp_path / "a"), **SMALL["MotionAdapter"], **_nulls("MotionAdapter")}
    u_cfg = {**_default_config("UNet2DConditionModel", tmp_path / "u"), **SMALL["UNet2DConditionModel"],
             "block_out_channels": (32, 64), "norm_num_groups": 8, "cross_attention_dim": 16}
    ref_adapter, ref_unet = diffusers.MotionAdapter.from_config(a_cfg), diffusers.UNet2DConditionModel.from_config(u_cfg)
    adapter = _roundtrip(ref_adapter, "MotionAdapter", tmp_path / "adapter")
    assert adapter.mid_block is None and ref_adapter.mid_block is None
    unet = _roundtrip(ref_unet, "UNet2DConditionModel", tmp_path / "unet")
    ours = model_class("UNetMotionModel").from_unet2d(unet, adapter, load_weights=False)
    ref = diffusers.UNetMotionModel.from_unet2d(ref_unet, ref_adapter, load_weights=False)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("pos_embed.pe")}
    assert {k: s for k, (s, _) in ours.parameter_spec().items()} == expected
    assert ours.config["sample_size"] is None and ours.config["use_motion_mid_block"] is None


@pytest.mark.parametrize("name", sorted(CLIP_CONFIGS))
def test_clip_configs_with_absent_and_null_fields(name, tmp_path):
    """A minimal older file (only the sizes; the rest absent: transformers' defaults) with the fields transformers
    reads as None set to null."""
    vision = "Vision" in name
    sizes = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    sizes.update(dict(image_size=30, patch_size=10, projection_dim=8) if vision else dict(max_position_embeddings=9))
    if name == "CLIPTextModelWithProjection":
        sizes["projection_dim"] = 8
    torch.manual_seed(0)
    ref = randomise(getattr(transformers, name)(CLIP_CONFIGS[name](**sizes)).eval(), 0)
    nulls = {k: None for k in model_class(name).nullable_config}

    def minimal(cfg):
        return {**{k: v for k, v in cfg.items() if k in sizes or k in ("model_type", "architectures")}, **nulls}

    ours = _roundtrip(ref, name, tmp_path, edit=minimal)
    assert {k: ours.config[k] for k in nulls} == nulls
    if vision:
        x = np.random.Generator(np.random.PCG64(1)).standard_normal((2, 3, 30, 30)).astype(np.float32)
        with torch.no_grad():
            expected = ref(pixel_values=torch.from_numpy(x)).image_embeds
        assert_close(ours(x).image_embeds, expected, where=name)
        return
    ids = np.asarray([[49406, 5, 77, 1000, 49407, 49407], [49406, 31, 49407, 49407, 49407, 49407]], np.int64)
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids))
    got = ours(ids)
    assert_close(got.last_hidden_state, out.last_hidden_state, where=f"{name} last_hidden_state")
    if name == "CLIPTextModel":
        assert_close(got.pooler_output, out.pooler_output, where=f"{name} pooler_output")
    else:
        assert_close(got.text_embeds, out.text_embeds, where=f"{name} text_embeds")


# ---------------------------------------------------------------------------------------------------------------
# null fields diffusers cannot build or run with: refused in one line
# ---------------------------------------------------------------------------------------------------------------


def _diffusers_fails(name: str, config: dict) -> bool:
    try:
        ref = getattr(diffusers, name).from_config(config).eval()
        if name != "MotionAdapter":
            _torch_forward(ref, _inputs(name))
    except Exception:  # noqa: BLE001 (any failure: TypeError, ValueError, AttributeError deep inside)
        return True
    return False


@pytest.mark.parametrize("name", DIFFUSERS_CLASSES)
def test_refused_nulls_name_the_field_and_diffusers_fails_too(name, tmp_path):
    base = {**_default_config(name, tmp_path), **SMALL[name]}
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    cls = model_class(name)
    accepted_by_diffusers = []
    for key in _refused(name):
        with pytest.raises(ValueError) as e:
            cls.from_config({**base, key: None})
        msg = str(e.value)
        assert f"'{key}' is null" in msg and "expected" in msg and "\n" not in msg, msg
        if not _diffusers_fails(name, {**base, key: None}):
            accepted_by_diffusers.append(key)
    assert accepted_by_diffusers == []


@pytest.mark.parametrize("name", sorted(CLIP_CONFIGS))
def test_clip_refused_nulls_name_the_field(name):
    cls = model_class(name)
    for key in _refused(name):
        with pytest.raises(ValueError, match=f"{cls.__name__}: config field '{key}' is null.*expected"):
            cls.from_config({key: None})


def test_null_messages_give_choices_or_default():
    with pytest.raises(ValueError, match=r"'resnet_time_scale_shift' is null.*expected one of \"default\", "
                                         r"\"scale_shift\""):
        model_class("UNet2DConditionModel").from_config({"resnet_time_scale_shift": None})
    with pytest.raises(ValueError, match=r"'motion_max_seq_length' is null.*an integer \(diffusers' default: 32\)"):
        model_class("MotionAdapter").from_config({"motion_max_seq_length": None})
    with pytest.raises(ValueError, match=r"attention_head_dim\[0\] is null, but level 0 has attention"):
        model_class("UNet2DConditionModel").from_config({**SMALL["UNet2DConditionModel"], "attention_head_dim": [None, 2]})
    with pytest.raises(ValueError, match="addition_embed_type='text_time' needs addition_time_embed_dim"):
        model_class("UNetMotionModel").from_config({**SMALL["UNetMotionModel"], "addition_embed_type": "text_time"})


# ---------------------------------------------------------------------------------------------------------------
# single-file row generators: absent fields take the class's diffusers defaults, null ones are refused
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, name", [(sd_unet_rows, "UNet2DConditionModel"), (vae_rows, "AutoencoderKL"),
                                        (svd_unet_rows, "UNetSpatioTemporalConditionModel"),
                                        (svd_vae_rows, "AutoencoderKLTemporalDecoder")])
def test_single_file_rows_read_configs_as_diffusers(rows, name, tmp_path):
    full = _default_config(name, tmp_path)
    assert rows({}) == rows(full)  # absent: the defaults diffusers writes
    if name == "AutoencoderKL":  # diffusers' AutoencoderKL default is one resnet per level (SD 1.5's file says 2)
        assert not any(".block.1." in r.source for r in rows({}))
    with pytest.raises(ConversionError, match=f"{name} config field 'layers_per_block' is null.*expected"):
        rows({"layers_per_block": None})


# ---------------------------------------------------------------------------------------------------------------
# pipelines: default size, num_frames, scaling factor
# ---------------------------------------------------------------------------------------------------------------


def _stub(**config):
    return types.SimpleNamespace(config=Config(config))


def test_pipeline_output_size_follows_sample_size_then_fallbacks():
    size = ip.pipeline_output_size
    assert size(None, None, dict(sample_size=64), 8) == (512, 512)
    assert size(None, 320, dict(sample_size=[40, 72]), 8) == (320, 320)
    assert size(None, None, dict(sample_size=[40, 72]), 8) == (320, 576)
    assert size(None, None, dict(sample_size=None), 8, fallback=(576, 1024)) == (576, 1024)
    assert size(None, None, dict(sample_size=None), 8, vae_config=dict(sample_size=512)) == (512, 512)
    assert size(48, 64, dict(sample_size=None), 8) == (48, 64)
    with pytest.raises(ValueError, match="sample_size are null.*pass height and width"):
        size(None, None, dict(sample_size=None), 8, vae_config=dict(sample_size=None), owner="AnimateDiffPipeline")


@pytest.mark.parametrize("pipeline", ["stable_video_diffusion.StableVideoDiffusionPipeline",
                                      "animatediff.AnimateDiffPipeline", "i2vgen_xl.I2VGenXLPipeline"])
def test_pipelines_refuse_a_null_scaling_factor_before_denoising(pipeline):
    import importlib

    module, name = pipeline.split(".")
    cls = getattr(importlib.import_module(f"mindport.pipelines.{module}"), name)
    pipe = cls.__new__(cls)  # no components are reached before the check
    pipe.vae = _stub(block_out_channels=[32, 64], scaling_factor=None, sample_size=None)
    pipe.unet = _stub(sample_size=None, num_frames=None, motion_max_seq_length=32, in_channels=4)
    pipe.vae_scale_factor, pipe._guidance_scale = 2, 1.0
    kwargs = dict(image=np.zeros((16, 16, 3), np.float32)) if "AnimateDiff" not in name else dict(prompt="a")
    if "I2VGen" in name:
        kwargs["prompt"] = "a"
    with pytest.raises(ValueError, match=f"{name}: .* config field 'scaling_factor' is null"):
        pipe(height=16, width=16, num_frames=2, **kwargs)


def test_i2vgen_crop_size_null_is_clip_default():
    from mindport.pipelines.i2vgen_xl import _crop_size

    assert _crop_size({"crop_size": None}) == (224, 224) == _crop_size({})
