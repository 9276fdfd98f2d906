# `make demo` and `make test` each create/update .venv with the pinned dependencies first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: demo test test-slow reports parity-full clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on a CPU machine this is the CPU wheel; a later unpinned `torch` would pull CUDA.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mindport demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

reports: $(STAMP)
	$(BIN)/python -m parity.make_reports

# Released architectures (random weights, reduced size; not CI: about two hours on 2 cores): build, compare each
# component at full size (fp32, fp16), then the pipelines through the harness, then the README summary. The
# pipelines run without the float64 floor pass (a whole pipeline in float64 needs 16-20 GB at these sizes): the
# component comparisons carry the floors, one model at a time.
FULL := svd-xt i2vgen-xl animatediff-v1-5-2
parity-full: $(STAMP)
	status=0; \
	$(BIN)/python -m parity.full components $(FULL) || status=1; \
	for n in $(FULL); do for d in fp32 fp16; do \
		$(BIN)/mindport parity --config-only $$n --dtype $$d --no-floor --out reports/full/$$n/$$d || status=1; \
	done; done; \
	$(BIN)/python -m parity.full summary; exit $$status

# Wan 2.1 at released size (random weights; not CI), one target per piece so that none runs longer than an hour on
# 2 cores (times measured on this 2-core machine under load average 8-14 from other work; quiet, about half).
# Whole components as above; UMT5-XXL (5.7 B) and the I2V 14B transformer (16.4 B) do not fit in memory and are
# compared streamed, block by block, from a bf16 checkpoint written for the run (11 / 33 GB on disk) and deleted
# after it (peak anonymous memory 2.7 / 4.7 GB; parity/full/streamed.py). Each writes its rows into
# reports/full/NAME/components/{fp32,fp16}/components.json. `python -m parity.full summary --print` shows the table.
.PHONY: parity-full-wan parity-full-wan-t2v parity-full-wan-umt5 parity-full-wan-i2v-clip \
	parity-full-wan-i2v-transformer parity-full-wan-i2v-transformer-fp16
parity-full-wan: parity-full-wan-t2v parity-full-wan-umt5 parity-full-wan-i2v-clip parity-full-wan-i2v-transformer \
	parity-full-wan-i2v-transformer-fp16
parity-full-wan-t2v: $(STAMP)  # 1.3B transformer (peak 11 GB: its float64 floor copy), VAE encode / decode: ~15 min
	$(BIN)/python -m parity.full components wan2.1-t2v-1.3b --only transformer --only vae.encode --only vae.decode
parity-full-wan-umt5: $(STAMP)  # UMT5-XXL streamed, fp32 and fp16 against one reference pass: ~45 min
	$(BIN)/python -m parity.full components wan2.1-t2v-1.3b --only text_encoder
parity-full-wan-i2v-clip: $(STAMP)  # CLIP ViT-H/14 image encoder (whole): ~8 min
	$(BIN)/python -m parity.full components wan2.1-i2v-14b-480p --only image_encoder
parity-full-wan-i2v-transformer: $(STAMP)  # 14B transformer streamed, fp32 with floors: ~55 min (12 of them writing)
	$(BIN)/python -m parity.full components wan2.1-i2v-14b-480p --only transformer --dtype fp32 --keep
parity-full-wan-i2v-transformer-fp16: $(STAMP)  # the same checkpoint, fp16, no float64 pass: ~25 min; deletes it
	$(BIN)/python -m parity.full components wan2.1-i2v-14b-480p --only transformer --dtype fp16 --no-floor

clean:
	rm -rf build out .pytest_cache

.PHONY: bench-convert
bench-convert: $(STAMP)  # full-size SVD-xt UNet: convert vs plain copy, peak memory -> reports/bench_convert.md
	$(BIN)/python bench/convert_svd_xt.py

# `make bench`: PyTorch CPU against mindport CPU (bench/speed.py), plus a mindport fp32 column under MindSpore 2.10,
# installed on the side into .venv-ms210 (same numpy<2 pin; no torch there: its PyTorch times come from .venv).
MS210   := .venv-ms210
.PHONY: bench

$(MS210)/.installed: pyproject.toml requirements.lock
	test -x $(MS210)/bin/python || $(PY) -m venv $(MS210)
	$(MS210)/bin/pip install -q mindspore==2.10.0 $$(grep -E '^(numpy|safetensors|huggingface_hub|pillow|imageio|tqdm|transformers|scipy-openblas32)==' requirements.lock)
	$(MS210)/bin/pip install -q --no-deps -e .
	touch $@

bench: $(STAMP) $(MS210)/.installed
	$(BIN)/python bench/speed.py --ms210 $(MS210)/bin/python

.PHONY: bench-graph
bench-graph: $(STAMP)  # graph mode (ms.jit) against the PyNative kernel path on two blocks of the ports (CPU)
	$(BIN)/python bench/graph_mode.py

# The three pipelines at the seed's pixels and frames (SVD 576x1024 x 5, AnimateDiff 512x512 x 16, I2VGen-XL
# 640x352 x 25) on narrow random-weight models, one step + decode: PyTorch fp32 against mindport fp32 / fp16, peak
# RSS per worker -> reports/bench_seed.md. ~25-30 min on 2 cores (one run: 20-80 s a side).
.PHONY: bench-seed
bench-seed: $(STAMP)
	$(BIN)/python bench/speed.py --only seed --repeats 2
