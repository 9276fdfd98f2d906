"""Plumbing every pipeline adapter shares: routing random draws through the shared noise source, step callbacks
(record the reference's latents, re-synchronise ours), and a fixture's stored sampler settings."""

from __future__ import annotations

import sys

import numpy as np

from .fixtures import fixture_run_settings


def patch_randn(noise, reference_modules, our_modules):
    """Replace `randn_tensor` in each diffusers module and `randn` in each mindport module by draws from `noise`
    (logged with the calling function's name). Returns an undo function."""
    import torch

    def ref_randn(shape, generator=None, device=None, dtype=None, layout=None):
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


def preset_run(settings: dict) -> dict:
    """Sampler settings stored with a tiny fixture (guidance, eta, decode chunk); empty for other checkpoints."""
    try:
        return fixture_run_settings(settings["source"])
    except (OSError, ValueError, KeyError):
        return {}
