"""FreeNoise's sliding-window motion block (diffusers' `FreeNoiseTransformerBlock`, models/attention.py, 0.42.1), and
the swap of a UNetMotionModel's motion transformer blocks to it and back.

A motion module's transformer block sees (B*H*W, F, C) sequences over frames. The windowed block runs its two
attentions on windows of `context_length` frames, `context_stride` apart (the last window ends at the last frame),
each window with its own frame positions 0..context_length-1, so F may exceed the motion modules' position table.
The windows' outputs are blended per frame with the weights of `weighting_scheme`, then the feed-forward runs on all F
frames at once:

    windows  (0, L), (s, s+L), (2s, 2s+L), ...  plus (F-L, F) when the stride does not land on F
    blend    out[f] = sum_w weight_w[f] * attn_w[f] / count[f]

The block is built from the plain `BasicTransformerBlock` and holds the same cells (norm1, attn1, norm2, attn2, norm3,
ff, pos_embed): the weights are shared, not copied, and the module paths (`...transformer_blocks.k.attn1`) are
diffusers'. As diffusers 0.42.1 does, the tail window (when the stride does not land on F) adds its last r frames
with their per-position weights but counts each of them with one weight, the window's position L-r.

`SplitInferenceModule` (diffusers' name and module path `.module`) runs a cell on slices of its batch, for FreeNoise's
memory saving on long videos (`enable_free_noise_split_inference`): the same numbers in smaller pieces.
"""

from __future__ import annotations

import inspect

import numpy as np
from mindspore import Tensor, nn, ops

from .. import backend

WEIGHTING_SCHEMES = ("flat", "pyramid", "delayed_reverse_sawtooth")


def frame_weights(length: int, scheme: str) -> list[float]:
    """One window's per-frame blend weights: flat [1, 1, 1, 1, 1], pyramid [1, 2, 3, 2, 1] / [1, 2, 2, 1],
    delayed_reverse_sawtooth [0.01, 0.01, 3, 2, 1] / [0.01, 2, 2, 1]. (For an odd length diffusers 0.42.1 builds
    length + 1 sawtooth weights and its block fails; here the pattern its docstring gives.)"""
    if scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"unknown weighting_scheme {scheme!r}; expected one of {list(WEIGHTING_SCHEMES)}")
    mid = (length + 1) // 2
    if scheme == "flat":
        return [1.0] * length
    rise = [float(i) for i in range(1, mid + 1)]
    if scheme == "pyramid":  # 1 .. mid .. 1 (mid twice for an even length)
        return rise + rise[::-1][length % 2:]
    # delayed_reverse_sawtooth: 0.01 while rising, then mid .. 1 (mid twice for an even length)
    peak = [] if length % 2 else [float(mid)]
    return [0.01] * (length - mid - len(peak)) + peak + rise[::-1]


def window_ranges(num_frames: int, length: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of each window: every `stride` frames while a whole window fits, then one ending at the last
    frame if the stride did not land there."""
    if num_frames < length:
        raise ValueError(f"FreeNoise: {num_frames} frames are fewer than context_length={length}; give at least "
                         f"{length} frames or a shorter context_length")
    windows = [(i, i + length) for i in range(0, num_frames - length + 1, stride)]
    if windows[-1][1] != num_frames:
        windows.append((num_frames - length, num_frames))
    return windows


class FreeNoiseTransformerBlock(nn.Cell):
    """A BasicTransformerBlock run over windows of frames (see the module docstring). `plain` gives back the block it
    was built from."""

    def __init__(self, block: nn.Cell, context_length: int = 16, context_stride: int = 4,
                 weighting_scheme: str = "pyramid"):
        super().__init__()
        self._plain = (block,)  # a tuple: held, not a child cell (its cells are this block's own)
        self.only_cross_attention = block.only_cross_attention
        for name in ("pos_embed", "norm1", "attn1", "norm2", "attn2", "norm3", "ff"):
            setattr(self, name, getattr(block, name))
        self.set_free_noise_properties(context_length, context_stride, weighting_scheme)

    @property
    def plain(self) -> nn.Cell:
        return self._plain[0]

    def set_free_noise_properties(self, context_length: int, context_stride: int, weighting_scheme: str = "pyramid"):
        self.weights = frame_weights(context_length, weighting_scheme)
        self.context_length = context_length
        self.context_stride = context_stride
        self.weighting_scheme = weighting_scheme

    def _attend(self, hidden_states: Tensor, attention_mask, encoder_hidden_states, encoder_attention_mask) -> Tensor:
        """Self-attention then cross-attention (each pre-norm, with frame positions, residual) on one window."""
        norm = self.norm1(hidden_states)
        if self.pos_embed is not None:
            norm = self.pos_embed(norm)
        context = encoder_hidden_states if self.only_cross_attention else None
        hidden_states = backend.add(self.attn1(norm, context, attention_mask), hidden_states)
        if self.attn2 is not None:
            norm = self.norm2(hidden_states)
            if self.pos_embed is not None:
                norm = self.pos_embed(norm)
            hidden_states = backend.add(self.attn2(norm, encoder_hidden_states, encoder_attention_mask), hidden_states)
        return hidden_states

    def construct(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                  encoder_hidden_states: Tensor | None = None, encoder_attention_mask: Tensor | None = None) -> Tensor:
        # hidden_states: (B*H*W, F, C)
        num_frames, length = hidden_states.shape[1], self.context_length
        windows = window_ranges(num_frames, length, self.context_stride)
        tail = (num_frames - length) % self.context_stride != 0
        weights = np.asarray(self.weights, np.float32)
        counts = np.zeros(num_frames, np.float32)
        accumulated = None
        # 1. attentions per window, weighted and placed at the window's frames (zeros elsewhere)
        for k, (start, end) in enumerate(windows):
            out = self._attend(hidden_states[:, start:end], attention_mask, encoder_hidden_states,
                               encoder_attention_mask)
            w = weights
            if k == len(windows) - 1 and tail:  # the tail window: only the frames the others left out
                kept = num_frames - windows[k - 1][1]
                out, w, start = out[:, -kept:], w[-kept:], num_frames - kept
                counts[start:] += weights[length - kept]
            else:
                counts[start:end] += w
            out = out * Tensor(w.reshape(1, -1, 1)).astype(out.dtype)
            out = ops.pad(out, (0, 0, start, num_frames - end))
            accumulated = out if accumulated is None else accumulated + out
        # 2. the blend: each frame's weighted sum over the windows that hold it, by its summed weight
        hidden_states = (accumulated / Tensor(counts.reshape(1, -1, 1))).astype(hidden_states.dtype)
        # 3. feed-forward over all frames
        return backend.add(self.ff(self.norm3(hidden_states)), hidden_states)


class SplitInferenceModule(nn.Cell):
    """`module` run on slices of `split_size` along `split_dim` of its inputs named in `input_kwargs_to_split`
    (positional or keyword; None passes whole), the outputs (a tensor, or a tuple of them) concatenated back."""

    def __init__(self, module: nn.Cell, split_size: int = 1, split_dim: int = 0,
                 input_kwargs_to_split=("hidden_states",)):
        super().__init__()
        self.module = module
        self.split_size, self.split_dim = int(split_size), int(split_dim)
        self.input_kwargs_to_split = tuple(input_kwargs_to_split)

    def construct(self, *args, **kwargs):
        inputs = inspect.signature(self.module.construct).bind(*args, **kwargs).arguments
        pieces = {k: ops.split(v, self.split_size, self.split_dim) for k, v in inputs.items()
                  if k in self.input_kwargs_to_split and isinstance(v, Tensor)}
        results = [self.module(**{**inputs, **{k: v[i] for k, v in pieces.items()}})
                   for i in range(len(next(iter(pieces.values()))))]
        if isinstance(results[0], tuple):
            return tuple(ops.cat(list(parts), axis=self.split_dim) for parts in zip(*results))
        return ops.cat(results, axis=self.split_dim)


def input_names(cell: nn.Cell, count: int) -> tuple[str, ...]:
    """The names of a cell's first `count` construct parameters (what SplitInferenceModule splits)."""
    return tuple(list(inspect.signature(cell.construct).parameters)[:count])


def unwrap(cell: nn.Cell) -> nn.Cell:
    """The cell a SplitInferenceModule wraps (the cell itself otherwise)."""
    return cell.module if isinstance(cell, SplitInferenceModule) else cell


def replace(parent: nn.Cell, key, make) -> None:
    """parent[key] (a CellList index) or parent.key (an attribute) = make(that cell), the parameters keeping their
    full names (building the new cell and assigning it would prefix them anew)."""
    old = parent[key] if isinstance(key, int) else getattr(parent, key)
    names = [(p, p.name) for p in old.get_parameters()]

    def restore():
        for p, name in names:
            p.name = name

    new = make(old)
    restore()  # CellList reads its prefix from its cells' parameter names
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)
    restore()


def _block_slots(motion_transformers):
    """(parent, key, block) for every motion transformer block: its CellList slot, or, when split inference wraps it,
    the wrapper's `module` (the wrapper keeps its place)."""
    for module in motion_transformers:
        for i, block in enumerate(module.transformer_blocks):
            if isinstance(block, SplitInferenceModule):
                yield block, "module", block.module
            else:
                yield module.transformer_blocks, i, block


def use_windowed_blocks(motion_transformers, context_length: int, context_stride: int, weighting_scheme: str) -> None:
    """Every motion transformer's blocks become FreeNoise blocks (or, already, take the new settings)."""
    frame_weights(context_length, weighting_scheme)  # an unknown scheme fails before any block changes
    for parent, key, block in list(_block_slots(motion_transformers)):
        if isinstance(block, FreeNoiseTransformerBlock):
            block.set_free_noise_properties(context_length, context_stride, weighting_scheme)
        else:
            replace(parent, key, lambda b: FreeNoiseTransformerBlock(b, context_length, context_stride,
                                                                     weighting_scheme))


def use_plain_blocks(motion_transformers) -> None:
    """The blocks FreeNoise replaced, back in place (the same cells, so the same weights)."""
    for parent, key, block in list(_block_slots(motion_transformers)):
        if isinstance(block, FreeNoiseTransformerBlock):
            replace(parent, key, lambda b: b.plain)


__all__ = ["FreeNoiseTransformerBlock", "SplitInferenceModule", "WEIGHTING_SCHEMES", "frame_weights", "window_ranges",
           "use_windowed_blocks", "use_plain_blocks", "input_names", "unwrap", "replace"]
