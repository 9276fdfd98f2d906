"""One comparison helper for every test: says where, how much, and both values."""

import numpy as np


def to_numpy(x):
    if hasattr(x, "asnumpy"):
        return x.asnumpy()
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def assert_close(actual, expected, rel_l2=1e-5, where=""):
    """relative L2 ||a-b|| / ||b|| must stay under `rel_l2`; on failure name the worst element and both values."""
    a = to_numpy(actual).astype(np.float64)
    b = to_numpy(expected).astype(np.float64)
    assert a.shape == b.shape, f"{where}: shape {a.shape} (mindspore) != {b.shape} (torch)"
    err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    if not err <= rel_l2:
        idx = np.unravel_index(np.argmax(np.abs(a - b)), a.shape)
        raise AssertionError(
            f"{where}: relative L2 {err:.3e} > {rel_l2:.1e}; max abs {np.abs(a - b).max():.3e} at {idx}: "
            f"mindspore {a[idx]:.6g} vs torch {b[idx]:.6g}"
        )
    return err


def torch_state_to_numpy(module):
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| in float64 (the project's relative L2)."""
    a, b = np.asarray(to_numpy(a), np.float64), np.asarray(to_numpy(b), np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def both(fn, ops_path):
    """fn() with the kernels, and with MindSpore ops only."""
    from mindport import backend

    assert backend.kernel_library() is not None, "the kernels did not build on this machine"
    fast = fn().asnumpy()
    with ops_path:
        slow = fn().asnumpy()
    return fast, slow


def run_with_shared_noise(adapter, seed, reference, ours):
    """(ours(), reference(), noise): the reference run, then ours, with the adapter's noise sites drawing from one
    numpy stream per side (parity.noise.SharedNoise, the harness's noise); asserts both sides drew the same shapes
    in the same order."""
    import torch

    from parity.noise import SharedNoise

    noise = SharedNoise(seed)
    undo = adapter.patch_noise(noise)
    try:
        noise.start("torch", "reference")
        with torch.no_grad():
            expected = reference()
        noise.start("mindspore", "ours")
        got = ours()
    finally:
        undo()
    assert noise.mismatches() == []
    return got, expected, noise
