"""`mindport generate` on every tiny pipeline folder: the requested frames written as .gif / .mp4 / PNG folder, the
pipeline's own flags passed, and bad values refused with one line before anything is loaded or written."""

import PIL.Image
import pytest

from mindport.cli import main
from parity.fixtures import build, synthetic_image


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "in.png"
    synthetic_image(40, 27).save(path)
    return str(path)


@pytest.mark.parametrize("preset, flags, size", [
    ("svd-tiny", ["--image", "{image}", "--frames", "3", "--min-guidance-scale", "1.5", "--max-guidance-scale", "2.5",
                  "--motion-bucket-id", "100", "--noise-aug-strength", "0.05", "--fps", "6"], (32, 16)),
    ("animatediff-tiny", ["--prompt", "a cat", "--negative-prompt", "blurry", "--frames", "4", "--height", "16",
                          "--width", "24", "--guidance-scale", "6"], (24, 16)),
    ("i2vgen-xl-tiny", ["--prompt", "a cat", "--image", "{image}", "--frames", "3", "--height", "16", "--width",
                        "24"], (24, 16)),
])
@pytest.mark.parametrize("suffix", [".gif", ""])
def test_generate_every_pipeline(preset, flags, size, suffix, image, tmp_path, capsys):
    out = tmp_path / f"video{suffix}"
    argv = ["generate", str(build(preset)), "--steps", "1", "--out", str(out)] + [f.format(image=image) for f in flags]
    assert main(argv) == 0, capsys.readouterr().err
    frames = int(flags[flags.index("--frames") + 1])
    if suffix == ".gif":
        gif = PIL.Image.open(out)
        assert gif.n_frames == frames and gif.size == size
    else:
        pngs = sorted(out.glob("frame_*.png"))
        assert len(pngs) == frames and PIL.Image.open(pngs[0]).size == size
    assert "generated" in capsys.readouterr().out


@pytest.mark.parametrize("preset, flags, message", [
    ("svd-tiny", ["--image", "{image}", "--frames", "0"], "--frames 0: expected a positive integer"),
    ("svd-tiny", ["--image", "{image}", "--height", "-8"], "--height -8"),
    ("svd-tiny", ["--prompt", "a cat", "--image", "{image}"], "does not take --prompt"),
    ("svd-tiny", [], "give --image"),
    ("svd-tiny", ["--image", "{missing}"], "missing.png"),
    ("svd-tiny", ["--image", "{image}", "--height", "20", "--width", "24"], "divisible by 8"),
    ("animatediff-tiny", [], "give --prompt"),
    ("animatediff-tiny", ["--prompt", "a cat", "--motion-bucket-id", "3"], "does not take --motion-bucket-id"),
    ("animatediff-tiny", ["--prompt", "a", "--out-suffix", ".avi"], "expected a .gif, an .mp4"),
])
def test_generate_refuses_bad_values(preset, flags, message, image, tmp_path, capsys):
    out = tmp_path / "out.gif"
    flags = [f.format(image=image, missing=str(tmp_path / "missing.png")) for f in flags]
    if "--out-suffix" in flags:
        i = flags.index("--out-suffix")
        out = tmp_path / f"out{flags[i + 1]}"
        flags = flags[:i] + flags[i + 2:]
    assert main(["generate", str(build(preset)), "--steps", "1", "--out", str(out)] + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_generate_with_motion_adapter(tmp_path, capsys):
    src = build("animatediff-tiny")
    out = tmp_path / "v.gif"
    assert main(["generate", str(src), "--motion-adapter", str(src / "motion_adapter"), "--prompt", "a cat",
                 "--frames", "3", "--height", "16", "--width", "16", "--steps", "1", "--out", str(out)]) == 0
    assert PIL.Image.open(out).n_frames == 3 and "AnimateDiffPipeline" in capsys.readouterr().out
    assert main(["generate", str(build("svd-tiny")), "--motion-adapter", str(src / "motion_adapter"),
                 "--out", str(tmp_path / "x.gif")]) == 2
    assert "needs an SD 1.5 base or AnimateDiff folder" in capsys.readouterr().err
