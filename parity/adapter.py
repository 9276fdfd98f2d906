"""What the harness needs to know about one pipeline, and the plumbing every pipeline shares.

A pipeline's adapter module (named by its registry row, `converters/registry.py`) defines `ADAPTER`, an instance of a
`PipelineAdapter` subclass that says only what differs between pipelines: how to build a tiny fixture, where each
side draws random numbers, the call's arguments, and the default run size. Loading both pipelines and running them
with a per-step latents callback is the same for every pipeline and lives here.
"""

from __future__ import annotations

import json
import sys
from importlib import import_module
from pathlib import Path

import numpy as np

from converters import ConversionError, registry
from converters.sources import read_json

FIXTURE_META = "mindport_fixture.json"  # written into a fixture folder by parity.fixtures (preset, seed, spec)
# keys a fixture preset's `run` may set (parity settings and the sampler settings the adapters read)
RUN_KEYS = ("height", "width", "frames", "guidance_scale", "min_guidance_scale", "max_guidance_scale", "eta",
            "decode_chunk_size", "strength", "free_noise")


class PipelineAdapter:
    """Subclass per pipeline. `presets`: named tiny configs (each with a `run` dict of RUN_KEYS settings)."""

    pipeline: str = ""  # diffusers class name = registry row name
    presets: dict[str, dict] = {}
    returns_frames: bool = False  # mindone's convention: SVD returns the frames themselves, the others `(frames,)`
    denoiser: str = "unet"  # the component called once per step (the step x block matrix, the guidance gate)

    @property
    def row(self) -> registry.Pipeline:
        return registry.pipeline(self.pipeline)

    @property
    def components(self) -> tuple[str, ...]:
        """The components the harness hooks and compares."""
        return self.row.compared

    # -- to be defined per pipeline ----------------------------------------------------------------------------
    def make_fixture(self, spec: dict, seed: int):
        """A diffusers pipeline with random weights for the preset `spec`."""
        raise NotImplementedError

    # the modules whose `randn_tensor` (diffusers) / `randn` (mindport) the pipelines draw their noise through
    reference_noise_modules: tuple[str, ...] = ()
    our_noise_modules: tuple[str, ...] = ()

    def call_kwargs(self, settings: dict) -> dict:
        """Identical call arguments for both pipelines, from the run settings."""
        raise NotImplementedError

    def default_settings(self, config) -> dict:
        """height, width, frames as diffusers' pipeline would choose them; `config(component)` reads a component's
        config.json ({} when absent)."""
        raise NotImplementedError

    def free_noise_settings(self, root, free_noise: dict) -> dict:
        """FreeNoise's enable_free_noise arguments for the folder `root`, checked and complete (AnimateDiff)."""
        raise ConversionError(f"--free-noise: {self.pipeline} has no FreeNoise (AnimateDiff pipelines have it)")

    # -- the same for every pipeline ---------------------------------------------------------------------------
    def settings(self, root, frames=None, height=None, width=None, decode_chunk_size=None) -> dict:
        """The run's pixels, frames and sampler settings: each explicit value, else what a tiny fixture was built
        for (its preset's `run`), else `default_settings` (diffusers' defaults for the folder's configs)."""
        root = Path(root)

        def config(component: str) -> dict:
            path = root / component / "config.json"
            return read_json(path) if path.exists() else {}

        explicit = {"frames": frames, "height": height, "width": width, "decode_chunk_size": decode_chunk_size}
        out = {"decode_chunk_size": None, **fixture_run_settings(root)}
        out.update({k: v for k, v in explicit.items() if v is not None})
        if not {"frames", "height", "width"} <= set(out):  # only then: a folder may have no size of its own
            out = {**self.default_settings(config), **out}
        for key in ("frames", "height", "width"):
            if not isinstance(out[key], int) or out[key] < 1:
                raise ConversionError(f"{key} {out[key]!r} for {self.pipeline}: expected a positive integer")
        return out

    def load_reference(self, src):
        import diffusers
        import torch

        pipe = getattr(diffusers, self.pipeline).from_pretrained(str(src), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_ours(self, converted, dtype):
        from mindport.pipelines import pipeline_class

        pipe = pipeline_class(self.pipeline).from_pretrained(str(converted), mindspore_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def configure(self, pipe, settings: dict) -> None:
        """The switches the run's settings turn on in a loaded pipeline, either side (both spell them alike):
        FreeNoise."""
        if settings.get("free_noise"):
            pipe.enable_free_noise(**settings["free_noise"])

    def patch_noise(self, noise, reference: bool = True):
        """Every random draw of both pipelines (with reference=False: of ours only, diffusers not imported) through
        the shared noise source. Returns an undo function."""
        ref = [import_module(m) for m in self.reference_noise_modules] if reference else []
        return patch_randn(noise, ref, [import_module(m) for m in self.our_noise_modules])

    def run_reference(self, pipe, kwargs, callback=None) -> np.ndarray:
        """`callback(step, latents) -> numpy array or None` sees the latents after every step (numpy) and may
        replace them."""
        return np.asarray(run_reference_with_callback(pipe, kwargs, callback).frames, dtype=np.float32)

    def run_ours(self, pipe, kwargs, callback=None) -> np.ndarray:
        """`callback(step, latents) -> numpy array or None`: replaces the latents after a step (re-synchronisation)."""
        out = run_ours_with_callback(pipe, kwargs, callback)
        return np.asarray(out if self.returns_frames else out[0], dtype=np.float32)


def adapter_for(pipeline: str, where: str = "") -> PipelineAdapter:
    """The ADAPTER of a registered pipeline's adapter module."""
    row = registry.PIPELINE_ROWS.get(pipeline)
    if row is None:
        raise ConversionError(f"{where}: pipeline {pipeline!r} is not supported by parity; "
                              f"supported: {', '.join(registry.PIPELINE_ROWS)}")
    return import_module(f"parity.{row.adapter}").ADAPTER


def quiet_reference_libraries() -> None:
    """diffusers/transformers log warnings and progress bars on every load; the harness reports what matters."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def fixture_run_settings(folder) -> dict:
    """The run settings a tiny fixture folder was built for (empty for other checkpoints)."""
    meta = Path(folder) / FIXTURE_META
    if not meta.exists():
        return {}
    data = json.loads(meta.read_text())
    return check_run_settings(data.get("preset", str(folder)), data["spec"].get("run", {}))


def check_run_settings(preset: str, run: dict) -> dict:
    """A preset's `run` dict, refused if it names a key the harness does not read (a typo would silently run
    another configuration than the one declared)."""
    unknown = sorted(set(run) - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"fixture preset {preset!r}: unknown run setting(s) {unknown}; expected some of {list(RUN_KEYS)}")
    return dict(run)


def patch_randn(noise, reference_modules, our_modules):
    """Replace `randn_tensor` in each diffusers module and `randn` in each mindport module by draws from `noise`
    (logged with the calling function's name). Returns an undo function."""

    def ref_randn(shape, generator=None, device=None, dtype=None, layout=None):
        import torch

        who = sys._getframe(1).f_code.co_name
        return torch.from_numpy(noise.draw("torch", who, shape)).to(dtype or torch.float32)

    def our_randn(generator, shape, dtype=np.float32):
        who = sys._getframe(1).f_code.co_name
        return noise.draw("mindspore", who, shape).astype(dtype)

    saved = ([m.randn_tensor for m in reference_modules], [m.randn for m in our_modules])
    for m in reference_modules:
        m.randn_tensor = ref_randn
    for m in our_modules:
        m.randn = our_randn

    def undo():
        for m, f in zip(reference_modules, saved[0]):
            m.randn_tensor = f
        for m, f in zip(our_modules, saved[1]):
            m.randn = f

    return undo


def run_reference_with_callback(pipe, kwargs, callback=None):
    """Run a diffusers pipeline (`return_dict=True`); `callback(step, latents) -> numpy array or None` sees the
    latents after every step as numpy (through diffusers' `callback_on_step_end`) and may replace them."""
    import torch

    def on_step(_pipe, i, _t, tensors):
        lat = tensors["latents"]
        new = callback(i, lat.detach().float().numpy())
        return {} if new is None else {"latents": torch.from_numpy(np.asarray(new)).to(lat.dtype)}

    with torch.no_grad():
        return pipe(**kwargs, callback_on_step_end=on_step if callback else None, return_dict=True)


def run_ours_with_callback(pipe, kwargs, callback=None):
    """Run a mindport pipeline; `callback(step, latents) -> numpy array or None` may replace the latents after a step
    (re-synchronisation to the reference)."""
    from mindspore import Tensor

    def on_step(_pipe, i, _t, tensors):
        new = callback(i, tensors["latents"])
        return {} if new is None else {"latents": Tensor(new).astype(tensors["latents"].dtype)}

    return pipe(**kwargs, callback_on_step_end=on_step if callback else None)
