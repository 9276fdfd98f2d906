"""`make bench`: PyTorch CPU against mindport CPU, in one run, on the same weights and inputs.

Components at a mid-size config (the three UNets, both VAE decoders, the CLIP encoders), the three pipelines end
to end at their tiny parity configs (load included), and the three pipelines at the seed's pixels and frames on
narrow random-weight models (one step + decode; `--only seed`, `make bench-seed`: reports/bench_seed.md). Each
framework runs in its own worker process (MindSpore's runtime threads slow PyTorch 5-8x inside one process); every
case: warm-up, then `--repeats` rounds interleaving PyTorch fp32, mindport fp32 and mindport fp16 so machine noise
hits all of them; medians reported. PyTorch fp16 on CPU is ~140x slower than fp32, so the fp16 columns' reference
is PyTorch fp32.

With `--ms210 PYTHON` (a venv holding mindspore 2.10, made by `make bench`) one more worker times mindport fp32
there, interleaved with the others (components only).

Writes reports/bench.md and the README table between its bench markers (a run of every case), or
reports/bench_seed.md (`--only seed`), and prints the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUILD = ROOT / "build" / "bench"
THREADS = 2
FRAMES, BATCH, LATENT = 4, 2, 32


@dataclass
class Case:
    name: str
    config: str
    ms_class: str
    make_torch: Callable[[], object]          # a randomised diffusers/transformers module (eval mode)
    inputs: Callable[[np.random.Generator], dict]
    run_torch: Callable[[object, dict], object]
    run_ms: Callable[[object, dict], object]


def _randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _t(x):
    import torch

    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


# ---------------------------------------------------------------------------------------------------------------
# mid-size components: block_out_channels (128, 256), 4 frames, 32x32 latents, batch 2
# ---------------------------------------------------------------------------------------------------------------


def _svd_unet():
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(
        sample_size=LATENT, in_channels=8, out_channels=4, block_out_channels=(128, 256), layers_per_block=2,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=(2, 4),
        cross_attention_dim=256, addition_time_embed_dim=32, projection_class_embeddings_input_dim=96,
        num_frames=FRAMES)


def _i2vgen_unet():
    from diffusers import I2VGenXLUNet

    return I2VGenXLUNet(sample_size=LATENT, in_channels=4, out_channels=4, block_out_channels=(128, 256),
                        layers_per_block=2, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), attention_head_dim=64,
                        cross_attention_dim=256, norm_num_groups=32)


def _motion_unet():
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet = UNet2DConditionModel(sample_size=LATENT, in_channels=4, out_channels=4, block_out_channels=(128, 256),
                                layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                                cross_attention_dim=256, norm_num_groups=32)
    adapter = MotionAdapter(block_out_channels=(128, 256), motion_layers_per_block=2, motion_num_attention_heads=8,
                            motion_norm_num_groups=32, motion_max_seq_length=32)
    return UNetMotionModel.from_unet2d(unet, adapter)


def _temporal_vae():
    from diffusers import AutoencoderKLTemporalDecoder

    return AutoencoderKLTemporalDecoder(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256),
                                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 2)


def _vae_kl():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256),
                         layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32)


CLIP_MID = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8)


def _clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=224, patch_size=14, projection_dim=256,
                                                          hidden_act="gelu", **CLIP_MID))


def _clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=1000, max_position_embeddings=77, hidden_act="quick_gelu",
                                        **CLIP_MID))


# Wan 2.1 (issue 16). Transformer: Wan's own head size (128) and depth-per-width ratios at 6 heads (768 wide, the
# 1.3B model is 12 heads / 1536 wide / 30 blocks), 4 blocks, UMT5-XXL-width text (4096) at the pipelines' 512 tokens;
# latents 16 x 5 x 40 x 64 (a 17-frame 320x512 video) are 5 x 20 x 32 = 3,200 patches (the 1.3B model at 480x832,
# 81 frames, sees 32,760). VAE: Wan 2.1's layout (dim_mult (1, 2, 4, 4), 2 res blocks, z_dim 16, two temporal
# upsamplers) at base_dim 64 (Wan's is 96), decoding 4 latent frames of 16x16 into 13 frames of 128x128: one latent
# frame per decoder call, so the causal feature cache carries frames across 4 chunks and both time upsamplers run.
WAN_TRANSFORMER = dict(num_attention_heads=6, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                       freq_dim=256, ffn_dim=3072, num_layers=4, patch_size=(1, 2, 2), cross_attn_norm=True,
                       eps=1e-6, rope_max_seq_len=1024)
WAN_LATENT, WAN_TEXT = (5, 40, 64), 512
WAN_VAE = dict(base_dim=64, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])  # lists: diffusers concatenates them
WAN_VAE_LATENT = (4, 16, 16)


def _wan_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**WAN_TRANSFORMER)


def _wan_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**WAN_VAE)


def _ms(x):
    """A NumPy input as a MindSpore tensor (the Wan transformer takes tensors, as its pipeline passes them)."""
    from mindspore import Tensor

    return Tensor(x)


def _latents5d(rng, channels=4):
    return _randn(rng, BATCH, channels, FRAMES, LATENT, LATENT)


CASES = [
    Case("SVD UNet", "UNetSpatioTemporalConditionModel (128, 256), 2 layers, 4 frames, 32x32, batch 2",
         "UNetSpatioTemporalConditionModel", _svd_unet,
         lambda rng: dict(sample=_randn(rng, BATCH, FRAMES, 8, LATENT, LATENT), t=12.5,
                          ehs=_randn(rng, BATCH, 1, 256), ids=np.array([[6, 127, 0.02]] * BATCH, np.float32)),
         lambda m, x: m(_t(x["sample"]), _t(x["t"]), _t(x["ehs"]), _t(x["ids"])).sample,
         lambda m, x: m(x["sample"], x["t"], x["ehs"], x["ids"]).sample),
    Case("I2VGen-XL UNet", "I2VGenXLUNet (128, 256), 2 layers, 4 frames, 32x32, batch 2, 16 text tokens",
         "I2VGenXLUNet", _i2vgen_unet,
         lambda rng: dict(sample=_latents5d(rng), t=500, fps=np.array([16] * BATCH, np.int64),
                          img=_latents5d(rng), emb=_randn(rng, BATCH, 1, 256), ehs=_randn(rng, BATCH, 16, 256)),
         lambda m, x: m(_t(x["sample"]), _t(x["t"]), _t(x["fps"]), _t(x["img"]), image_embeddings=_t(x["emb"]),
                        encoder_hidden_states=_t(x["ehs"])).sample,
         lambda m, x: m(x["sample"], x["t"], x["fps"], x["img"], image_embeddings=x["emb"],
                        encoder_hidden_states=x["ehs"]).sample),
    Case("AnimateDiff UNet", "UNetMotionModel (128, 256), 2 layers, 4 frames, 32x32, batch 2, 16 text tokens",
         "UNetMotionModel", _motion_unet,
         lambda rng: dict(sample=_latents5d(rng), t=500, ehs=_randn(rng, BATCH * FRAMES, 16, 256)),
         lambda m, x: m(_t(x["sample"]), _t(x["t"]), _t(x["ehs"])).sample,
         lambda m, x: m(x["sample"], x["t"], x["ehs"]).sample),
    Case("SVD VAE decode", "AutoencoderKLTemporalDecoder (128, 256), 2 layers, 8 latents 32x32 (2 videos x 4)",
         "AutoencoderKLTemporalDecoder", _temporal_vae,
         lambda rng: dict(z=_randn(rng, BATCH * FRAMES, 4, LATENT, LATENT)),
         lambda m, x: m.decode(_t(x["z"]), num_frames=FRAMES).sample,
         lambda m, x: m.decode(x["z"], num_frames=FRAMES).sample),
    Case("VAE decode (KL)", "AutoencoderKL (128, 256), 2 layers, 8 latents 32x32",
         "AutoencoderKL", _vae_kl,
         lambda rng: dict(z=_randn(rng, BATCH * FRAMES, 4, LATENT, LATENT)),
         lambda m, x: m.decode(_t(x["z"])).sample,
         lambda m, x: m.decode(x["z"]).sample),
    Case("Wan transformer", "WanTransformer3DModel 6 heads x 128 (768 wide), ffn 3072, 4 blocks, text_dim 4096; "
         f"latents 16 x {'x'.join(map(str, WAN_LATENT))} (patch 1x2x2: 3,200 tokens), {WAN_TEXT} text tokens, "
         "batch 1", "WanTransformer3DModel", _wan_transformer,
         lambda rng: dict(x=_randn(rng, 1, 16, *WAN_LATENT), t=np.array([500.0], np.float32),
                          ctx=_randn(rng, 1, WAN_TEXT, 4096)),
         lambda m, x: m(_t(x["x"]), _t(x["t"]), _t(x["ctx"])).sample,
         lambda m, x: m(_ms(x["x"]), _ms(x["t"]), _ms(x["ctx"])).sample),
    Case("Wan VAE decode", "AutoencoderKLWan base_dim 64, dim_mult (1, 2, 4, 4), 2 res blocks, z_dim 16; "
         f"{WAN_VAE_LATENT[0]} latent frames of {WAN_VAE_LATENT[1]}x{WAN_VAE_LATENT[2]} -> 13 frames of 128x128",
         "AutoencoderKLWan", _wan_vae,
         lambda rng: dict(z=_randn(rng, 1, 16, *WAN_VAE_LATENT)),
         lambda m, x: m.decode(_t(x["z"])).sample,
         lambda m, x: m.decode(_ms(x["z"])).sample),
    Case("CLIP vision", "CLIPVisionModelWithProjection 512 wide, 6 layers, 224px / patch 14, batch 2",
         "CLIPVisionModelWithProjection", _clip_vision,
         lambda rng: dict(px=_randn(rng, BATCH, 3, 224, 224)),
         lambda m, x: m(_t(x["px"])).image_embeds,
         lambda m, x: m(x["px"]).image_embeds),
    Case("CLIP text", "CLIPTextModel 512 wide, 6 layers, 77 tokens, batch 2",
         "CLIPTextModel", _clip_text,
         lambda rng: dict(ids=rng.integers(0, 1000, (BATCH, 77)).astype(np.int64)),
         lambda m, x: m(_t(x["ids"])).last_hidden_state,
         lambda m, x: m(x["ids"])[0]),
]
CASE_KEYS = {c.name: c.name.lower().replace(" ", "-").replace("(", "").replace(")", "") for c in CASES}


def saved_model(case: Case) -> Path:
    """Build the randomised PyTorch model once and save it in diffusers layout (build/bench/<case>)."""
    folder = BUILD / CASE_KEYS[case.name]
    if not (folder / "config.json").exists():
        import torch

        from parity.fixtures import randomise

        torch.manual_seed(0)
        randomise(case.make_torch(), 0).save_pretrained(folder, safe_serialization=True)
    return folder


def load_torch(case: Case, folder: Path):
    import diffusers
    import transformers

    cls = getattr(diffusers, case.ms_class, None) or getattr(transformers, case.ms_class)
    return cls.from_pretrained(folder).eval()


def load_ms(case: Case, folder: Path, dtype: str):
    from mindport.models import model_class

    return model_class(case.ms_class).from_pretrained(folder, mindspore_dtype=dtype)


def _vm_hwm() -> int:
    """This process's peak resident memory (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Start VmHWM afresh at the current resident size (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    if hasattr(out, "asnumpy"):
        out = out.asnumpy()  # MindSpore may still be computing: wait for the value
    return time.perf_counter() - t0, out


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------------------------------------------------------
# workers: one process per framework. MindSpore's CPU runtime threads slow PyTorch down 5-8x when both run in one
# process (measured here), so each side gets its own interpreter; the parent interleaves their runs.
# ---------------------------------------------------------------------------------------------------------------

PIPELINES = ["svd-tiny", "i2vgen-xl-tiny", "animatediff-tiny"]
PIPELINE_STEPS = 3


def _pipeline_runner(root: str, side: str):
    """A function that loads the tiny pipeline at `root` (mindport converts on load) and runs it end to end. The
    mindport side imports neither torch nor diffusers (building the fixture does: the parent builds it), so its
    process holds MindSpore alone, as a user's does."""
    from parity.adapter import adapter_for, quiet_reference_libraries

    root = Path(root)
    adapter = adapter_for(json.loads((root / "model_index.json").read_text())["_class_name"])
    kwargs = adapter.call_kwargs({**adapter.settings(root), "seed": 0, "steps": PIPELINE_STEPS})
    if side == "torch":
        quiet_reference_libraries()
        return lambda: adapter.run_reference(adapter.load_reference(root), dict(kwargs))
    return lambda: adapter.run_ours(adapter.load_ours(root, side), dict(kwargs))


# ---------------------------------------------------------------------------------------------------------------
# seed sizes (issue 20): the seed's pixels, frames and decode chunks on narrow random-weight pipelines, one step
# ---------------------------------------------------------------------------------------------------------------

# Narrow models at the seed's sizes: the real VAE depth (four levels, so the latents are the seed's, 1/8 of the
# pixels) and one UNet level at full latent size with self-attention, so every attention runs over the seed's
# token counts (SVD 72 x 128 = 9,216 per frame, AnimateDiff 64 x 64 = 4,096, I2VGen-XL 44 x 80 = 3,520); channels
# 32-64 (the released models: 320-1280) so that a row takes minutes. Frames, pixels and decode chunks are the
# seed's (README's calls: SVD 576 x 1024, 5 frames, decode_chunk_size 8; AnimateDiff 512 x 512, 16 frames, chunk 16
# (its default); I2VGen-XL half of a 1280 x 704 image, 25 frames, chunk 1 (its default)); guidance as the seed's,
# so the UNet runs on a batch of 2 videos. One denoising step: the per-step cost is the UNet's, seconds here.
SEED_VAE = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1)
SEED_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
SEED_STEPS = 1
SEED = {
    "seed-svd": ("StableVideoDiffusionPipeline", {
        "unet": dict(block_out_channels=(32, 64), num_attention_heads=(2, 4), layers_per_block=1,
                     cross_attention_dim=32, num_frames=5,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                     up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")),
        "vae": SEED_VAE,
        "clip": dict(SEED_TEXT, patch_size=32),
        "run": dict(height=576, width=1024, frames=5, decode_chunk_size=8),
    }),
    "seed-animatediff": ("AnimateDiffPipeline", {
        "unet": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4),
                     cross_attention_dim=32, norm_num_groups=32,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        "adapter": dict(motion_layers_per_block=1, motion_num_attention_heads=2, motion_norm_num_groups=32,
                        motion_max_seq_length=32),
        "vae": SEED_VAE,
        "text": SEED_TEXT,
        "run": dict(height=512, width=512, frames=16, guidance_scale=7.5, decode_chunk_size=16),
    }),
    "seed-i2vgen-xl": ("I2VGenXLPipeline", {
        "unet": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
                     down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                     up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")),
        "vae": SEED_VAE,
        "text": dict(SEED_TEXT, hidden_act="quick_gelu"),
        "vision": dict(SEED_TEXT, patch_size=14, image_size=28),
        "scheduler": dict(set_alpha_to_one=True),
        "run": dict(height=352, width=640, frames=25, guidance_scale=9.0, decode_chunk_size=1),
    }),
}


def seed_config(key: str) -> str:
    pipeline, spec = SEED[key]
    run, unet = spec["run"], spec["unet"]
    return (f"{pipeline} {run['width']}x{run['height']}, {run['frames']} frames, decode_chunk_size "
            f"{run['decode_chunk_size']}; UNet {tuple(unet['block_out_channels'])}, VAE "
            f"{tuple(spec['vae']['block_out_channels'])}; {SEED_STEPS} step")


def seed_fixture(key: str) -> Path:
    """The narrow pipeline folder for a seed-size row (built once with diffusers, cached as the parity fixtures)."""
    from parity.adapter import adapter_for
    from parity.fixtures import cached_build

    pipeline, spec = SEED[key]
    return cached_build(key, spec, 0, adapter_for(pipeline).make_fixture, BUILD / "seed", variants=())


def _seed_runner(root: str, side: str):
    """Loads the pipeline once (not timed) and returns a function running it: one step and the decode at the seed's
    sizes. Both sides draw their noise from one numpy stream (the parity harness's), fresh for each run, so the
    frames are comparable; the mindport side patches only its own modules (no torch, no diffusers in its process)."""
    from importlib import import_module

    from parity.adapter import adapter_for, patch_randn, quiet_reference_libraries
    from parity.noise import SharedNoise

    root = Path(root)
    adapter = adapter_for(json.loads((root / "model_index.json").read_text())["_class_name"])
    kwargs = adapter.call_kwargs({**adapter.settings(root), "seed": 0, "steps": SEED_STEPS})
    noise, framework = SharedNoise(0), "torch" if side == "torch" else "mindspore"
    if side == "torch":
        quiet_reference_libraries()
        pipe = adapter.load_reference(root)
        patch_randn(noise, [import_module(m) for m in adapter.reference_noise_modules], [])
    else:
        pipe = adapter.load_ours(root, side)
        adapter.patch_noise(noise, reference=False)

    def run():
        noise.start(framework, side)
        if side == "torch":
            return adapter.run_reference(pipe, dict(kwargs))
        return adapter.run_ours(pipe, dict(kwargs))

    return run


def _component_runner(key: str, side: str):
    case = next(c for c in CASES if CASE_KEYS[c.name] == key)
    folder = saved_model(case)
    x = case.inputs(np.random.Generator(np.random.PCG64(0)))
    if side == "torch":
        import torch

        ref = load_torch(case, folder)

        def run():
            with torch.no_grad():
                return case.run_torch(ref, x).numpy()

        return run
    model = load_ms(case, folder, side)
    return lambda: case.run_ms(model, x)


def serve(side: str, name: str) -> None:
    """Worker loop: read `key` lines, answer one JSON line {seconds, peak_rss} (the first call per key warms up and
    saves the output to build/bench/out/<name>-<key>.npy). A new key drops the previous case's model first, so
    peak_rss (VmHWM over the timed run, reset before it: the process's runtime, this case's weights and its
    activations) holds one case's model."""
    if side == "torch":
        import torch

        torch.set_num_threads(THREADS)
    else:
        import mindport  # noqa: F401  (context set-up)
    runners = {}
    (BUILD / "out").mkdir(parents=True, exist_ok=True)
    print(json.dumps({"ready": side, "versions": machine()}), flush=True)
    for line in sys.stdin:
        key, _, root = line.strip().partition(" ")  # pipelines: "key fixture-folder"
        try:
            if key not in runners:
                runners.clear()
                gc.collect()
                if key in PIPELINES:
                    runners[key] = _pipeline_runner(root, side)
                elif key in SEED:
                    runners[key] = _seed_runner(root, side)
                else:
                    runners[key] = _component_runner(key, side)
                _, out = timed(runners[key])
                np.save(BUILD / "out" / f"{name}-{key}.npy", np.asarray(out, np.float32))
                if side != "torch" and "torch" in sys.modules:  # its threads and objects would slow MindSpore
                    raise RuntimeError("the mindport worker imported torch")
            _reset_peak()
            seconds, _ = timed(runners[key])
            print(json.dumps({"seconds": seconds, "peak_rss": _vm_hwm()}), flush=True)
        except Exception as e:  # reported in the table, the run goes on
            print(json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}), flush=True)


class Worker:
    def __init__(self, python: str, side: str, name: str):
        self.side, self.name = side, name
        self.proc = subprocess.Popen([python, __file__, "--serve", side, "--name", name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        hello = self._read()
        self.versions = hello.get("versions", {})

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return {"error": f"{self.name} worker exited ({self.proc.wait()})"}
            if line.startswith("{"):
                return json.loads(line)

    def time(self, key: str, root: str = "") -> dict:
        if self.proc.poll() is not None:
            return {"error": f"{self.name} worker exited ({self.proc.returncode})"}
        self.proc.stdin.write(f"{key} {root}".strip() + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def measure(workers: list[Worker], key: str, repeats: int, root: str = "") -> dict:
    """For each mindport worker, `repeats` rounds alternating it with the PyTorch worker (each worker warms up on its
    first call): its median seconds, the median of the PyTorch runs paired with it (its ratio's denominator),
    errors, and each MindSpore output's relative L2 against PyTorch's. Pairs, not one rotation over all workers:
    in a rotation of four processes PyTorch's SVD UNet measured 1.8-1.9 s against 1.4-1.6 s alone or paired, so
    every ratio is taken against PyTorch runs adjacent to its own."""
    torch_worker = next(w for w in workers if w.side == "torch")
    times = {w.name: [] for w in workers}
    paired = {w.name: [] for w in workers if w is not torch_worker}
    errors, peak_rss = {}, {}
    for w in [w for w in workers if w is not torch_worker]:
        for _ in range(repeats):
            for x in (torch_worker, w):
                if x.name in errors:
                    continue
                r = x.time(key, root)
                if "error" in r:
                    errors[x.name] = r["error"]
                else:
                    times[x.name].append(r["seconds"])
                    peak_rss[x.name] = max(peak_rss.get(x.name, 0), r.get("peak_rss", 0))
                    if x is torch_worker:
                        paired[w.name].append(r["seconds"])
    res = {"seconds": {n: statistics.median(v) for n, v in times.items() if v and n not in errors}, "errors": errors,
           "torch_paired": {n: statistics.median(v) for n, v in paired.items() if v}, "rel_l2": {},
           "peak_rss": peak_rss}
    ref_path = BUILD / "out" / f"torch-{key}.npy"
    for w in workers:
        path = BUILD / "out" / f"{w.name}-{key}.npy"
        if w.side != "torch" and ref_path.exists() and path.exists() and w.name not in errors:
            res["rel_l2"][w.name] = rel_l2(np.load(path), np.load(ref_path))
    return res


def machine() -> dict:

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    def ver(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": THREADS, "load": os.getloadavg(),
            "python": platform.python_version(), "mindspore": ver("mindspore"), "torch": ver("torch")}


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------


def _ratio(r: dict, name: str) -> str:
    sec, ref = r["seconds"], r["torch_paired"].get(name)
    return f"{sec[name] / ref:.2f}x" if name in sec and ref else "-"


def _table(title: str, keys: list[str], labels: dict, results: dict, names: list[str], with_l2: bool) -> list[str]:
    head = f"| {title} | PyTorch fp32 s |" + "".join(f" {labels[n]} s | ratio |" for n in names)
    sep = "|---|---:|" + "---:|---:|" * len(names)
    if with_l2:
        head += " rel L2 fp32 | rel L2 fp16 |"
        sep += "---:|---:|"
    head += f" peak RSS MiB ({' / '.join(['PyTorch', *(labels[n].replace('mindport ', '') for n in names)])}) |"
    sep += "---:|"
    lines = [head, sep]
    for key in keys:
        r = results[key]
        sec = r["seconds"]
        ref = r["torch_paired"].get("fp32", sec.get("torch"))
        row = f"| {labels[key]} | {ref:.3f} |" if ref else f"| {labels[key]} | error |"
        for n in names:
            row += f" {sec[n]:.3f} | {_ratio(r, n)} |" if n in sec else " error | - |"
        if with_l2:
            row += "".join(f" {r['rel_l2'][n]:.1e} |" if n in r["rel_l2"] else " - |" for n in ("fp32", "fp16"))
        rss = r.get("peak_rss", {})
        row += " " + " / ".join(f"{rss[n] / 2**20:.0f}" if rss.get(n) else "-" for n in ("torch", *names)) + " |"
        lines.append(row)
    for key in keys:
        for n, err in results[key]["errors"].items():
            lines.append(f"\n{labels[key]}, {labels.get(n, n)}: {err}")
    return lines


def render(info: dict, results: dict, names: list[str], labels: dict, repeats: int, wall: float,
           side_version: str | None) -> str:
    comps = [CASE_KEYS[c.name] for c in CASES if CASE_KEYS[c.name] in results]
    pipes = [p for p in PIPELINES if p in results]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} threads per framework; load average at "
        f"start {info['load'][0]:.2f} / {info['load'][1]:.2f} / {info['load'][2]:.2f}; Python {info['python']}, "
        f"MindSpore {info['mindspore']}{f' (and {side_version} in .venv-ms210)' if side_version else ''}, "
        f"PyTorch {info['torch']}.",
        "",
        f"Median of {repeats} runs after a warm-up, each framework in its own process; each mindport column's runs "
        "alternate with PyTorch runs, and its ratio = its median / the median of those PyTorch runs (lower is "
        f"better; the PyTorch column shows the fp32 pairing's). The whole run took {wall:.0f} s. Peak RSS: each "
        "worker's VmHWM over a timed run (reset before it; the largest of the runs), the whole process: runtime, "
        "this case's weights (the worker drops the previous case's model) and activations. PyTorch fp16 on "
        "CPU is ~140x slower than fp32, so the fp16 columns' reference is PyTorch fp32. rel L2: mindport output "
        "against PyTorch fp32 on the same "
        "weights and inputs.",
        "",
    ]
    if comps:
        lines += _table("component (mid size)", comps, labels, results, names, True)
    pipe_names = [n for n in names if "@" not in n]
    if pipes:
        lines += [""] + _table(f"pipeline, tiny, {PIPELINE_STEPS} steps, load included", pipes, labels, results,
                               pipe_names, False)
    seeds = [k for k in SEED if k in results]
    if seeds:
        lines += [""] + _table(f"pipeline at the seed's size, narrow, {SEED_STEPS} step + decode", seeds, labels,
                               results, pipe_names, True)
    lines += ["", "Configs:"] + [f"- {c.name}: {c.config}" for c in CASES if CASE_KEYS[c.name] in comps]
    lines += [f"- {k}: {seed_config(k)}" for k in seeds]
    return "\n".join(lines) + "\n"


def write_reports(table: str) -> None:
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "bench.md").write_text("# mindport benchmark (`make bench`)\n\n" + table)
    readme = ROOT / "README.md"
    start, end = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
    text = readme.read_text()
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        readme.write_text(f"{before}{start}\n{table}{end}{after}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated cases: " + ", ".join(
        [*CASE_KEYS.values(), *PIPELINES, *SEED]) + "; 'seed' = the seed-size rows (writes reports/bench_seed.md)")
    p.add_argument("--ms210", default="", help="python of a venv with mindspore 2.10: adds its fp32 column")
    p.add_argument("--no-fp16", action="store_true", help="skip the mindport fp16 column")
    p.add_argument("--no-write", action="store_true", help="print only; leave reports/ and README alone")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.name or args.serve)
        return 0
    only = [k for s in args.only.split(",") if s for k in (SEED if s == "seed" else [s])]
    known = [*CASE_KEYS.values(), *PIPELINES, *SEED]
    bad = [s for s in only if s not in known]
    if bad:
        print(f"bench: unknown case {bad[0]!r}; expected 'seed' or one of {', '.join(known)}", file=sys.stderr)
        return 2
    if args.ms210 and not Path(args.ms210).exists():
        print(f"bench: --ms210 {args.ms210!r} does not exist; expected the python of a mindspore 2.10 venv",
              file=sys.stderr)
        return 2
    info = machine()
    t_start = time.perf_counter()
    workers = [Worker(sys.executable, "torch", "torch"), Worker(sys.executable, "fp32", "fp32")]
    labels = {"torch": "PyTorch fp32", "fp32": "mindport fp32", "fp16": "mindport fp16"}
    if not args.no_fp16:
        workers.append(Worker(sys.executable, "fp16", "fp16"))
    side_version = None
    if args.ms210:
        side = Worker(args.ms210, "fp32", "fp32@ms210")
        side_version = side.versions.get("mindspore", "?")
        labels["fp32@ms210"] = f"MS {side_version} fp32"
        workers.append(side)
    labels.update({CASE_KEYS[c.name]: c.name for c in CASES})
    labels.update({p: p for p in [*PIPELINES, *SEED]})
    from tqdm import tqdm

    results = {}
    todo = [k for k in known if not only or k in only]
    from parity.fixtures import build

    # built here: the mindport workers never import diffusers
    roots = {key: str(build(key) if key in PIPELINES else seed_fixture(key))
             for key in todo if key not in CASE_KEYS.values()}
    try:
        for key in tqdm(todo, desc="bench", unit="case"):
            ws = [w for w in workers if key in CASE_KEYS.values() or "@" not in w.name]
            results[key] = measure(ws, key, args.repeats, roots.get(key, ""))
    finally:
        for w in workers:
            w.close()
    table = render(info, results, [w.name for w in workers if w.side != "torch"], labels, args.repeats,
                   time.perf_counter() - t_start, side_version)
    print(table)
    if not args.no_write and not only:
        write_reports(table)
    elif not args.no_write and set(only) == set(SEED):
        (ROOT / "reports").mkdir(exist_ok=True)
        (ROOT / "reports" / "bench_seed.md").write_text(
            "# mindport at the seed's sizes (`make bench-seed`)\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
