"""`mindport convert-lora FILE OUT --pipeline DIR`: the LoRA in mindport's module naming, which load_lora_weights
reads back to the same frames as the original file; bad input exits 2 in one line and writes nothing."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from mindport import AnimateDiffPipeline  # noqa: E402
from mindport.cli import main  # noqa: E402
from mindport.lora import CONVERTED_LORA, CONVERTED_LORA_INFO  # noqa: E402
from parity.fixtures import build  # noqa: E402
from parity.lora import tiny_loras  # noqa: E402

RUN = dict(prompt="the cat walking at night", negative_prompt="a dog, static", num_frames=4, num_inference_steps=2,
           guidance_scale=7.5, height=16, width=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mindport.loading import convert_checkpoint

    root = tmp_path_factory.mktemp("convert_lora")
    folder = build("animatediff-tiny")
    convert_checkpoint(str(folder), str(root / "converted"))
    return folder, root, tiny_loras(folder)


def _frames(pipe):
    lat = np.random.Generator(np.random.PCG64(7)).standard_normal((1, 4, 4, 8, 8)).astype(np.float32)
    return np.asarray(pipe(**RUN, latents=lat, output_type="np")[0])


def test_converted_lora_gives_the_same_frames(setup, capsys):
    folder, root, (style, motion) = setup
    outs = []
    for i, f in enumerate((style, motion)):
        out = root / f"out{i}"
        assert main(["convert-lora", str(f), str(out), "--pipeline", str(root / "converted")]) == 0
        info = json.loads((out / CONVERTED_LORA_INFO).read_text())
        assert info["source_layouts"] == (["kohya"] if i == 0 else ["diffusers-old"])
        assert len(info["source_sha256"]) == 64 and info["modules"]
        outs.append(out)
    assert "converted LoRA" in capsys.readouterr().out
    pipe = AnimateDiffPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    plain = _frames(pipe)
    results = []
    for files in ((style, motion), outs):
        for f, name in zip(files, ("style", "motion")):
            pipe.load_lora_weights(str(f), adapter_name=name)
        assert pipe.lora_plan(str(files[0])).layouts == (["kohya"] if files[0] == style else ["mindport"])
        pipe.set_adapters(["style", "motion"], adapter_weights=[0.8, 1.2])
        results.append(_frames(pipe))
        pipe.unload_lora_weights()
    assert np.linalg.norm(results[0] - plain) / np.linalg.norm(plain) > 0.1  # the LoRAs move the frames
    np.testing.assert_array_equal(results[1], results[0])


def test_convert_lora_refuses_bad_input(setup, tmp_path, capsys):
    from safetensors.numpy import save_file

    folder, root, (style, _) = setup
    bad = tmp_path / "bad.safetensors"
    save_file({"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": np.ones((2, 5, 3, 3), np.float32),
               "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": np.ones((32, 2, 1, 1), np.float32)}, str(bad))
    cases = [
        ([str(tmp_path / "missing.safetensors")], "LoRA file not found"),
        ([str(bad)], "needs down (2, 32, 3, 3)"),
        ([str(style), "--pipeline", str(tmp_path)], "not a folder written by `mindport convert`"),
    ]
    for args, msg in cases:
        argv = ["convert-lora", args[0], str(tmp_path / "out")] + (args[1:] or ["--pipeline", str(root / "converted")])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    (tmp_path / "out").mkdir()
    assert main(["convert-lora", str(style), str(tmp_path / "out"), "--pipeline", str(root / "converted")]) == 2
    assert "already exists" in capsys.readouterr().err and not any((tmp_path / "out").iterdir())
