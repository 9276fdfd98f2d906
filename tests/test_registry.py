"""The registry (converters/registry.py) holds the tree together: every registered pipeline resolves to a runtime
class, a runtime class and a converter per component, a parity adapter and its fixtures; the public exports are the
registry's; every ported model class is registered; the settings a run uses are the ones its preset declares."""

import ast
import json
from pathlib import Path

import pytest

import mindport
from converters import converter_for, registry
from converters.registry import IMAGE_PROCESSORS, MODEL_ROWS, PIPELINE_ROWS, PIPELINES, SCHEDULER_ROWS, TOKENIZERS
from mindport.models import model_class
from mindport.pipelines import pipeline_class
from mindport.schedulers import scheduler_class

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("row", PIPELINES, ids=lambda r: r.name)
def test_pipeline_row_resolves(row):
    cls = pipeline_class(row.name)
    assert cls.__name__ == row.name
    assert cls.components_order == tuple(row.components), "the pipeline takes its components from the row"
    assert set(row.compared) <= set(row.components)
    for component, classes in row.components.items():
        assert classes, f"{row.name}.{component}: no class"
        for name in classes:
            if name in MODEL_ROWS:
                assert model_class(name).__name__ == name
                assert model_class(name).diffusers_class == name
                assert converter_for(name).class_name == name
            elif name in SCHEDULER_ROWS:
                assert scheduler_class(name).__name__ == name
            else:
                assert name in IMAGE_PROCESSORS + TOKENIZERS, f"{row.name}.{component}: {name} resolves to nothing"
    for component in row.compared:
        assert all(name in MODEL_ROWS for name in row.components[component]), component


@pytest.mark.parametrize("row", PIPELINES, ids=lambda r: r.name)
def test_pipeline_row_has_an_adapter_and_its_fixtures(row):
    pytest.importorskip("torch")
    from parity.adapter import RUN_KEYS, adapter_for

    adapter = adapter_for(row.name)
    assert adapter.pipeline == row.name and adapter.components == row.compared
    assert set(adapter.presets) == set(row.fixtures), "presets defined in the adapter = fixtures named in the row"
    for preset in row.fixtures:
        assert registry.pipeline_for_fixture(preset) is row
        run = adapter.presets[preset].get("run", {})
        assert set(run) <= set(RUN_KEYS), (preset, sorted(set(run) - set(RUN_KEYS)))
        assert {"height", "width", "frames"} <= set(run), f"{preset}: a fixture declares its run size"


def test_every_model_row_resolves():
    for name in MODEL_ROWS:
        assert model_class(name).__name__ == name
        assert converter_for(name).class_name == name
    for name in SCHEDULER_ROWS:
        assert scheduler_class(name).__name__ == name


def test_public_exports_are_the_registry():
    expected = {"DiffusionPipeline", *PIPELINE_ROWS, *MODEL_ROWS, *SCHEDULER_ROWS}
    assert set(mindport.__all__) == expected
    assert set(mindport.models.__all__) == set(MODEL_ROWS)
    assert set(mindport.schedulers.__all__) == set(SCHEDULER_ROWS)
    assert set(mindport.pipelines.__all__) == {"DiffusionPipeline", *PIPELINE_ROWS}
    for name in expected:
        assert getattr(mindport, name).__name__ == name
    with pytest.raises(AttributeError):
        mindport.NotAModel  # noqa: B018


def test_every_ported_model_class_is_registered():
    """A model file whose class declares `diffusers_class` (loadable by name) must have a registry row."""
    declared = set()
    for path in (ROOT / "mindport" / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] ==
                            ["diffusers_class"] and isinstance(stmt.value, ast.Constant)):
                        declared.add((path.stem, stmt.value.value))
    rows = {(row.runtime, row.name) for row in MODEL_ROWS.values()}
    assert declared == rows, {"declared, not registered": sorted(declared - rows),
                              "registered, not declared": sorted(rows - declared)}


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="no MindSpore port of model 'Nope'.*UNet2DConditionModel"):
        model_class("Nope")
    with pytest.raises(ValueError, match="no pipeline 'Nope' is registered; registered: .*AnimateDiffPipeline"):
        registry.pipeline("Nope")
    with pytest.raises(ValueError, match="unknown fixture preset 'nope'; expected one of .*svd-tiny"):
        registry.pipeline_for_fixture("nope")
    from converters import ConversionError

    with pytest.raises(ConversionError, match="unknown architecture 'Nope'; supported: .*AutoencoderKL"):
        converter_for("Nope", "x")


def test_a_duplicate_row_is_refused():
    row = registry.MODELS[0]
    with pytest.raises(ValueError, match="registered twice"):
        registry._index([row, row])


# ---------------------------------------------------------------------------------------------------------------
# the settings a run records are the ones its preset declares
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", [p for row in PIPELINES for p in row.fixtures])
def test_run_settings_are_the_declared_ones(preset, tmp_path):
    """The harness (and bench) settings for a fixture folder: exactly the preset's `run`, whatever the configs'
    own defaults say; explicit flags still win."""
    pytest.importorskip("torch")
    from parity.adapter import FIXTURE_META, adapter_for

    adapter = adapter_for(registry.pipeline_for_fixture(preset).name)
    run = adapter.presets[preset]["run"]
    (tmp_path / FIXTURE_META).write_text(json.dumps({"preset": preset, "seed": 0, "spec": adapter.presets[preset]},
                                                    default=list))
    settings = adapter.settings(tmp_path)  # no configs at all: diffusers' defaults underneath
    assert {k: settings[k] for k in run} == run
    assert adapter.settings(tmp_path, frames=2, height=8)["frames"] == 2
    kwargs = adapter.call_kwargs({**settings, "seed": 0, "steps": 1})
    # the frames asked for (video-to-video: the input video's length)
    assert (len(kwargs["video"]) if "video" in kwargs else kwargs["num_frames"]) == run["frames"]


def test_an_unknown_run_setting_is_refused(tmp_path):
    pytest.importorskip("torch")
    from parity.adapter import FIXTURE_META, adapter_for

    (tmp_path / FIXTURE_META).write_text(json.dumps({"preset": "x", "spec": {"run": {"num_frames": 4}}}))
    with pytest.raises(ValueError, match=r"fixture preset 'x': unknown run setting\(s\) \['num_frames'\]"):
        adapter_for("AnimateDiffPipeline").settings(tmp_path)


@pytest.mark.parametrize("name", sorted({p.parent.parent.name for p in (ROOT / "reports").glob("*/fp*/report.json")}))
def test_committed_reports_ran_their_declared_settings(name):
    """Every committed tiny report ran the pixels, frames and sampler settings its preset declares."""
    pytest.importorskip("torch")
    from parity.adapter import adapter_for

    if name not in {p for row in PIPELINES for p in row.fixtures}:
        pytest.skip(f"{name} is not a fixture preset")
    adapter = adapter_for(registry.pipeline_for_fixture(name).name)
    for path in (ROOT / "reports" / name).glob("fp*/report.json"):
        settings = json.loads(path.read_text())["settings"]
        for key, value in adapter.presets[name]["run"].items():
            assert settings.get(key) == value, (str(path), key, settings.get(key), value)


@pytest.mark.parametrize("pipeline, configs, expected", [
    # configs as the classes save their defaults: sample_size null -> the pipeline's call defaults
    ("StableVideoDiffusionPipeline", {"unet": {"sample_size": None, "num_frames": None}, "vae": {}},
     {"height": 576, "width": 1024, "frames": 25}),
    ("StableVideoDiffusionPipeline", {"unet": {"sample_size": 12, "num_frames": 14},
                                      "vae": {"block_out_channels": [8, 8, 8]}}, {"height": 48, "width": 48, "frames": 14}),
    ("I2VGenXLPipeline", {"unet": {"sample_size": None}, "vae": {"block_out_channels": None}},
     {"height": 704, "width": 1280, "frames": 16}),
    ("AnimateDiffPipeline", {"unet": {"sample_size": None, "motion_max_seq_length": None}, "vae": {"sample_size": 256}},
     {"height": 256, "width": 256, "frames": 16}),
    ("AnimateDiffPipeline", {"unet": {"sample_size": 8, "motion_max_seq_length": 6},
                             "vae": {"block_out_channels": [4, 4]}}, {"height": 16, "width": 16, "frames": 6}),
])
def test_default_settings_from_configs_with_nulls(pipeline, configs, expected, tmp_path):
    pytest.importorskip("torch")
    from parity.adapter import adapter_for

    for component, config in configs.items():
        (tmp_path / component).mkdir()
        (tmp_path / component / "config.json").write_text(json.dumps(config))
    settings = adapter_for(pipeline).settings(tmp_path)
    assert {k: settings[k] for k in expected} == expected


def test_bad_run_sizes_are_refused(tmp_path):
    pytest.importorskip("torch")
    from converters import ConversionError
    from parity.adapter import adapter_for

    with pytest.raises(ConversionError, match="frames 0 for AnimateDiffPipeline: expected a positive integer"):
        adapter_for("AnimateDiffPipeline").settings(tmp_path, frames=0, height=8, width=8)
    # no size anywhere (no configs, no flags): one line asking for them
    with pytest.raises(ValueError, match=r"mindport parity \(--height, --width\): .*sample_size are null"):
        adapter_for("AnimateDiffPipeline").settings(tmp_path)
