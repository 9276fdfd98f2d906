"""AnimateDiff: the MotionAdapter and the UNetMotionModel (diffusers format), and the motion-module files of the
original AnimateDiff release (`mm_sd_v15*.ckpt`, `v3_sd15_mm.ckpt`, ...), a single file with no config.

Diffusers format: every tensor keeps its name; the persisted sinusoidal tables `...transformer_blocks.K.pos_embed.pe`
are dropped (the port recomputes them from `motion_max_seq_length`).

Original format: the same module tree with other leaf names. Per motion module (prefix P =
`down_blocks.I.motion_modules.J`, `mid_block.motion_modules.J` or `up_blocks.I.motion_modules.J`):

    P.temporal_transformer.{norm, proj_in, proj_out}.*              -> P.{norm, proj_in, proj_out}.*
    P.temporal_transformer.transformer_blocks.K.attention_blocks.0.* -> P.transformer_blocks.K.attn1.*
    P.temporal_transformer.transformer_blocks.K.attention_blocks.1.* -> P.transformer_blocks.K.attn2.*
    P.temporal_transformer.transformer_blocks.K.norms.0.*            -> P.transformer_blocks.K.norm1.*
    P.temporal_transformer.transformer_blocks.K.norms.1.*            -> P.transformer_blocks.K.norm2.*
    P.temporal_transformer.transformer_blocks.K.ff_norm.*            -> P.transformer_blocks.K.norm3.*
    P.temporal_transformer.transformer_blocks.K.ff.net.{0.proj,2}.*  -> P.transformer_blocks.K.ff.net.{0.proj,2}.*
    P.temporal_transformer.transformer_blocks.K.attention_blocks.N.pos_encoder.pe  -> dropped (recomputed)

A single original file carries no config. `infer_motion_adapter_config` reads what the tensor shapes determine
(channels per level, motion modules per level, transformer layers, mid block, `pos_encoder.pe` length, PIA conv_in)
and takes the rest from the caller, with diffusers' defaults otherwise: `motion_num_attention_heads` (8) and
`motion_norm_num_groups` (32) do not show in any shape.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import ArchitectureConverter, Rule
from .errors import ConversionError
from .sd import UNet2DConditionConverter
from .sources import ComponentSource, read_tensors

# prefix of one motion module in either format
_P = r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)"
_TT = _P + r"\.temporal_transformer"
_TB = _TT + r"\.transformer_blocks\.(\d+)"
_OUT = r"\1.motion_modules.\2"

POS_EMBED_ROWS = (
    Rule(r"(.*\.transformer_blocks\.\d+)\.pos_embed\.pe", None,
         reason="sinusoidal position table (persisted buffer); recomputed from motion_max_seq_length"),
)

ORIGINAL_MOTION_MODULE_ROWS = (
    Rule(_TT + r"\.(norm|proj_in|proj_out)\.(weight|bias)", _OUT + r".\3.\4",
         reason="original release: temporal_transformer level removed"),
    Rule(_TB + r"\.attention_blocks\.0\.(to_q\.weight|to_k\.weight|to_v\.weight|to_out\.0\.weight|to_out\.0\.bias)",
         _OUT + r".transformer_blocks.\3.attn1.\4", reason="original release: attention_blocks.0 is attn1"),
    Rule(_TB + r"\.attention_blocks\.1\.(to_q\.weight|to_k\.weight|to_v\.weight|to_out\.0\.weight|to_out\.0\.bias)",
         _OUT + r".transformer_blocks.\3.attn2.\4", reason="original release: attention_blocks.1 is attn2"),
    Rule(_TB + r"\.norms\.0\.(weight|bias)", _OUT + r".transformer_blocks.\3.norm1.\4",
         reason="original release: norms.0 is norm1"),
    Rule(_TB + r"\.norms\.1\.(weight|bias)", _OUT + r".transformer_blocks.\3.norm2.\4",
         reason="original release: norms.1 is norm2"),
    Rule(_TB + r"\.ff_norm\.(weight|bias)", _OUT + r".transformer_blocks.\3.norm3.\4",
         reason="original release: ff_norm is norm3"),
    Rule(_TB + r"\.ff\.(net\.0\.proj|net\.2)\.(weight|bias)", _OUT + r".transformer_blocks.\3.ff.\4.\5",
         reason="original release: temporal_transformer level removed"),
    Rule(_TB + r"\.attention_blocks\.[01]\.pos_encoder\.pe", None,
         reason="original release: sinusoidal position table; recomputed from motion_max_seq_length"),
)


def is_original_format(keys) -> bool:
    return any(".temporal_transformer." in k for k in keys)


class MotionAdapterConverter(ArchitectureConverter):
    """Diffusers-format adapters (identity + dropped position tables) and original-release motion modules (the
    rows above). A checkpoint must use one naming throughout."""

    class_name = "MotionAdapter"
    rules = POS_EMBED_ROWS + ORIGINAL_MOTION_MODULE_ROWS

    def normalise_keys(self, keys: list[str], target_names: set[str]) -> dict[str, str]:
        original = [k for k in keys if ".temporal_transformer." in k]
        diffusers = [k for k in keys if ".motion_modules." in k and ".temporal_transformer." not in k]
        if original and diffusers:
            raise ConversionError(f"motion adapter checkpoint mixes original-release names ({original[0]!r}) and "
                                  f"diffusers names ({diffusers[0]!r}); expected one naming throughout")
        return {k: k for k in keys}


class UNetMotionModelConverter(ArchitectureConverter):
    """A saved UNetMotionModel: the SD 1.5 UNet rows plus the dropped position tables of its motion modules."""

    class_name = "UNetMotionModel"

    rules = UNet2DConditionConverter.rules + POS_EMBED_ROWS


# ----------------------------------------------------------------------------------------------------------------
# Single original-release files
# ----------------------------------------------------------------------------------------------------------------

_MODULE_KEY = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.motion_modules\.(\d+)\.(?:temporal_transformer\.)?(.*)")
_MID_KEY = re.compile(r"mid_block\.motion_modules\.(\d+)\.(?:temporal_transformer\.)?(.*)")
_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.")

# what shapes cannot tell, with diffusers' defaults
UNINFERABLE = {"motion_num_attention_heads": 8, "motion_norm_num_groups": 32}


def _compact(values: list[int]):
    return values[0] if len(set(values)) == 1 else list(values)


def infer_motion_adapter_config(shapes: dict[str, tuple[int, ...]], where: str = "", **given) -> dict:
    """MotionAdapter config from a motion-module checkpoint's {key: shape} (original or diffusers names).

    From shapes: block_out_channels (proj_in input width of each down level's first module), motion_layers_per_block
    (modules per down level), motion_transformer_layers_per_block (transformer blocks per module),
    use_motion_mid_block / motion_mid_block_layers_per_block / motion_transformer_layers_per_mid_block (mid modules),
    motion_max_seq_length (`pos_encoder.pe` / `pos_embed.pe` length, else 32), conv_in_channels (PIA `conv_in`).
    From the caller (`given`, which also overrides anything inferred), else diffusers' defaults:
    motion_num_attention_heads (8), motion_norm_num_groups (32)."""
    levels: dict[str, dict[int, dict[int, set]]] = {"down_blocks": {}, "up_blocks": {}}
    mid: dict[int, set] = {}
    channels: dict[int, int] = {}
    seq_lengths = set()
    for key, shape in shapes.items():
        m, mm = _MODULE_KEY.fullmatch(key), _MID_KEY.fullmatch(key)
        rest = m.group(4) if m else (mm.group(2) if mm else None)
        if rest is None:
            continue
        b = _BLOCK_KEY.match(rest)
        blocks = {int(b.group(1))} if b else set()
        if m:
            level, i, j = m.group(1), int(m.group(2)), int(m.group(3))
            levels[level].setdefault(i, {}).setdefault(j, set()).update(blocks)
            if level == "down_blocks" and j == 0 and rest == "proj_in.weight":
                channels[i] = int(shape[1])
        else:
            mid.setdefault(int(mm.group(1)), set()).update(blocks)
        if rest.endswith((".pe",)) and len(shape) == 3:
            seq_lengths.add(int(shape[1]))
    down = levels["down_blocks"]
    if not down:
        raise ConversionError(f"{where}: no motion modules found (expected keys like "
                              "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight)")
    n = max(down) + 1
    missing = [i for i in range(n) if i not in down or i not in channels]
    if missing:
        raise ConversionError(f"{where}: down level(s) {missing} have no motion module with a proj_in.weight")
    layers = [max(down[i]) + 1 for i in range(n)]
    tlayers = [len(down[i][0]) for i in range(n)]
    up = levels["up_blocks"]
    for i in range(n):  # up level i mirrors down level n-1-i, with one more module
        got = max(up[i]) + 1 if i in up else 0
        if got != layers[n - 1 - i] + 1:
            raise ConversionError(f"{where}: up_blocks.{i} has {got} motion modules; down_blocks.{n - 1 - i} has "
                                  f"{layers[n - 1 - i]}, so {layers[n - 1 - i] + 1} were expected")
    if len(seq_lengths) > 1:
        raise ConversionError(f"{where}: position tables of different lengths {sorted(seq_lengths)}")
    config = {
        "block_out_channels": [channels[i] for i in range(n)],
        "motion_layers_per_block": _compact(layers),
        "motion_transformer_layers_per_block": _compact(tlayers),
        "motion_mid_block_layers_per_block": max(mid) + 1 if mid else 1,
        "motion_transformer_layers_per_mid_block": _compact([len(mid[j]) for j in sorted(mid)]) if mid else 1,
        "motion_max_seq_length": seq_lengths.pop() if seq_lengths else 32,
        "use_motion_mid_block": bool(mid),
        "conv_in_channels": int(shapes["conv_in.weight"][1]) if "conv_in.weight" in shapes else None,
        **UNINFERABLE,
    }
    unknown = sorted(set(given) - set(config))
    if unknown:
        raise ConversionError(f"{where}: unknown MotionAdapter config field(s) {unknown}; expected some of {sorted(config)}")
    config.update({k: v for k, v in given.items() if v is not None})
    return config


def open_motion_module_file(path, config: dict | None = None, **given) -> ComponentSource:
    """A single motion-module file (.ckpt / .pt / .bin pickles need torch; .safetensors not) as a MotionAdapter
    component source. `config`: a full MotionAdapter config; otherwise it is inferred from the shapes, with
    `given` fields (e.g. motion_num_attention_heads=8) taking precedence."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: motion module file not found")
    tensors = read_tensors([path])
    if config is None:
        config = infer_motion_adapter_config({k: tuple(r.shape) for k, r in tensors.items()}, str(path), **given)
    elif given:
        config = {**config, **given}
    return ComponentSource(path.parent, dict(config), "MotionAdapter", [path], tensors)
