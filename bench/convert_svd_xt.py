"""Conversion at full size: the SVD-xt UNet (about 1.5 B parameters, 3 GB in fp16) against a plain copy of the same
bytes, with the converter's peak anonymous memory.

    .venv/bin/python bench/convert_svd_xt.py [--runs 2] [--keep]      (make bench-convert)

1. The UNet of stabilityai/stable-video-diffusion-img2vid-xt (its unet/config.json: diffusers' defaults with
   sample_size 96) is built by diffusers on torch's meta device (no memory), and deterministic random fp16 tensors
   are written to build/bench/svd_xt_unet/diffusion_pytorch_model.safetensors one at a time (never the model).
2. Timed, alternating, `--runs` times each: `shutil.copyfile` of that file, and `mindport convert` of the folder
   in a child process. Before every timed run all files are synced and evicted from the page cache
   (posix_fadvise DONTNEED; /proc/sys/vm/drop_caches is not writable here), so both read the source cold and
   neither waits for the other's write-back. Neither fsyncs its output.
3. The child imports everything, reports its RssAnon (the baseline), then converts on the parent's signal while
   the parent samples /proc/PID/status every 5 ms; peak RssAnon above the baseline is the memory figure (file-backed
   pages of the memory-mapped source do not count; VmHWM, which includes them, is reported too).
Writes reports/bench_convert.md and removes the big files unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "convert"  # ours only: build/bench is shared with other benchmarks
REPORT = ROOT / "reports" / "bench_convert.md"
# stabilityai/stable-video-diffusion-img2vid-xt unet/config.json = diffusers' UNetSpatioTemporalConditionModel
# defaults plus sample_size 96 (checked against the defaults in `build_source`)
SVD_XT_UNET = {
    "sample_size": 96, "in_channels": 8, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    "block_out_channels": [320, 640, 1280, 1280], "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768, "layers_per_block": 2, "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1, "num_attention_heads": [5, 10, 20, 20], "num_frames": 25,
}


def status(pid: int | str = "self") -> dict[str, int]:
    """RssAnon / VmHWM / VmRSS of a process, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) * 1024 for k in ("RssAnon", "VmHWM", "VmRSS")}


def build_source(folder: Path) -> tuple[int, int]:
    """Write the UNet's config and random fp16 weights, one tensor at a time. Returns (parameters, bytes)."""
    import inspect

    import numpy as np
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    from converters.safetensors_io import write_safetensors

    defaults = {k: p.default for k, p in inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters.items()
                if k != "self"}
    differs = {k: (v, defaults[k]) for k, v in SVD_XT_UNET.items()
               if k != "sample_size" and (list(defaults[k]) if isinstance(defaults[k], tuple) else defaults[k]) != v}
    if differs:
        raise SystemExit(f"SVD-xt config differs from diffusers' defaults: {differs}")
    with torch.device("meta"):
        model = UNetSpatioTemporalConditionModel(**SVD_XT_UNET)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del model
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel", **SVD_XT_UNET}))
    rng = np.random.Generator(np.random.PCG64(0))

    def produce(shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float16)

    entries = [(k, s, "F16", lambda s=s: produce(s)) for k, s in shapes.items()]
    path = folder / "diffusion_pytorch_model.safetensors"
    write_safetensors(path, entries, {"format": "pt"})
    return sum(int(np.prod(s)) for s in shapes.values()), path.stat().st_size


def evict(*paths: Path) -> None:
    """Sync and drop these files' pages from the page cache (both timed operations start cold)."""
    os.sync()
    for p in paths:
        for f in ([p] if p.is_file() else p.rglob("*") if p.exists() else []):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def time_copy(src: Path, dst: Path) -> float:
    t = time.perf_counter()
    shutil.copyfile(src, dst)
    return time.perf_counter() - t


CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from bench.convert_svd_xt import status
from mindport.cli import main
import mindport.loading, converters.convert, tqdm  # everything `mindport convert` imports, before the baseline
print(json.dumps(status()), flush=True)
sys.stdin.readline()
t = time.perf_counter()
rc = main(["convert", {src!r}, {dst!r}])
print(json.dumps({{"rc": rc, "seconds": time.perf_counter() - t, **status()}}), flush=True)
"""


def time_convert(src: Path, dst: Path) -> dict:
    """`mindport convert` in a child process: seconds, and peak RssAnon above the child's post-import baseline."""
    env = {**os.environ, "GLOG_v": "3", "TQDM_DISABLE": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), src=str(src), dst=str(dst))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    base = json.loads(child.stdout.readline())
    peak = {"RssAnon": base["RssAnon"]}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak["RssAnon"] = max(peak["RssAnon"], status(child.pid)["RssAnon"])
            except (FileNotFoundError, ProcessLookupError, AttributeError):
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    child.stdin.write("go\n")
    child.stdin.flush()
    for line in child.stdout:  # the CLI prints its own summary line first
        if line.startswith("{"):
            break
        print("  " + line.rstrip(), flush=True)
    end = json.loads(line)
    wall = time.perf_counter() - t
    done.set()
    child.wait()
    if end["rc"] != 0:
        raise SystemExit(f"mindport convert failed with exit code {end['rc']}")
    return {"seconds": end["seconds"], "wall": wall, "baseline_anon": base["RssAnon"],
            "peak_anon_above_baseline": max(peak["RssAnon"], end["RssAnon"]) - base["RssAnon"], "vmhwm": end["VmHWM"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep build/bench/convert (3 GB source, copy, converted)")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness increment for this process and the convert child alike (negative needs root); "
                         "on a machine shared with other jobs, both timed operations then get the same CPU share")
    a = ap.parse_args(argv)
    if a.nice:
        os.nice(a.nice)
    load_before = os.getloadavg()
    sys.path.insert(0, str(ROOT))
    src_dir = WORK / "svd_xt_unet"
    src = src_dir / "diffusion_pytorch_model.safetensors"
    if not src.exists():
        t = time.perf_counter()
        params, size = build_source(src_dir)
        print(f"source: {params:,} parameters, {size / 1e9:.2f} GB written in {time.perf_counter() - t:.0f} s", flush=True)
    else:
        from converters.safetensors_io import read_header

        size = src.stat().st_size
        params = sum(int(__import__("numpy").prod(r.shape)) for r in read_header(src)[0].values())
    copies, converts = [], []
    copy_dst, conv_dst = WORK / "copy.safetensors", WORK / "converted"
    for run in range(a.runs):
        for kind in ("copy", "convert"):
            copy_dst.unlink(missing_ok=True)
            shutil.rmtree(conv_dst, ignore_errors=True)
            evict(src_dir, WORK)
            if kind == "copy":
                copies.append(time_copy(src, copy_dst))
                print(f"run {run}: copy {copies[-1]:.2f} s ({size / copies[-1] / 1e9:.2f} GB/s)", flush=True)
            else:
                converts.append(time_convert(src_dir, conv_dst))
                c = converts[-1]
                print(f"run {run}: convert {c['seconds']:.2f} s ({size / c['seconds'] / 1e9:.2f} GB/s), peak anon "
                      f"+{c['peak_anon_above_baseline'] / 2**20:.0f} MiB, VmHWM {c['vmhwm'] / 2**20:.0f} MiB", flush=True)
    evict(src_dir, WORK)  # the floor the manifest's sha256 puts under any conversion: hashing the same bytes alone
    t = time.perf_counter()
    from converters.sources import sha256

    sha256(src)
    hash_s = time.perf_counter() - t
    print(f"sha256 of the source alone (cold): {hash_s:.2f} s ({size / hash_s / 1e9:.2f} GB/s)", flush=True)
    out = conv_dst / "mindspore_model.safetensors"
    same = out.stat().st_size - size
    copy_s = statistics.median(copies)
    conv_s = statistics.median(c["seconds"] for c in converts)
    peak = max(c["peak_anon_above_baseline"] for c in converts)
    ratio = copy_s / conv_s
    write_report(params, size, copies, converts, ratio, peak, same, a.nice, load_before, os.getloadavg(), hash_s)
    if not a.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    ok = ratio >= 0.8 and peak < 1.5 * 2**30
    print(f"throughput ratio convert/copy {ratio:.2f} (>= 0.8: {ratio >= 0.8}); peak anon +{peak / 2**20:.0f} MiB "
          f"(< 1.5 GiB: {peak < 1.5 * 2**30}); report: {REPORT.relative_to(ROOT)}")
    return 0 if ok else 1


def write_report(params, size, copies, converts, ratio, peak, header_delta, nice, load_before, load_after,
                 hash_s) -> None:
    import mindspore
    import numpy as np

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = status()["VmRSS"]
    total = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    rows = []
    for i, (cp, cv) in enumerate(zip(copies, converts)):
        rows.append(f"| {i} | {cp:.2f} s, {size / cp / 1e9:.2f} GB/s | {cv['seconds']:.2f} s, {size / cv['seconds'] / 1e9:.2f} GB/s "
                    f"| {cp / cv['seconds']:.2f} | {cv['peak_anon_above_baseline'] / 2**20:.0f} MiB "
                    f"| {cv['baseline_anon'] / 2**20:.0f} MiB | {cv['vmhwm'] / 2**20:.0f} MiB |")
    REPORT.write_text(f"""# Conversion benchmark: SVD-xt UNet, full size (`make bench-convert`)

Source: `UNetSpatioTemporalConditionModel` with stabilityai/stable-video-diffusion-img2vid-xt's unet config
(block_out_channels 320/640/1280/1280, heads 5/10/20/20, layers_per_block 2, cross_attention_dim 1024,
num_frames 25), {params:,} parameters, random fp16 weights written by the benchmark: one safetensors file of
{size / 1e9:.2f} GB. Conversion: `mindport convert FOLDER DST` (defaults: keep the source dtype) in a child process,
which writes `mindspore_model.safetensors` (header {header_delta:+d} bytes against the source), `config.json` and
`manifest.json` with the source's sha256 (hashed in a background thread while the tensors are copied).

Method: copy and convert alternate; before each timed run every file is synced and dropped from the page cache
(`posix_fadvise(DONTNEED)`), so both read the source cold; neither fsyncs its output. Throughput = source bytes /
seconds. Both ran at niceness increment {nice} (`--nice`); load average {load_before[0]:.1f} before, {load_after[0]:.1f}
after (2 cores shared with other jobs). Besides the copy's disk work, the conversion hashes the 3 GB (sha256, about
1.2 GB/s on an idle core) and builds the MindSpore model for the audit (about 2.5 s); both are CPU work, which a
contended machine slows most. Memory: the child's `RssAnon` after its imports is the baseline; the parent samples it every 5 ms during
the conversion; file-backed pages of the memory-mapped source are not anonymous memory (VmHWM counts them).

| run | plain copy (`shutil.copyfile`) | `mindport convert` | ratio | peak RssAnon above baseline | baseline RssAnon | VmHWM |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

**Median throughput ratio convert / copy: {ratio:.2f}** (target >= 0.8: {"met" if ratio >= 0.8 else "NOT met"}).
**Peak anonymous memory above baseline: {peak / 2**20:.0f} MiB** (target < 1.5 GiB:
{"met" if peak < 1.5 * 2**30 else "NOT met"}).

The manifest's sha256 of the source is a floor under any conversion time (the copy does not hash): hashing the
same file alone (cold, one thread) took **{hash_s:.2f} s ({size / hash_s / 1e9:.2f} GB/s)** in this run, against a median copy of {statistics.median(copies):.2f} s.

How the conversion streams: tensors whose bytes do not change (same dtype, no transform) are copied file to file in
the kernel (`os.copy_file_range`, consecutive tensors in one call), the same path `shutil.copyfile` takes
(sendfile); only renamed/transformed/cast tensors pass through numpy, one at a time from a memory map. The source is
read from disk once, by a prefetch thread (sendfile to /dev/null); the sha256 thread and the copy read behind it from
the page cache; a large identity component starts copying while the MindSpore model is built for the audit (the
audit still decides before anything is published). Machine: {cpu}, {os.cpu_count()} cores,
{total / 2**30:.0f} GiB RAM (shared with other jobs), ext4 on a virtual disk; Python {platform.python_version()},
MindSpore {mindspore.__version__}, numpy {np.__version__}; bench process RSS at the end {mem / 2**20:.0f} MiB.
""")


if __name__ == "__main__":
    sys.exit(main())
