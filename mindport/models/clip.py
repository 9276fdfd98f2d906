"""CLIP encoders (transformers' `CLIPVisionModelWithProjection`, `CLIPTextModel`, `CLIPTextModelWithProjection`).

Module paths follow transformers 5 so checkpoints load by name and the parity harness can pair every cell with its
torch module:

    vision_model.embeddings.{class_embedding, patch_embedding, position_embedding}
    vision_model.pre_layrnorm                     (sic: transformers' spelling)
    vision_model.encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}
    vision_model.post_layernorm
    visual_projection

Output layouts per cell also follow transformers: an attention returns `(attn_output, None)`, an encoder layer a
tensor, the encoder `Output(last_hidden_state=...)`, the inner vision/text model `Output(last_hidden_state,
pooler_output)`. `position_ids` is a plain tensor attribute, not a parameter (transformers keeps it as a
non-persistent buffer; older checkpoints that still contain it are the converter's business).
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import backend
from ..layers import Conv2d, Embedding, LayerNorm, Linear, _param, get_activation
from ..modeling import ModelMixin, Output


def _check_heads(hidden_size: int, num_attention_heads: int) -> None:
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"CLIP: hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}"
        )


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))


# ----------------------------------------------------------------------------------------------------------------
# Shared transformer blocks (vision and text)
# ----------------------------------------------------------------------------------------------------------------


class CLIPAttention(nn.Cell):
    """Multi-head self attention. Returns `(attn_output, None)` like transformers with a fused attention kernel."""

    def __init__(self, hidden_size: int, num_attention_heads: int):
        super().__init__()
        _check_heads(hidden_size, num_attention_heads)
        self.embed_dim = hidden_size
        self.num_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.scale = self.head_dim**-0.5
        self.k_proj = Linear(hidden_size, hidden_size)
        self.v_proj = Linear(hidden_size, hidden_size)
        self.q_proj = Linear(hidden_size, hidden_size)
        self.out_proj = Linear(hidden_size, hidden_size)

    def construct(self, hidden_states: Tensor, attention_mask: Tensor | None = None):
        b, length, _ = hidden_states.shape
        # softmax(q k^T * scale + mask) v per head, with an additive mask (B or 1, 1, L, L); (B, L, D) throughout
        out = backend.attention_heads(self.q_proj(hidden_states), self.k_proj(hidden_states),
                                      self.v_proj(hidden_states), self.num_heads, self.scale, attention_mask)
        return self.out_proj(out), None


class CLIPMLP(nn.Cell):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.activation_fn = get_activation(hidden_act)
        self.fc1 = Linear(hidden_size, intermediate_size)
        self.fc2 = Linear(intermediate_size, hidden_size)

    def construct(self, hidden_states: Tensor) -> Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Cell):
    """Pre-norm transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, hidden_size, intermediate_size, num_attention_heads, hidden_act, layer_norm_eps):
        super().__init__()
        self.embed_dim = hidden_size
        self.self_attn = CLIPAttention(hidden_size, num_attention_heads)
        self.layer_norm1 = LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, hidden_act)
        self.layer_norm2 = LayerNorm(hidden_size, eps=layer_norm_eps)

    def construct(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        attn_out, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask)
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Cell):
    """`layers.N` stack. Returns Output(last_hidden_state[, hidden_states]); `hidden_states` (when asked) holds the
    input followed by every layer's output, as transformers' `output_hidden_states=True` does."""

    def __init__(self, num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, hidden_act, layer_norm_eps):
        super().__init__()
        self.layers = nn.CellList(
            [
                CLIPEncoderLayer(hidden_size, intermediate_size, num_attention_heads, hidden_act, layer_norm_eps)
                for _ in range(num_hidden_layers)
            ]
        )

    def construct(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool = False):
        hidden_states = inputs_embeds
        all_states = [hidden_states]
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
            all_states.append(hidden_states)
        if output_hidden_states:
            return Output(last_hidden_state=hidden_states, hidden_states=tuple(all_states))
        return Output(last_hidden_state=hidden_states)


# ----------------------------------------------------------------------------------------------------------------
# Vision
# ----------------------------------------------------------------------------------------------------------------


class CLIPVisionEmbeddings(nn.Cell):
    """[CLS] + patch embeddings (a stride=patch conv) + learned position embeddings: (B, C, H, W) -> (B, 1+N, D)."""

    def __init__(self, hidden_size: int, num_channels: int, image_size: int, patch_size: int):
        super().__init__()
        self.embed_dim, self.image_size, self.patch_size = hidden_size, image_size, patch_size
        if image_size % patch_size:
            raise ValueError(f"CLIP: image_size={image_size} is not a multiple of patch_size={patch_size}")
        self.class_embedding = _param((hidden_size,))
        self.patch_embedding = Conv2d(num_channels, hidden_size, patch_size, stride=patch_size, bias=False)
        self.num_patches = (image_size // patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = Embedding(self.num_positions, hidden_size)
        self.position_ids = Tensor(np.arange(self.num_positions, dtype=np.int32)[None])  # buffer, not a parameter

    def _interpolated_positions(self, height: int, width: int) -> Tensor:
        """Position table bicubically resized to a (height/patch, width/patch) grid (transformers'
        `interpolate_pos_encoding`: torch bicubic, align_corners=False, the [CLS] position kept)."""
        from ..image_processing import bicubic_matrix

        table = self.position_embedding.weight  # (1+N, D)
        side = int(round(self.num_patches**0.5))
        new_h, new_w = height // self.patch_size, width // self.patch_size
        if (new_h, new_w) == (side, side):
            return self.position_embedding(self.position_ids)
        dt = table.dtype
        grid = table[1:].astype(ms.float32).reshape(side, side, self.embed_dim)  # (gh, gw, D)
        mh = Tensor(bicubic_matrix(side, new_h, align_corners=False))  # (new_h, gh)
        mw = Tensor(bicubic_matrix(side, new_w, align_corners=False))  # (new_w, gw)
        grid = ops.matmul(mh, grid.reshape(side, side * self.embed_dim)).reshape(new_h, side, self.embed_dim)
        grid = ops.matmul(mw, backend.permute(grid, (1, 0, 2)).reshape(side, new_h * self.embed_dim))
        grid = backend.permute(grid.reshape(new_w, new_h, self.embed_dim), (1, 0, 2))
        grid = grid.reshape(new_h * new_w, self.embed_dim)
        return ops.cat([table[:1].astype(ms.float32), grid], axis=0).astype(dt)[None]

    def construct(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        b, _, h, w = pixel_values.shape
        if not interpolate_pos_encoding and (h != self.image_size or w != self.image_size):
            raise ValueError(
                f"CLIP: input image size ({h}*{w}) doesn't match model ({self.image_size}*{self.image_size})"
            )
        # 1. patchify: (B, C, H, W) -> (B, D, H/p, W/p) -> (B, N, D)
        patches = self.patch_embedding(pixel_values.astype(self.patch_embedding.weight.dtype))
        patches = backend.permute(patches.reshape(b, self.embed_dim, -1), (0, 2, 1))
        # 2. prepend [CLS]: (B, 1+N, D)
        cls = ops.broadcast_to(self.class_embedding.astype(patches.dtype).reshape(1, 1, -1), (b, 1, self.embed_dim))
        embeddings = ops.cat([cls, patches], axis=1)
        # 3. add positions
        if interpolate_pos_encoding:
            return embeddings + self._interpolated_positions(h, w)
        return embeddings + self.position_embedding(self.position_ids)


class CLIPVisionModel(ModelMixin):
    """transformers' CLIPVisionModel: embeddings -> pre_layrnorm -> encoder; pooler = post_layernorm([CLS])."""

    diffusers_class = "CLIPVisionModel"
    # transformers builds and runs with it null (inference has no dropout)
    nullable_config = frozenset({"attention_dropout"})
    config_choices = {"hidden_act": ("quick_gelu", "gelu")}
    config_library = "transformers"

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        projection_dim: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_channels: int = 3,
        image_size: int = 224,
        patch_size: int = 32,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        initializer_factor: float = 1.0,
    ):
        super().__init__()
        _check_heads(hidden_size, num_attention_heads)
        self.embeddings = CLIPVisionEmbeddings(hidden_size, num_channels, image_size, patch_size)
        self.pre_layrnorm = LayerNorm(hidden_size, eps=layer_norm_eps)
        self.encoder = CLIPEncoder(
            num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, hidden_act, layer_norm_eps
        )
        self.post_layernorm = LayerNorm(hidden_size, eps=layer_norm_eps)

    def construct(self, pixel_values, interpolate_pos_encoding: bool = False, output_hidden_states: bool = False):
        # 1. embed: (B, C, H, W) -> (B, 1+N, D)
        hidden_states = self.embeddings(_as_tensor(pixel_values), interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(hidden_states)
        # 2. encode
        enc = self.encoder(hidden_states, None, output_hidden_states)
        last_hidden_state = enc.last_hidden_state
        # 3. pool the [CLS] token: (B, D)
        pooled = self.post_layernorm(last_hidden_state[:, 0, :])
        if output_hidden_states:
            return Output(last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=enc.hidden_states)
        return Output(last_hidden_state=last_hidden_state, pooler_output=pooled)


class CLIPVisionModelWithProjection(ModelMixin):
    """SVD's / I2VGen-XL's image encoder: CLIPVisionModel + `visual_projection` of the pooled [CLS] token.

    construct(pixel_values) -> Output(image_embeds (B, projection_dim), last_hidden_state (B, 1+N, D)
    [, hidden_states when output_hidden_states=True])."""

    diffusers_class = "CLIPVisionModelWithProjection"
    nullable_config = frozenset({"attention_dropout"})
    config_choices = {"hidden_act": ("quick_gelu", "gelu")}
    config_library = "transformers"

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        projection_dim: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_channels: int = 3,
        image_size: int = 224,
        patch_size: int = 32,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        initializer_factor: float = 1.0,
    ):
        super().__init__()
        self.vision_model = CLIPVisionModel(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            projection_dim=projection_dim,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_channels=num_channels,
            image_size=image_size,
            patch_size=patch_size,
            hidden_act=hidden_act,
            layer_norm_eps=layer_norm_eps,
        )
        self.visual_projection = Linear(hidden_size, projection_dim, bias=False)

    def construct(self, pixel_values, interpolate_pos_encoding: bool = False, output_hidden_states: bool = False):
        out = self.vision_model(pixel_values, interpolate_pos_encoding, output_hidden_states)
        image_embeds = self.visual_projection(out.pooler_output)
        if output_hidden_states:
            return Output(image_embeds=image_embeds, last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states)
        return Output(image_embeds=image_embeds, last_hidden_state=out.last_hidden_state)


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------

# additive mask value for hidden positions; scores are fp32 inside backend.attention, where exp(-1e9) == 0 exactly
_MASK_VALUE = -1e9


class CLIPTextEmbeddings(nn.Cell):
    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int):
        super().__init__()
        self.token_embedding = Embedding(vocab_size, hidden_size)
        self.position_embedding = Embedding(max_position_embeddings, hidden_size)
        self.position_ids = Tensor(np.arange(max_position_embeddings, dtype=np.int32)[None])  # buffer

    def construct(self, input_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
        seq = input_ids.shape[-1]
        max_pos = self.position_embedding.weight.shape[0]
        if seq > max_pos:
            raise ValueError(f"CLIP text: sequence length {seq} exceeds max_position_embeddings={max_pos}")
        if position_ids is None:
            position_ids = self.position_ids[:, :seq]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


def _text_mask(input_ids: np.ndarray, attention_mask) -> Tensor:
    """Causal mask combined with an optional padding mask (1 keep, 0 hide): additive (B or 1, 1, L, L) float32."""
    length = input_ids.shape[-1]
    causal = np.triu(np.full((length, length), _MASK_VALUE, np.float32), k=1)[None, None]
    if attention_mask is not None:
        am = attention_mask.asnumpy() if isinstance(attention_mask, Tensor) else np.asarray(attention_mask)
        pad = np.where(am[:, None, None, :].astype(bool), 0.0, _MASK_VALUE).astype(np.float32)
        causal = np.minimum(causal + pad, 0.0)
        causal = np.maximum(causal, _MASK_VALUE)
    return Tensor(causal)


class CLIPTextModel(ModelMixin):
    """transformers 5 `CLIPTextModel` (module tree embeddings / encoder / final_layer_norm at the top; released
    checkpoints prefix these with `text_model.`, which the converter strips). Pooling takes the EOS position:
    argmax of the ids when eos_token_id == 2 (legacy configs), else the first id equal to eos_token_id."""

    diffusers_class = "CLIPTextModel"
    # transformers builds and runs with these null (unused by the text tower's forward); eos_token_id is needed
    nullable_config = frozenset({"attention_dropout", "pad_token_id", "bos_token_id", "projection_dim"})
    config_choices = {"hidden_act": ("quick_gelu", "gelu")}
    config_library = "transformers"

    def __init__(
        self,
        vocab_size: int = 49408,
        hidden_size: int = 512,
        intermediate_size: int = 2048,
        projection_dim: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 8,
        max_position_embeddings: int = 77,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        initializer_factor: float = 1.0,
        pad_token_id: int = 1,
        bos_token_id: int = 49406,
        eos_token_id: int = 49407,
    ):
        super().__init__()
        _check_heads(hidden_size, num_attention_heads)
        self.eos_token_id = eos_token_id
        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden_size, max_position_embeddings)
        self.encoder = CLIPEncoder(
            num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, hidden_act, layer_norm_eps
        )
        self.final_layer_norm = LayerNorm(hidden_size, eps=layer_norm_eps)

    def construct(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states: bool = False):
        ids_np = input_ids.asnumpy() if isinstance(input_ids, Tensor) else np.asarray(input_ids)
        ids_np = ids_np.reshape(-1, ids_np.shape[-1]).astype(np.int64)
        # 1. embed: (B, L) -> (B, L, D)
        hidden_states = self.embeddings(Tensor(ids_np.astype(np.int32)), None if position_ids is None else _as_tensor(position_ids))
        # 2. causal (+ padding) self attention
        enc = self.encoder(hidden_states, _text_mask(ids_np, attention_mask), output_hidden_states)
        last_hidden_state = self.final_layer_norm(enc.last_hidden_state)
        # 3. pool at the EOS token: (B, D)
        if self.eos_token_id == 2:
            eos_pos = ids_np.argmax(-1)
        else:
            eos_pos = (ids_np == self.eos_token_id).astype(np.int32).argmax(-1)
        idx = Tensor((np.arange(ids_np.shape[0]) * ids_np.shape[1] + eos_pos).astype(np.int32))
        pooled = ops.gather(last_hidden_state.reshape(-1, last_hidden_state.shape[-1]), idx, 0)
        if output_hidden_states:
            return Output(last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=enc.hidden_states)
        return Output(last_hidden_state=last_hidden_state, pooler_output=pooled)


class CLIPTextModelWithProjection(ModelMixin):
    """`text_model` (a CLIPTextModel) + `text_projection` of the pooled EOS token -> Output(text_embeds,
    last_hidden_state[, hidden_states])."""

    diffusers_class = "CLIPTextModelWithProjection"
    nullable_config = frozenset({"attention_dropout", "pad_token_id", "bos_token_id"})
    config_choices = {"hidden_act": ("quick_gelu", "gelu")}
    config_library = "transformers"

    def __init__(
        self,
        vocab_size: int = 49408,
        hidden_size: int = 512,
        intermediate_size: int = 2048,
        projection_dim: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 8,
        max_position_embeddings: int = 77,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        initializer_factor: float = 1.0,
        pad_token_id: int = 1,
        bos_token_id: int = 49406,
        eos_token_id: int = 49407,
    ):
        super().__init__()
        self.text_model = CLIPTextModel(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            projection_dim=projection_dim,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            max_position_embeddings=max_position_embeddings,
            hidden_act=hidden_act,
            layer_norm_eps=layer_norm_eps,
            eos_token_id=eos_token_id,
        )
        self.text_projection = Linear(hidden_size, projection_dim, bias=False)

    def construct(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states: bool = False):
        out = self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)
        text_embeds = self.text_projection(out.pooler_output)
        if output_hidden_states:
            return Output(text_embeds=text_embeds, last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states)
        return Output(text_embeds=text_embeds, last_hidden_state=out.last_hidden_state)
