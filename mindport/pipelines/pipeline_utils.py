"""Pipeline base: `from_pretrained` over a diffusers pipeline folder (PyTorch or converted) or Hub id."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from converters import ConversionError
from converters.registry import IMAGE_PROCESSORS, MODEL_ROWS, PIPELINE_ROWS, SCHEDULER_ROWS, TOKENIZERS
from converters.sources import read_json, resolve

from ..loading import load_component
from ..models import model_class
from ..schedulers import scheduler_class


class PipelineOutput(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def _load_processor_config(folder: Path) -> dict:
    path = folder / "preprocessor_config.json"
    return read_json(path) if path.exists() else {}


def _load_tokenizer(folder: Path, class_name: str):
    try:
        import transformers
    except ImportError:
        raise ConversionError(f"{folder}: loading a {class_name} needs the transformers package "
                              "(pip install transformers)") from None
    return getattr(transformers, class_name).from_pretrained(str(folder))


def encode_text(tokenizer, text_encoder, texts: list[str], max_length: int, clip_skip: int | None, owner: str):
    """CLIP text hidden states, as diffusers' `encode_prompt`: padded to `max_length`; with `clip_skip`, the
    (clip_skip+1)-th last hidden state through the final layer norm. The attention mask is passed only when the
    text encoder's config asks for it."""
    import numpy as np

    if tokenizer is None or text_encoder is None:
        raise ValueError(f"{owner}: a prompt needs the pipeline's tokenizer and text_encoder; pass prompt_embeds instead")
    tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
    mask = tokens["attention_mask"] if text_encoder.config.get("use_attention_mask") else None
    ids = np.asarray(tokens["input_ids"], np.int64)
    if clip_skip is None:
        return text_encoder(ids, attention_mask=mask)[0]
    hidden = text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    return text_encoder.final_layer_norm(hidden[-(clip_skip + 1)])


class DiffusionPipeline:
    """Holds the components named in model_index.json; subclasses define `__call__`. A subclass registered under its
    name (converters/registry.py) takes its components and the other pipelines whose folders it loads from the row."""

    components_order: tuple[str, ...] = ()
    loads_from: tuple[str, ...] = ()
    # model_index.json entries that are pipeline settings, not components (passed to __init__ when present)
    config_keys: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        row = PIPELINE_ROWS.get(cls.__name__)
        if row is not None:
            cls.components_order, cls.loads_from = tuple(row.components), row.loads_from

    def __init__(self, **components):
        for name in self.components_order:
            setattr(self, name, components.get(name))
        self._progress = {}

    @property
    def components(self) -> dict:
        return {name: getattr(self, name) for name in self.components_order}

    @classmethod
    def from_pretrained(cls, path, mindspore_dtype=None, variant: str | None = None, **kwargs):
        """Load every component. Models come from PyTorch weights (converted on load) or `mindport convert` output;
        components passed as keyword arguments replace the stored ones (e.g. `scheduler=`)."""
        root = Path(resolve(path, variant))
        index_path = root / "model_index.json"
        index = read_json(index_path)
        stored = index.get("_class_name")
        if stored and stored not in (cls.__name__, *cls.loads_from):
            raise ConversionError(f"{index_path}: holds a {stored}, but {cls.__name__}.from_pretrained was called")
        components = {}
        for name in cls.components_order:
            if name in kwargs:
                components[name] = kwargs.pop(name)
                continue
            entry = index.get(name)
            if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
                components[name] = None
                continue
            class_name = entry[1]
            if class_name in MODEL_ROWS:
                components[name] = load_component(model_class(class_name), root, subfolder=name,
                                                  dtype=mindspore_dtype, variant=variant)
            elif class_name in SCHEDULER_ROWS:
                components[name] = scheduler_class(class_name).from_pretrained(root, subfolder=name)
            elif class_name in IMAGE_PROCESSORS:
                components[name] = _load_processor_config(root / name)
            elif class_name in TOKENIZERS:
                components[name] = _load_tokenizer(root / name, class_name)
            else:
                supported = sorted([*MODEL_ROWS, *SCHEDULER_ROWS, *IMAGE_PROCESSORS, *TOKENIZERS])
                raise ConversionError(f"{index_path}: component {name!r} is a {class_name}, which mindport cannot load; "
                                      f"supported: {', '.join(supported)}")
        for key in cls.config_keys:
            components[key] = kwargs.pop(key) if key in kwargs else index.get(key)
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}")
        return cls(**components)

    def save_pretrained(self, save_directory) -> None:
        """Write the pipeline in the mindport format `mindport convert` writes: `model_index.json` (diffusers' and
        transformers' class names), per model `config.json` + `mindspore_model.safetensors` (`ModelMixin.
        save_pretrained`), the scheduler's config, the tokenizer's files and the image processor's config.
        `from_pretrained` loads it again; `mindport export` makes a PyTorch diffusers folder of it."""
        import json

        from ..modeling import ModelMixin

        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        index = {"_class_name": type(self).__name__}
        for name in self.components_order:
            comp = getattr(self, name, None)
            folder = root / name
            if comp is None:
                index[name] = [None, None]
            elif isinstance(comp, ModelMixin):
                comp.save_pretrained(folder)
                index[name] = [comp.config_library, comp.diffusers_class]
            elif type(comp).__name__ in SCHEDULER_ROWS:
                comp.save_config(folder)
                index[name] = ["diffusers", type(comp).__name__]
            elif isinstance(comp, dict):  # an image processor's config
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "preprocessor_config.json").write_text(json.dumps(comp, indent=2, sort_keys=True))
                index[name] = ["transformers", comp.get("image_processor_type", "CLIPImageProcessor")]
            elif hasattr(comp, "save_pretrained"):  # a transformers tokenizer
                comp.save_pretrained(str(folder))
                index[name] = ["transformers", type(comp).__name__]
            else:
                raise ValueError(f"{type(self).__name__}.save_pretrained: component {name!r} is a "
                                 f"{type(comp).__name__}, which mindport cannot save")
        for key in self.config_keys:
            if getattr(self, key, None) is not None:
                index[key] = getattr(self, key)
        (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))

    # classifier-free guidance, as diffusers' text-guided pipelines expose it (`__call__` sets _guidance_scale)
    _guidance_scale = 1.0

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    # VAE memory switches, as diffusers' pipelines spell them (the VAE's own enable_slicing / enable_tiling)
    def _vae_switch(self, method: str) -> None:
        vae = getattr(self, "vae", None)
        if vae is None or not hasattr(vae, method):
            raise ValueError(f"{type(self).__name__}: its VAE ({type(vae).__name__}) has no {method}; slicing and "
                             "tiling are ported for AutoencoderKL (AnimateDiff, I2VGen-XL)")
        getattr(vae, method)()

    def enable_vae_slicing(self):
        self._vae_switch("enable_slicing")

    def disable_vae_slicing(self):
        self._vae_switch("disable_slicing")

    def enable_vae_tiling(self):
        self._vae_switch("enable_tiling")

    def disable_vae_tiling(self):
        self._vae_switch("disable_tiling")

    # progress bars, as diffusers' set_progress_bar_config
    def set_progress_bar_config(self, **kwargs):
        self._progress = kwargs

    def progress_bar(self, total: int):
        return tqdm(total=total, **{"leave": False, **self._progress})
