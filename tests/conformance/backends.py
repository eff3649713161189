"""Running one node test case: on the backend library itself (raw), and through onnxsmith's CLI.

Both return an :class:`Outcome`: ``pass``, ``fail`` (ran, outputs differ) or ``error`` (did not run), with why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from tests.conformance.cases import Case, compare

BACKENDS = ("onnxruntime", "openvino", "tvm")
MODES = ("raw", "onnxsmith")


@dataclasses.dataclass(frozen=True)
class Outcome:
    case: str
    backend: str
    mode: str
    status: str
    """``pass``, ``fail`` or ``error``."""
    reason: str = ""
    ops: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = next((t.strip() for t in text if t.strip()), "")
    return f"{type(exc).__name__}: {line}"[:240]


# --- raw: the vendor library on the model file -------------------------------------------------------------------
def _raw_onnxruntime(case: Case) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(case.model_path), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, case.inputs))


def _raw_openvino(case: Case) -> list[Any]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(case.model_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    # by name where the port kept it; OpenVINO may rename a port after the output it feeds straight into, or drop
    # an input nothing uses: then by position among the inputs it kept
    names = list(case.inputs)
    feeds = {}
    for index, port in enumerate(compiled.inputs):
        known = [n for n in names if n in port.get_names()]
        feeds[index] = case.inputs[known[0] if known else names[index]]
    result = request.infer(feeds)
    return [np.asarray(result[out]) for out in compiled.outputs]


def _raw_tvm(case: Case) -> list[Any]:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    shapes = {k: list(v.shape) for k, v in case.inputs.items()}
    dtypes = {k: str(v.dtype) for k, v in case.inputs.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        mod = from_onnx(case.model, shape_dict=shapes, dtype_dict=dtypes)
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
    executable = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu(0))
    params = [str(p.name) for p in mod["main"].params]
    args = [tvm.runtime.tensor(np.asarray(case.inputs[name], order="C"), tvm.cpu(0)) for name in params]
    value = vm["main"](*args)
    values = list(value) if isinstance(value, (tuple, list)) or type(value).__name__ == "Array" else [value]
    return [v.numpy() for v in values]


RAW = {"onnxruntime": _raw_onnxruntime, "openvino": _raw_openvino, "tvm": _raw_tvm}


def run_raw(case: Case, backend: str) -> Outcome:
    try:
        got = RAW[backend](case)
    except Exception as exc:  # the vendor's own failure is the finding
        return Outcome(case.name, backend, "raw", "error", _first_line(exc), case.ops)
    why = compare(case.outputs, got)
    return Outcome(case.name, backend, "raw", "fail" if why else "pass", why or "", case.ops)


# --- through onnxsmith: `compile` then `run --input x.npz --output y.npz` ------------------------------------------
_EXIT = {1: "internal error", 2: "bad input", 3: "missing dependency", 4: "backend failure", 5: "unsupported here",
         6: "check failed"}


def _cli(args: list[str]) -> tuple[int, str]:
    """The real CLI (``onnxsmith.cli.main``) in this process: exit code and its last stderr line."""
    from onnxsmith.cli import main

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
        except Exception as exc:  # main() maps every error; anything escaping is an onnxsmith bug
            return 1, _first_line(exc)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, (lines[-1] if lines else "")[:240]


def run_onnxsmith(case: Case, backend: str, workdir: Path) -> Outcome:
    def error(step: str, code: int, text: str) -> Outcome:
        return Outcome(case.name, backend, "onnxsmith", "error", f"{step}: exit {code} ({_EXIT.get(code, '?')}): "
                       f"{text.removeprefix('error: ')}", case.ops)

    from onnxsmith.model.specs import _graph_inputs, value_spec
    from onnxsmith.data.values import flatten_values, read_values

    shape_args: list[str] = []
    for value in _graph_inputs(case.model):
        spec = value_spec(value)
        if spec.is_tensor and not spec.is_static and value.name in case.inputs:
            shape_args += ["--shape", f"{value.name}=" + "x".join(map(str, case.inputs[value.name].shape))]
    bundle = workdir / "bundle"
    code, text = _cli(["compile", str(case.model_path), "-b", backend, "--precision", "fp32", "-o", str(bundle),
                       "--no-cache", *shape_args])
    if code:
        return error("compile", code, text)
    feeds = workdir / "x.npz"
    # the documented convention (onnxsmith.data.values): strings as '<U' arrays, a sequence NAME as NAME.0, ...,
    # NAME.length, an absent optional as NAME.none; np.savez writes no pickle for any of them
    np.savez(feeds, **flatten_values(case.inputs))
    out = workdir / "y.npz"
    code, text = _cli(["run", str(bundle), "--input", str(feeds), "--output", str(out)])
    if code:
        return error("run", code, text)
    specs = [value_spec(o) for o in case.model.graph.output]
    saved = read_values(out, specs)
    absent = [o.name for o in case.model.graph.output if o.name not in saved]
    got = [saved.get(o.name) for o in case.model.graph.output]
    # .npz has no bfloat16 (or float8): such arrays come back as void items of the same size; view them as expected
    got = [g.view(e.dtype) if isinstance(g, np.ndarray) and g.dtype.kind == "V" and isinstance(e, np.ndarray)
           and e.dtype.itemsize == g.dtype.itemsize else g for g, e in zip(got, case.outputs)]
    if absent:
        return Outcome(case.name, backend, "onnxsmith", "fail", f"outputs missing from y.npz: {absent}", case.ops)
    why = compare(case.outputs, got)
    return Outcome(case.name, backend, "onnxsmith", "fail" if why else "pass", why or "", case.ops)


def run_one(name: str, backend: str, mode: str, workdir: Path) -> Outcome:
    """One case on one backend in one mode (called inside a worker process)."""
    import time

    from tests.conformance.cases import load_case

    start = time.perf_counter()
    try:
        case = load_case(name)
    except Exception as exc:
        return Outcome(name, backend, mode, "error", f"case: cannot read it ({_first_line(exc)})")
    os.environ.setdefault("ONNXSMITH_CACHE_DIR", str(workdir.parent / "cache"))
    result = run_raw(case, backend) if mode == "raw" else run_onnxsmith(case, backend, workdir)
    return dataclasses.replace(result, seconds=round(time.perf_counter() - start, 3))
