"""AnimateDiff checkpoints: the original release's single motion-module files (`.ckpt` / `.safetensors`, keys like
`down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight`) map onto
the same MotionAdapter parameters as their diffusers-format twin; bad keys are refused; `mindport convert` takes an
adapter folder."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from converters import ConversionError  # noqa: E402
from converters.animatediff import infer_motion_adapter_config  # noqa: E402
from mindport.cli import main  # noqa: E402
from mindport.loading import convert_checkpoint  # noqa: E402
from mindport.models.unet_motion_model import MotionAdapter  # noqa: E402
from parity.fixtures import randomise  # noqa: E402

# diffusers leaf names -> the original release's (this test's own inverse of the converter's rows)
TO_ORIGINAL = [(".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."), (".norm1.", ".norms.0."),
               (".norm2.", ".norms.1."), (".norm3.", ".ff_norm.")]

CONFIGS = {
    "v2-like-2lvl": dict(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=4,
                         motion_norm_num_groups=8, motion_max_seq_length=24),
    "v1-like-no-mid-3lvl": dict(block_out_channels=(16, 32, 32), motion_layers_per_block=1,
                                motion_transformer_layers_per_block=2, use_motion_mid_block=False,
                                motion_num_attention_heads=2, motion_norm_num_groups=4, motion_max_seq_length=16),
    "mid-2-layers": dict(block_out_channels=(16, 16), motion_layers_per_block=(1, 2), motion_mid_block_layers_per_block=2,
                         motion_transformer_layers_per_mid_block=(1, 2), motion_num_attention_heads=8,
                         motion_norm_num_groups=8, motion_max_seq_length=8),
}


def to_original(state: dict) -> dict:
    """A diffusers MotionAdapter state_dict renamed as the original release stores it (with a pos_encoder table in
    each of the two attention blocks, as the release files have)."""
    out = {}
    for key, value in state.items():
        prefix, rest = key.split(".motion_modules.", 1)
        index, rest = rest.split(".", 1)
        head = f"{prefix}.motion_modules.{index}.temporal_transformer."
        if rest.endswith("pos_embed.pe"):
            block = rest[: -len("pos_embed.pe")]
            out[head + block + "attention_blocks.0.pos_encoder.pe"] = value.clone()
            out[head + block + "attention_blocks.1.pos_encoder.pe"] = value.clone()
            continue
        rest = "." + rest
        for a, b in TO_ORIGINAL:
            rest = rest.replace(a, b)
        out[head + rest[1:]] = value.clone()
    return out


def twin(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    return randomise(diffusers.MotionAdapter(**config), seed)


def params(cell) -> dict:
    return {k: v.asnumpy() for k, v in cell.parameters_and_names()}


def save(state: dict, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    return path


@pytest.mark.parametrize("case", list(CONFIGS))
def test_original_file_gives_the_diffusers_twin(case, tmp_path):
    config = CONFIGS[case]
    reference = twin(config)
    reference.save_pretrained(tmp_path / "diffusers")
    expected = params(MotionAdapter.from_pretrained(tmp_path / "diffusers"))
    original = to_original(reference.state_dict())
    assert any("temporal_transformer" in k for k in original) and not any(".attn1." in k for k in original)
    suffix = ".ckpt" if case.startswith("v1") else ".safetensors"
    path = save(original, tmp_path / f"mm{suffix}")

    # 1. config inferred from the shapes (+ the head count, which no shape shows)
    shapes = {k: tuple(v.shape) for k, v in original.items()}
    inferred = infer_motion_adapter_config(shapes, motion_num_attention_heads=config["motion_num_attention_heads"],
                                           motion_norm_num_groups=config["motion_norm_num_groups"])
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    for key, value in reference.config.items():
        if not key.startswith("_"):
            assert as_list(inferred[key]) == as_list(value), (key, inferred[key], value)

    # 2. in memory: from_single_file fills every parameter with the twin's value
    adapter = MotionAdapter.from_single_file(path, motion_num_attention_heads=config["motion_num_attention_heads"],
                                             motion_norm_num_groups=config["motion_norm_num_groups"])
    got = params(adapter)
    assert sorted(got) == sorted(expected)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)

    # 3. to a converted folder (audited, manifest), loaded back
    # (the heads and norm groups, which no shape shows, from --config DIR/motion_adapter/config.json)
    (tmp_path / "cfg" / "motion_adapter").mkdir(parents=True)
    shutil.copy(tmp_path / "diffusers" / "config.json", tmp_path / "cfg" / "motion_adapter" / "config.json")
    manifest = convert_checkpoint(path, tmp_path / "converted", progress=False, config_dir=tmp_path / "cfg")
    audit = manifest["components"]["."]["audit"]
    assert audit["passed"] and manifest["source_format"] == "animatediff-original"
    assert len(audit["dropped"]) == sum(k.endswith("pos_encoder.pe") for k in original)
    again = params(MotionAdapter.from_pretrained(tmp_path / "converted"))
    for k in expected:
        np.testing.assert_array_equal(again[k], expected[k], err_msg=k)


def test_single_diffusers_format_file(tmp_path):
    """A lone diffusers-format adapter file (no config.json) loads the same way, position tables dropped."""
    config = CONFIGS["mid-2-layers"]
    reference = twin(config)
    path = save(reference.state_dict(), tmp_path / "adapter.safetensors")
    adapter = MotionAdapter.from_single_file(path, motion_num_attention_heads=8, motion_norm_num_groups=8)
    assert adapter.config.motion_max_seq_length == 8 and adapter.config.motion_mid_block_layers_per_block == 2
    expected = {k: v.numpy() for k, v in reference.state_dict().items() if not k.endswith(".pe")}
    got = params(adapter)
    assert sorted(got) == sorted(expected)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


@pytest.fixture(scope="module")
def original_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mm") / "mm.safetensors"
    return save(to_original(twin(CONFIGS["v2-like-2lvl"]).state_dict()), path), CONFIGS["v2-like-2lvl"]


def _load(path, config):
    return MotionAdapter.from_single_file(path, motion_num_attention_heads=config["motion_num_attention_heads"],
                                          motion_norm_num_groups=config["motion_norm_num_groups"])


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.update({"down_blocks.0.motion_modules.0.temporal_transformer.proj_gate.weight": torch.zeros(4, 4)}),
     r"1 unexpected key\(s\): down_blocks\.0\.motion_modules\.0\.temporal_transformer\.proj_gate\.weight"),
    (lambda sd: sd.pop("up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.ff_norm.bias"),
     r"1 parameter\(s\) missing from the checkpoint: up_blocks\.1\.motion_modules\.2\.transformer_blocks\.0\.norm3\.bias"),
    (lambda sd: sd.update({"down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight":
                           sd.pop("down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
                                  "attention_blocks.0.to_q.weight")}),
     "mixes original-release names"),
    (lambda sd: sd.update({"down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.norms.0.weight":
                           torch.zeros(5)}),
     r"'down_blocks\.0\.motion_modules\.0\.temporal_transformer\.transformer_blocks\.0\.norms\.0\.weight' has shape "
     r"\(5,\), but parameter 'down_blocks\.0\.motion_modules\.0\.transformer_blocks\.0\.norm1\.weight' needs \(32,\)"),
    (lambda sd: sd.update({"up_blocks.0.motion_modules.9.temporal_transformer.norm.weight": torch.zeros(64)}),
     r"up_blocks\.0 has 10 motion modules; down_blocks\.1 has 2, so 3 were expected"),
])
def test_bad_keys_are_refused(original_file, tmp_path, edit, message):
    from safetensors.torch import load_file

    path, config = original_file
    state = load_file(str(path))
    edit(state)
    bad = save(state, tmp_path / "bad.safetensors")
    with pytest.raises(ConversionError, match=message) as e:
        _load(bad, config)
    assert "bad.safetensors" in str(e.value)


def test_missing_file_and_config_fields(tmp_path, original_file):
    with pytest.raises(ConversionError, match="motion module file not found"):
        MotionAdapter.from_single_file(tmp_path / "nope.ckpt")
    with pytest.raises(ConversionError, match=r"unknown MotionAdapter config field\(s\) \['heads'\]"):
        MotionAdapter.from_single_file(original_file[0], heads=8)
    empty = save({"conv_in.weight": torch.zeros(4, 9, 3, 3)}, tmp_path / "empty.safetensors")
    with pytest.raises(ConversionError, match="no motion modules found"):
        MotionAdapter.from_single_file(empty)


def test_cli_converts_an_adapter_folder(tmp_path, capsys):
    reference = twin(CONFIGS["mid-2-layers"])
    reference.save_pretrained(tmp_path / "adapter")
    assert main(["convert", str(tmp_path / "adapter"), str(tmp_path / "out"), "--dtype", "fp16"]) == 0
    assert "converted" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    audit = manifest["components"]["."]["audit"]
    assert audit["passed"] and all(k.endswith("pos_embed.pe") for k in audit["dropped"]) and audit["dropped"]
    ours = MotionAdapter.from_pretrained(tmp_path / "out")
    expected = {k: v.numpy() for k, v in reference.state_dict().items() if not k.endswith(".pe")}
    got = params(ours)
    assert sorted(got) == sorted(expected)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k].astype(np.float16), rtol=0, atol=0, err_msg=k)


def test_cli_converts_a_pipeline_folder_with_a_motion_adapter(tmp_path, capsys):
    """A saved AnimateDiffPipeline (UNetMotionModel + MotionAdapter + SD parts + tokenizer) converts; the position
    tables are the only dropped tensors; the converted folder loads."""
    from mindport import AnimateDiffPipeline
    from parity.fixtures import build

    src = build("animatediff-tiny")
    dst = tmp_path / "converted"
    assert main(["convert", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "unet (UNetMotionModel)" in out and "motion_adapter (MotionAdapter)" in out
    manifest = json.loads((dst / "manifest.json").read_text())
    comps = manifest["components"]
    for name in ("unet", "motion_adapter"):
        audit = comps[name]["audit"]
        assert audit["passed"] and audit["dropped"] and all(k.endswith(".pos_embed.pe") for k in audit["dropped"])
    assert comps["tokenizer"]["copied"] and comps["scheduler"]["copied"]
    pipe = AnimateDiffPipeline.from_pretrained(str(dst))
    assert type(pipe.unet).__name__ == "UNetMotionModel" and pipe.tokenizer is not None
