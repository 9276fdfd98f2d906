"""Parameterised layers with PyTorch's parameter names (`weight`, `bias`) and shapes, so converted checkpoints load
by module path. Computation goes through `mindport.backend`, which picks the fast implementation per device."""

from __future__ import annotations

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from . import backend


def _param(shape, init="zeros") -> Parameter:
    # Constant-filled float32, never random: a model is built in milliseconds even at full size (random init of a
    # 1.5 B parameter UNet takes minutes), then filled from a checkpoint. NumPy zeros are untouched pages until
    # written, and a Parameter over them costs ~60 us against ~350 us for one over a MindSpore initializer (a tiny
    # pipeline builds ~600 of them: a third of its load time went there).
    fill = {"zeros": np.zeros, "ones": np.ones}[init]
    return Parameter(Tensor.from_numpy(fill(tuple(shape), np.float32)))


def _pair(v, n=2):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class Linear(nn.Cell):
    # the unfused LoRA paths on this layer (mindport.lora sets it per instance while an adapter is active): a callable
    # (x, y) -> y + the low-rank terms; None costs one attribute test and no op
    lora = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _param((out_features, in_features))
        self.bias = _param((out_features,), "zeros") if bias else None

    def construct(self, x: Tensor) -> Tensor:
        y = backend.linear(x, self.weight, self.bias)
        return y if self.lora is None else self.lora(x, y)


class Conv2d(nn.Cell):
    lora = None  # as Linear.lora (LoCon: a (r, in, kh, kw) conv then a 1x1 conv)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__()
        k = _pair(kernel_size)
        self.stride, self.padding, self.groups = _pair(stride), _pair(padding), groups
        self.weight = _param((out_channels, in_channels // groups, *k))
        self.bias = _param((out_channels,), "zeros") if bias else None

    def construct(self, x: Tensor) -> Tensor:
        y = backend.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)
        return y if self.lora is None else self.lora(x, y)


class Conv3d(nn.Cell):
    """Stride-1 3D convolution (the ports use temporal kernels such as (3, 1, 1))."""

    lora = None  # as Conv2d.lora (a (r, in, kt, kh, kw) conv then a 1x1x1 conv)

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=True):
        super().__init__()
        k = _pair(kernel_size, 3)
        self.padding = _pair(padding, 3)
        self.weight = _param((out_channels, in_channels, *k))
        self.bias = _param((out_channels,), "zeros") if bias else None

    def construct(self, x: Tensor) -> Tensor:
        y = backend.conv3d(x, self.weight, self.bias, self.padding)
        return y if self.lora is None else self.lora(x, y)


class GroupNorm(nn.Cell):
    """GroupNorm over (B, C, *): 4D images and 5D (B, C, F, H, W) videos (frames normalised jointly)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by num_groups={num_groups}")
        self.num_groups, self.eps = num_groups, float(eps)
        self.weight = _param((num_channels,), "ones") if affine else None
        self.bias = _param((num_channels,), "zeros") if affine else None

    def construct(self, x: Tensor) -> Tensor:
        return backend.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(nn.Cell):
    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        self.eps = float(eps)
        self.weight = _param((dim,), "ones") if elementwise_affine else None
        self.bias = _param((dim,), "zeros") if (elementwise_affine and bias) else None

    def construct(self, x: Tensor) -> Tensor:
        return backend.layer_norm(x, self.weight, self.bias, self.eps)


class Embedding(nn.Cell):
    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.weight = _param((num_embeddings, dim))

    def construct(self, ids: Tensor) -> Tensor:
        return ops.gather(self.weight, ids, 0)


class Dropout(nn.Cell):
    """Inference only: identity. Kept as a cell so module indices (`to_out.0`, `ff.net.2`) match diffusers."""

    def construct(self, x: Tensor) -> Tensor:
        return x


class SiLU(nn.Cell):
    def construct(self, x: Tensor) -> Tensor:
        return backend.silu(x)


class Identity(nn.Cell):
    def construct(self, x: Tensor) -> Tensor:
        return x


def get_activation(name: str) -> nn.Cell:
    table = {"silu": SiLU, "swish": SiLU, "gelu": GELUActivation, "quick_gelu": QuickGELU}
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(table)}")
    return table[name]()


class GELUActivation(nn.Cell):
    def construct(self, x: Tensor) -> Tensor:
        return backend.gelu(x)


class QuickGELU(nn.Cell):
    def construct(self, x: Tensor) -> Tensor:
        return backend.quick_gelu(x)
