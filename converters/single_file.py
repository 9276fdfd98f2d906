"""Original single-file releases that hold a whole pipeline: Stable Diffusion 1.x (CompVis/LDM naming, `ldm.py`) and
Stable Video Diffusion (generative-models naming, `sgm.py`). A file is split into components by explicit rows (a
key prefix -> component); keys no diffusers pipeline uses are dropped by explicit rows and recorded; any other key
is refused. (AnimateDiff motion-module files are single components: `animatediff.py`.)

A single file carries no configs. They come from `config_dir` (a diffusers pipeline folder of the same model:
its model_index.json, component configs, scheduler, tokenizer and feature extractor are used), or else from the
built-in defaults below, which reproduce the configs of runwayml/stable-diffusion-v1-5 and
stabilityai/stable-video-diffusion-img2vid-xt (with a DDIMScheduler for SD 1.5, the scheduler AnimateDiff uses; no
tokenizer: a single file has none, so an SD 1.5 base converted without `config_dir` has no `tokenizer` folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .base import ArchitectureConverter, Rule
from .errors import ConversionError
from .ldm import clip_text_rows, sd_unet_rows, vae_rows
from .sgm import open_clip_vision_rows, svd_unet_rows, svd_vae_rows
from .sources import ComponentSource, class_name_of, read_json


@dataclass(frozen=True)
class Layout:
    name: str
    pipeline: str
    components: dict[str, tuple[str, str, Callable[[dict], list[Rule]]]]  # name -> (class, key pattern, rows(config))
    drops: tuple[Rule, ...]
    defaults: dict[str, dict]  # built-in component configs (model and plain components)


_SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    steps_offset=1, set_alpha_to_one=False, clip_sample=False, trained_betas=None)
_LDM_BUFFERS = ("betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|"
                "log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|"
                "posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar")

SD15 = Layout(
    name="ldm-sd15",
    pipeline="StableDiffusionPipeline",
    components={
        "unet": ("UNet2DConditionModel", r"model\.diffusion_model\..+", sd_unet_rows),
        "vae": ("AutoencoderKL", r"first_stage_model\..+", vae_rows),
        "text_encoder": ("CLIPTextModel", r"cond_stage_model\.transformer\..+", clip_text_rows),
    },
    drops=(
        Rule(rf"(?:{_LDM_BUFFERS})", None, reason="LDM training wrapper's DDPM schedule buffers; the scheduler config defines the schedule"),
        Rule(r"model_ema\..+", None, reason="EMA copy under flattened names (training state); the model.* weights are used"),
    ),
    defaults={
        "unet": {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
                 "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
                 "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
                 "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
                 "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
                 "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3},
        "vae": {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
                "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
                "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4},
        "text_encoder": {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0,
                         "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
                         "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
                         "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768,
                         "vocab_size": 49408},
        "scheduler": {"_class_name": "DDIMScheduler", "prediction_type": "epsilon", **_SD_SCHEDULE},
    },
)

_OPEN_CLIP = r"conditioner\.embedders\.0\.open_clip\.model\."
SVD = Layout(
    name="sgm-svd",
    pipeline="StableVideoDiffusionPipeline",
    components={
        "unet": ("UNetSpatioTemporalConditionModel", r"model\.diffusion_model\..+", svd_unet_rows),
        "vae": ("AutoencoderKLTemporalDecoder", r"first_stage_model\..+", svd_vae_rows),
        "image_encoder": ("CLIPVisionModelWithProjection", _OPEN_CLIP + r"visual\..+", open_clip_vision_rows),
    },
    drops=(
        Rule(_OPEN_CLIP + r"(?:token_embedding\.weight|positional_embedding|ln_final\.(?:weight|bias)|text_projection|"
             r"logit_scale|transformer\..+)", None,
             reason="OpenCLIP text tower left in the image embedder (generative-models deletes only its transformer); "
                    "the pipeline encodes images only"),
        Rule(r"conditioner\.embedders\.\d+\.encoder\..+", None,
             reason="second copy of the VAE inside the conditioning-frame embedder; the pipeline uses the vae component"),
        Rule(r"denoiser\..+", None, reason="EDM denoiser buffers (sigmas); the scheduler config defines them"),
    ),
    defaults={
        "unet": {"_class_name": "UNetSpatioTemporalConditionModel", "addition_time_embed_dim": 256,
                 "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
                 "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
                 "in_channels": 8, "layers_per_block": 2, "num_attention_heads": [5, 10, 20, 20], "num_frames": 25,
                 "out_channels": 4, "projection_class_embeddings_input_dim": 768, "sample_size": 96,
                 "transformer_layers_per_block": 1,
                 "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3},
        "vae": {"_class_name": "AutoencoderKLTemporalDecoder", "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
                "latent_channels": 4, "layers_per_block": 2, "out_channels": 3, "sample_size": 768,
                "scaling_factor": 0.18215},
        "image_encoder": {"architectures": ["CLIPVisionModelWithProjection"], "hidden_act": "gelu", "hidden_size": 1280,
                          "image_size": 224, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
                          "model_type": "clip_vision_model", "num_attention_heads": 16, "num_channels": 3,
                          "num_hidden_layers": 32, "patch_size": 14, "projection_dim": 1024},
        "scheduler": {"_class_name": "EulerDiscreteScheduler", "interpolation_type": "linear", "prediction_type": "v_prediction",
                      "sigma_max": 700.0, "sigma_min": 0.002, "skip_prk_steps": True, "timestep_spacing": "leading",
                      "timestep_type": "continuous", "use_karras_sigmas": True, **_SD_SCHEDULE},
        "feature_extractor": {"_class_name": "CLIPImageProcessor", "crop_size": {"height": 224, "width": 224},
                              "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
                              "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                              "image_processor_type": "CLIPImageProcessor",
                              "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
                              "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}},
    },
)
LAYOUTS = {layout.name: layout for layout in (SD15, SVD)}
# plain (non-model) components: the file each one's config is written to
PLAIN_FILES = {"scheduler": "scheduler_config.json", "feature_extractor": "preprocessor_config.json",
               "image_processor": "preprocessor_config.json"}
PLAIN_LIBRARY = {"scheduler": "diffusers", "feature_extractor": "transformers", "tokenizer": "transformers"}


def detect_layout(keys) -> Layout | None:
    """Which pipeline layout a single file's keys are in (None: not a whole-pipeline original release)."""
    keys = list(keys)
    if any(k.startswith("model.diffusion_model.") and ".time_stack." in k for k in keys):
        return SVD
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")) for k in keys):
        return SD15
    return None


class LayoutConverter(ArchitectureConverter):
    """One component of a single-file layout: the rows generated from its config."""

    def __init__(self, class_name: str, rules: list[Rule]):
        self.class_name = class_name
        self.rules = tuple(rules)

    def convert_config(self, config: dict) -> dict:
        from . import converter_for

        return converter_for(self.class_name).convert_config(config)


@dataclass
class SingleFile:
    """A whole-pipeline single file, split: component sources, dropped keys (with their row's reason), the
    model_index and the plain components (a folder to copy from `config_dir`, or a built-in config)."""

    layout: Layout
    sources: dict[str, ComponentSource]
    dropped: dict[str, dict] = field(default_factory=dict)
    model_index: dict = field(default_factory=dict)
    plain: dict[str, Path | dict] = field(default_factory=dict)


def split_single_file(path: Path, tensors: dict, layout: Layout, config_dir=None) -> SingleFile:
    """Assign every key to one component (or an explicit drop row); build each component's source with its config
    and rows. Raises ConversionError naming unexpected keys or a missing/incompatible config."""
    configs, index, plain = _configs(layout, config_dir)
    split_rows = [(name, Rule(pattern, name)) for name, (_, pattern, _) in layout.components.items()]
    parts: dict[str, dict] = {name: {} for name in layout.components}
    dropped: dict[str, dict] = {}
    unexpected = []
    for key, ref in tensors.items():
        hits = [name for name, row in split_rows if row.match(key)] + [row for row in layout.drops if row.match(key)]
        if len(hits) != 1:
            unexpected.append(key)
            continue
        if isinstance(hits[0], Rule):
            entry = dropped.setdefault(hits[0].source, {"reason": hits[0].reason, "keys": []})
            entry["keys"].append(key)
        else:
            parts[hits[0]][key] = ref
    if unexpected:
        raise ConversionError(f"{path}: {len(unexpected)} key(s) that no row of the {layout.name} layout maps: "
                              f"{', '.join(sorted(unexpected)[:6])}{' ...' if len(unexpected) > 6 else ''}")
    sources = {}
    for name, (cls, _, rows) in layout.components.items():
        if not parts[name]:
            raise ConversionError(f"{path}: no {name} tensors (keys matching {layout.components[name][1]!r}); "
                                  f"a {layout.name} checkpoint has {', '.join(layout.components)}")
        config = configs[name]
        got = class_name_of(config, f"{name} config")
        if got != cls:
            raise ConversionError(f"{config_dir}/{name}/config.json: holds a {got}, but the {layout.name} layout's "
                                  f"{name} is a {cls}")
        src = ComponentSource(path.parent, config, cls, [path], parts[name])
        try:
            src.converter = LayoutConverter(cls, rows(config))
        except ConversionError as e:  # the rows read the config: name the file it came from
            where = f"{config_dir}/{name}/config.json" if config_dir is not None else f"built-in {name} config"
            raise ConversionError(f"{where}: {e}") from None
        sources[name] = src
    return SingleFile(layout, sources, dropped, index, plain)


def _configs(layout: Layout, config_dir) -> tuple[dict, dict, dict]:
    """(component configs, model_index, plain components) from `config_dir` or the built-in defaults."""
    if config_dir is None:
        configs = {n: dict(layout.defaults[n]) for n in layout.components}
        plain = {n: dict(c) for n, c in layout.defaults.items() if n not in layout.components}
        index = {"_class_name": layout.pipeline}
        for name, (cls, _, _) in layout.components.items():
            index[name] = ["transformers" if "CLIP" in cls else "diffusers", cls]
        for name, cfg in plain.items():
            index[name] = [PLAIN_LIBRARY[name], cfg["_class_name"]]
        return configs, index, plain
    root = Path(config_dir)
    index = read_json(root / "model_index.json")
    missing = [n for n in layout.components if n not in index]
    if missing:
        raise ConversionError(f"{root / 'model_index.json'}: no {', '.join(missing)} component(s); the {layout.name} "
                              f"layout needs {', '.join(layout.components)}")
    configs = {n: read_json(root / n / "config.json") for n in layout.components}
    plain = {n: root / n for n, v in index.items()
             if not n.startswith("_") and n not in layout.components and isinstance(v, list) and (root / n).is_dir()}
    return configs, index, plain
