"""The registry: every architecture mindport supports, one row each, and the only name-to-module table in the tree.

Each layer reads its own column (module paths are strings, imported on first use, so this file imports nothing and
every layer can read it without an import loop):
- `mindport` exports every row's pipeline, models and schedulers, and `from_pretrained` resolves a component's class
  name through `MODELS` / `SCHEDULERS`;
- `converters.converter_for(class_name)` reads a model row's converter;
- the parity harness reads a pipeline row's adapter, its compared components and its tiny fixtures (presets defined
  in the adapter module).

A new architecture is new rows here plus its own files: the model(s) under `mindport/models/`, a pipeline under
`mindport/pipelines/`, converter rows under `converters/`, a parity adapter (with its fixture presets) under
`parity/`. `tests/test_registry.py` checks that every row resolves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    """A ported model: diffusers / transformers class name, the module under `mindport.models` defining our
    `nn.Cell` of that name, and the module under `converters` defining its converter (an ArchitectureConverter
    subclass whose `class_name` is `name`)."""

    name: str
    runtime: str
    converter: str


@dataclass(frozen=True)
class Scheduler:
    """A ported scheduler: diffusers class name and the module under `mindport.schedulers` defining it."""

    name: str
    runtime: str


@dataclass(frozen=True)
class Pipeline:
    """A ported pipeline.

    name        diffusers class name (model_index.json's `_class_name`)
    label       how people call it (reports, the demo)
    runtime     module under `mindport.pipelines` defining our class of that name
    components  model_index.json entry -> the class names that entry may hold (models, schedulers, tokenizers,
                image processors), in the pipeline's constructor order
    compared    the components the parity harness hooks and compares module by module
    adapter     module under `parity` telling the harness how to build, seed and call both pipelines
    fixtures    named tiny random-weight configurations (presets in the adapter module); the first is the demo's
    loads_from  other pipelines whose folders this one also loads (AnimateDiff: an SD 1.5 base)
    """

    name: str
    label: str
    runtime: str
    components: dict[str, tuple[str, ...]]
    compared: tuple[str, ...]
    adapter: str
    fixtures: tuple[str, ...]
    loads_from: tuple[str, ...] = ()


MODELS = (
    Model("UNetSpatioTemporalConditionModel", "unet_spatio_temporal_condition", "svd"),
    Model("AutoencoderKLTemporalDecoder", "autoencoder_kl_temporal_decoder", "svd"),
    Model("CLIPVisionModelWithProjection", "clip", "svd"),
    Model("CLIPVisionModel", "clip", "svd"),
    Model("AutoencoderKL", "autoencoder_kl", "sd"),
    Model("CLIPTextModel", "clip", "sd"),
    Model("CLIPTextModelWithProjection", "clip", "sd"),
    Model("UNet2DConditionModel", "unet_2d_condition", "sd"),
    Model("Transformer2DModel", "transformer_2d", "sd"),
    Model("MotionAdapter", "unet_motion_model", "animatediff"),
    Model("UNetMotionModel", "unet_motion_model", "animatediff"),
    Model("I2VGenXLUNet", "unet_i2vgen_xl", "i2vgen_xl"),
    Model("WanTransformer3DModel", "transformer_wan", "wan"),
    Model("AutoencoderKLWan", "autoencoder_kl_wan", "wan"),
    Model("UMT5EncoderModel", "umt5", "wan"),
)

SCHEDULERS = (
    Scheduler("EulerDiscreteScheduler", "scheduling_euler_discrete"),
    Scheduler("DDIMScheduler", "scheduling_ddim"),
    Scheduler("UniPCMultistepScheduler", "scheduling_unipc_multistep"),
    Scheduler("FlowMatchEulerDiscreteScheduler", "scheduling_flow_match_euler_discrete"),
)

# image processors and tokenizers a component entry may name (configs and vocabularies, no weights)
IMAGE_PROCESSORS = ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast")
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "AutoTokenizer")

# components AnimateDiff's text- and video-to-video pipelines share
ANIMATEDIFF_COMPONENTS = {
    "vae": ("AutoencoderKL",), "text_encoder": ("CLIPTextModel", "CLIPTextModelWithProjection"),
    "tokenizer": TOKENIZERS, "unet": ("UNetMotionModel", "UNet2DConditionModel"), "motion_adapter": ("MotionAdapter",),
    "scheduler": ("DDIMScheduler", "EulerDiscreteScheduler"), "feature_extractor": IMAGE_PROCESSORS,
    "image_encoder": ("CLIPVisionModelWithProjection",)}

PIPELINES = (
    Pipeline(
        "StableVideoDiffusionPipeline", "Stable Video Diffusion", "stable_video_diffusion",
        components={"vae": ("AutoencoderKLTemporalDecoder",), "image_encoder": ("CLIPVisionModelWithProjection",),
                    "unet": ("UNetSpatioTemporalConditionModel",), "scheduler": ("EulerDiscreteScheduler",),
                    "feature_extractor": IMAGE_PROCESSORS},
        compared=("image_encoder", "vae", "unet"),
        adapter="svd", fixtures=("svd-tiny", "svd-tiny-3level", "svd-tiny-wide"),
    ),
    Pipeline(
        "AnimateDiffPipeline", "AnimateDiff", "animatediff",
        components=ANIMATEDIFF_COMPONENTS,
        compared=("text_encoder", "unet", "vae"),
        adapter="animatediff", fixtures=("animatediff-tiny", "animatediff-tiny-3level", "animatediff-tiny-nomid"),
        loads_from=("StableDiffusionPipeline",),
    ),
    Pipeline(
        "AnimateDiffVideoToVideoPipeline", "AnimateDiff video-to-video", "animatediff_video2video",
        components=ANIMATEDIFF_COMPONENTS,
        compared=("text_encoder", "unet", "vae"),
        adapter="animatediff_video2video", fixtures=("animatediff-v2v-tiny", "animatediff-v2v-tiny-3level"),
        loads_from=("StableDiffusionPipeline", "AnimateDiffPipeline"),
    ),
    Pipeline(
        "I2VGenXLPipeline", "I2VGen-XL", "i2vgen_xl",
        components={"vae": ("AutoencoderKL",), "text_encoder": ("CLIPTextModel",), "tokenizer": TOKENIZERS,
                    "image_encoder": ("CLIPVisionModelWithProjection",), "feature_extractor": IMAGE_PROCESSORS,
                    "unet": ("I2VGenXLUNet",), "scheduler": ("DDIMScheduler",)},
        compared=("text_encoder", "image_encoder", "unet", "vae"),
        adapter="i2vgen_xl", fixtures=("i2vgen-xl-tiny", "i2vgen-xl-tiny-large", "i2vgen-xl-tiny-3level"),
    ),
    Pipeline(
        "WanPipeline", "Wan 2.1 T2V", "wan",
        components={"tokenizer": TOKENIZERS, "text_encoder": ("UMT5EncoderModel",), "vae": ("AutoencoderKLWan",),
                    "scheduler": ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"),
                    "transformer": ("WanTransformer3DModel",), "transformer_2": ("WanTransformer3DModel",)},
        compared=("text_encoder", "transformer", "vae"),
        adapter="wan", fixtures=("wan-t2v-tiny", "wan-t2v-tiny-varied"),
    ),
    Pipeline(
        "WanImageToVideoPipeline", "Wan 2.1 I2V", "wan",
        components={"tokenizer": TOKENIZERS, "text_encoder": ("UMT5EncoderModel",), "vae": ("AutoencoderKLWan",),
                    "scheduler": ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"),
                    "image_processor": IMAGE_PROCESSORS, "image_encoder": ("CLIPVisionModel",),
                    "transformer": ("WanTransformer3DModel",), "transformer_2": ("WanTransformer3DModel",)},
        compared=("text_encoder", "image_encoder", "transformer", "vae"),
        adapter="wan_i2v", fixtures=("wan-i2v-tiny",),
    ),
)


def _index(rows) -> dict:
    out = {}
    for row in rows:
        if row.name in out:
            raise ValueError(f"registry: {row.name!r} is registered twice")
        out[row.name] = row
    return out


MODEL_ROWS: dict[str, Model] = _index(MODELS)
SCHEDULER_ROWS: dict[str, Scheduler] = _index(SCHEDULERS)
PIPELINE_ROWS: dict[str, Pipeline] = _index(PIPELINES)


def _unknown(kind: str, name, known) -> ValueError:
    return ValueError(f"no {kind} {name!r} is registered; registered: {', '.join(sorted(known))}")


def model(name: str) -> Model:
    if name not in MODEL_ROWS:
        raise _unknown("model", name, MODEL_ROWS)
    return MODEL_ROWS[name]


def scheduler(name: str) -> Scheduler:
    if name not in SCHEDULER_ROWS:
        raise _unknown("scheduler", name, SCHEDULER_ROWS)
    return SCHEDULER_ROWS[name]


def pipeline(name: str) -> Pipeline:
    if name not in PIPELINE_ROWS:
        raise _unknown("pipeline", name, PIPELINE_ROWS)
    return PIPELINE_ROWS[name]


def pipeline_for_fixture(preset: str) -> Pipeline:
    for row in PIPELINES:
        if preset in row.fixtures:
            return row
    raise ValueError(f"unknown fixture preset {preset!r}; expected one of "
                     f"{', '.join(p for row in PIPELINES for p in row.fixtures)}")
