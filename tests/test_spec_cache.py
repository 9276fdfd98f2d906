"""The spec cache: a conversion reads an architecture's parameter list ({name: (shape, dtype)}, what the audit checks
against) from $MINDPORT_CACHE/specs when the same class and config were built before under the same port sources,
instead of importing MindSpore to build the model. What it writes is the same either way; a damaged entry is
rebuilt. (A stale entry cannot yield a wrong model: loading a converted folder builds the model and checks every
parameter's name and shape again.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity.fixtures import build

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys
from mindport.loading import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], progress=False)
print(json.dumps({"mindspore_imported": "mindspore" in sys.modules}))
"""


def _convert(src, dst, cache) -> bool:
    """Convert in a fresh interpreter with its own cache; returns whether it imported MindSpore."""
    env = {**os.environ, "MINDPORT_CACHE": str(cache), "GLOG_v": "3"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst)], env=env, capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["mindspore_imported"]


def _written(folder: Path) -> dict:
    files = {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("created")
    return {"files": files, "manifest": manifest}


@pytest.fixture(scope="module")
def src():
    return build("svd-tiny")


def test_a_cached_spec_skips_mindspore_and_writes_the_same(src, tmp_path):
    cache = tmp_path / "cache"
    assert _convert(src, tmp_path / "first", cache)  # nothing cached: builds the models
    specs = sorted((cache / "specs").glob("*.json"))
    assert len(specs) == 3  # unet, vae, image_encoder
    assert not _convert(src, tmp_path / "second", cache)
    first, second = _written(tmp_path / "first"), _written(tmp_path / "second")
    assert first["manifest"]["resolved_source"] == second["manifest"]["resolved_source"]
    assert first == second


def test_a_damaged_entry_is_rebuilt(src, tmp_path):
    cache = tmp_path / "cache"
    _convert(src, tmp_path / "first", cache)
    specs = sorted((cache / "specs").glob("*.json"))
    specs[0].write_text('{"truncated": [[3, ')
    specs[1].write_bytes(b"")
    assert _convert(src, tmp_path / "second", cache)  # had to build again
    for f in specs:
        assert all(isinstance(shape, list) and isinstance(dtype, str) for shape, dtype in json.loads(f.read_text()).values())
    assert _written(tmp_path / "first") == _written(tmp_path / "second")


def test_the_key_follows_config_and_port_sources(src, monkeypatch, tmp_path):
    from mindport import loading

    monkeypatch.setenv("MINDPORT_CACHE", str(tmp_path))
    built = []
    spec_fn = loading._spec_builder()
    monkeypatch.setattr(loading, "_cached_spec", lambda key, build: built.append(key) or {})
    config = json.loads((Path(src) / "vae" / "config.json").read_text())
    spec_fn("vae", config["_class_name"], config)
    spec_fn("vae", config["_class_name"], {**config, "latent_channels": 8})
    loading._ports_fingerprint.cache_clear()
    monkeypatch.setattr(loading, "SPEC_SOURCES", loading.SPEC_SOURCES[:-1])  # as if a port source had changed
    spec_fn("vae", config["_class_name"], config)
    loading._ports_fingerprint.cache_clear()
    assert len(set(built)) == 3
    with pytest.raises(ValueError, match="NoSuchModel"):
        spec_fn("vae", "NoSuchModel", config)
