"""A failing parity run's first diverging module, alone, in one folder (R/repro/) to attach to a bug report: the
component's config, only that module's weights (as the converted checkpoint holds them), the inputs its PyTorch twin
saw on its first call, the reference output, and `run.py`, which runs the module in MindSpore (and in PyTorch when
torch is installed) on those inputs and prints the error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from converters.safetensors_io import load_safetensors, save_arrays

from .capture import Capture, leaves

SCRIPT = '''"""Reproduce a parity failure: {component}.{module_label} alone on the inputs its PyTorch twin saw (first call).
Run from anywhere with mindport installed: python run.py"""

import json
from pathlib import Path

import numpy as np

from converters.safetensors_io import load_safetensors
from parity.capture import first_tensor, to_numpy, unpack

HERE = Path(__file__).resolve().parent
META = json.loads((HERE / "repro.json").read_text())
CONFIG = json.loads((HERE / "config.json").read_text())
INPUTS = load_safetensors(HERE / "inputs.safetensors")
SKELETON = json.loads((HERE / "inputs.json").read_text())
EXPECTED = load_safetensors(HERE / "reference_output.safetensors")["output"]
WEIGHTS = load_safetensors(HERE / "weights.safetensors")
PREFIX = META["module"] + "." if META["module"] else ""


def skeleton(v):
    kind, value = v
    if kind in ("list", "tuple"):
        return kind, [skeleton(x) for x in value]
    if kind == "dict":
        return kind, {{k: skeleton(x) for k, x in value.items()}}
    return kind, value


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def mindspore_error():
    import mindspore as ms

    from mindport import backend
    from mindport.models import model_class

    backend.init_context()
    half = META["dtype"] == "fp16"
    model = model_class(META["class_name"]).from_config(CONFIG)
    cell = dict(model.cells_and_names())[META["module"]] if META["module"] else model
    for name, p in cell.parameters_and_names():
        value = WEIGHTS[PREFIX + name]
        p.set_data(ms.Tensor(value.astype(np.float16) if half and value.dtype.kind == "f" else value))

    def make(a):
        t = ms.Tensor(np.asarray(a))
        return t.astype(ms.float16) if half and a.dtype.kind == "f" else t

    args, kwargs = unpack(skeleton(SKELETON), INPUTS.__getitem__, make)
    return rel_l2(to_numpy(first_tensor(cell(*args, **kwargs))), EXPECTED)


def pytorch_error():
    try:
        import torch
    except ImportError:
        return None
    import importlib

    library = importlib.import_module(META["library"])
    if META["library"] == "transformers":
        cfg = {{k: v for k, v in CONFIG.items() if not k.startswith("_")}}
        model = getattr(library, META["class_name"])(library.AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    else:
        model = getattr(library, META["class_name"]).from_config(CONFIG)
    module = model.get_submodule(META["module"]) if META["module"] else model
    state = {{k[len(PREFIX):]: torch.from_numpy(np.array(v)) for k, v in WEIGHTS.items()}}
    missing, unexpected = module.load_state_dict(state, strict=False)
    args, kwargs = unpack(skeleton(SKELETON), INPUTS.__getitem__, lambda a: torch.from_numpy(np.array(a)))
    with torch.no_grad():
        out = module.eval()(*args, **kwargs)
    return rel_l2(to_numpy(first_tensor(out)), EXPECTED), missing, unexpected


if __name__ == "__main__":
    print(f"{{META['component']}}.{{META['module'] or '(root)'}}: the parity run measured rel L2 "
          f"{{META['report_rel_l2']:.3e}} (bound {{META['bound']:.1e}}) at call {{META['call']}}, step {{META['step']}}")
    print(f"MindSpore ({{META['dtype']}}) on the reference inputs: rel L2 {{mindspore_error():.3e}}")
    torch_result = pytorch_error()
    if torch_result is None:
        print("PyTorch: not installed")
    else:
        err, missing, unexpected = torch_result
        print(f"PyTorch with these weights: rel L2 {{err:.3e}}"
              + (f" (weights not loaded: {{len(missing)}} missing, {{len(unexpected)}} unexpected)"
                 if missing or unexpected else "")
              + ("  <- the weights themselves differ from the reference's" if err > 10 * META["bound"] else ""))
'''


def write(folder, report: dict, reference: Capture, converted, dtype: str) -> dict | None:
    """Write R/repro/ for the report's first divergence when it is a module whose first-call inputs were recorded.
    Returns a summary (path, bytes) or None."""
    fd = report.get("first_divergence") or {}
    if fd.get("kind") != "module":
        return None
    comp, module = fd["component"], "" if fd["module"] == "(root)" else fd["module"]
    key = (comp, module)
    component_dir = Path(converted) / comp
    weights_file = component_dir / "mindspore_model.safetensors"
    if key not in reference.inputs or not weights_file.exists() or (comp, module, 0) not in reference.store:
        return None
    from mindport.models import model_class

    config = json.loads((component_dir / "config.json").read_text())
    class_name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    out = Path(folder)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    prefix = module + "." if module else ""
    weights = {k: v for k, v in load_safetensors(weights_file).items() if k.startswith(prefix)}
    save_arrays(out / "weights.safetensors", weights)
    skel = reference.inputs[key]
    save_arrays(out / "inputs.safetensors", {k: np.ascontiguousarray(reference.store.get(k)) for k in leaves(skel)})
    (out / "inputs.json").write_text(json.dumps(skel))
    save_arrays(out / "reference_output.safetensors",
                {"output": np.ascontiguousarray(reference.store.get((comp, module, 0)))})
    shutil.copyfile(component_dir / "config.json", out / "config.json")
    meta = {"component": comp, "module": module, "class_name": class_name,
            "library": model_class(class_name).config_library, "dtype": dtype, "call": fd.get("call"),
            "step": fd.get("step"), "report_rel_l2": fd["rel_l2"], "bound": fd["bound"]}
    (out / "repro.json").write_text(json.dumps(meta, indent=1))
    (out / "run.py").write_text(SCRIPT.format(component=comp, module_label=module or "(root)"))
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"path": str(out), "bytes": size, "module": f"{comp}.{module or '(root)'}"}
