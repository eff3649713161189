"""TVM compiler: ONNX -> onnxslim -> Relax -> (MetaSchedule | dlight) -> shared library for llvm or CUDA."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, UnsupportedError, UserInputError
from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, DeployProgram, Support, Variant

from onnxsmith.compilers.tvm.common import (IO_FILE, LIBRARY, TUNING_FILE, ffi_version, read_io, tvm, tvm_version,
                                           vendor_why)
from onnxsmith.compilers.tvm.targets import TVMTarget, check_cross_compiler, cuda_sm, machine_arch, tvm_target

if TYPE_CHECKING:
    from onnxsmith.compilers.tvm.remote import RemoteRunner
    from onnxsmith.compilers.tvm.runner import TVMRunner
    from onnxsmith.model import LoadedModel
    from onnxsmith.targets import Target

OPTIONS = (
    Option("threads", int, None, "threads of the TVM runtime's pool (default: the profile's runtime.threads)",
           minimum=1),
    Option("tune", bool, False, "tune kernels with MetaSchedule; the tuning database is cached per target "
           "(compile --tune)"),
    Option("tune_trials", int, None, "tuning budget in measured candidates (0: apply existing records only)",
           minimum=0),
    Option("tune_minutes", float, None, "tuning budget in minutes (default 30)", minimum=0),
    Option("tune_trials_per_task", int, None, "candidates measured per kernel", minimum=1),
    Option("tune_more", bool, False, "tune kernels that already have records further, seeded with the best ones"),
)
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}


class TVMCompiler(Compiler):
    """Apache TVM backend: generic and Arm CPUs (llvm, cross-compiled), NVIDIA GPUs without TensorRT (CUDA)."""

    name = "tvm"
    extra = "tvm"
    artifact_kind = "TVM Relax VM shared library (model.so) + I/O spec (io.json)"
    remote_profiling = True  # load_remote: a TVM RPC server on the device (or qemu)
    options = OPTIONS

    def ladder_variants(self, target: Target, precision: str) -> list[Variant]:
        if target.kind == "gpu":
            return [Variant()]
        # CPU code is only competitive tuned: apply the records of earlier tuning runs (none are made here)
        return [Variant(options={"tune": True, "tune_trials": 0}, change="earlier tuning records applied")]

    def slow_artifact_advice(self, artifact: Artifact) -> str:
        tuning = artifact.metadata.get("tuning")
        if tuning not in ("untuned", "partially tuned"):
            return ""
        return (f"its TVM code is {tuning}: compile again on the target machine with 'onnxsmith compile MODEL "
                "--backend tvm --tune --tune-minutes 30' (tuning records are cached and reused by later compiles "
                "and ladders)")

    def check_environment(self) -> None:
        tvm()

    def version(self) -> str:
        return tvm_version()

    def devices(self) -> list[str]:
        return ["CPU"] + (["CUDA"] if _cuda_device() else [])

    def supports(self, target: Target) -> Support:
        if target.kind == "cpu":
            return Support(True)
        if target.kind == "gpu":
            if target.vendor.lower() != "nvidia" and target.options_for("tvm").get("kind") != "cuda":
                return Support(False, f"onnxsmith drives TVM on NVIDIA GPUs (CUDA); {target.id} is a "
                               f"{target.vendor} GPU", "use the target's own backend")
            return Support(True)
        return Support(False, f"TVM has no code generator onnxsmith drives for {target.kind} targets",
                       "choose another --backend")

    def runs_here(self, target: Target) -> Support:
        if target.kind == "gpu":
            device = _cuda_device()
            if not device:
                return Support(False, f"{target.id} needs an NVIDIA GPU and TVM sees none here",
                               "run on a machine with the GPU, or profile there with --rpc")
            from onnxsmith.host import gpu_name_matches

            if target.requires.gpu and not gpu_name_matches(target.requires.gpu, device):  # an L4 is not an L40S
                return Support(False, f"{target.id} needs an NVIDIA {target.requires.gpu}; this machine has {device}",
                               "compile for the GPU that is here, or run on the target's GPU")
            return Support(True)
        from onnxsmith.host import host_matches

        return host_matches(target)

    def precisions(self, target: Target) -> tuple[str, ...]:
        if target.kind == "gpu":
            try:
                sm = cuda_sm(tvm_target(target).spec)
            except Exception:  # a malformed target file is reported when compiling
                sm = 0
            return ("fp32", "fp16") if sm >= 53 else ("fp32",)
        return ("fp32",)

    def cache_token(self, target: Target, options: Mapping[str, str]) -> str:
        """With tuning on, the artifact depends on the tuning database: its state joins the compile cache key, so a
        compile after more tuning (here or by another model sharing kernels) is rebuilt, not served stale."""
        from onnxsmith.compilers.tvm.tuning import TuneOptions, database_state

        try:
            enabled = TuneOptions.parse(options).enabled
            return database_state(tvm_target(target)) if enabled else ""
        except Exception:  # bad options or target: compile() reports them properly
            return ""

    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        from onnxsmith.compilers.tvm.frontend import unsupported_ops

        return unsupported_ops(model.proto)

    def dynamic_shapes(self, model: LoadedModel, target: Target) -> Support:
        """Relax symbolic shapes on CPU targets (x86 and cross-compiled aarch64): the ranged dims stay ``tir.Var``s
        with MAX as their upper bound, one library runs every shape in the range. Not on CUDA (dlight's dynamic
        schedules were never run here) and not with MetaSchedule tuning (it tunes static shapes)."""
        if tvm_target(target).kind == "cuda":
            return Support(False, "TVM's CUDA path was never run with symbolic shapes here (no GPU was lent)",
                           "give one shape with --shape NAME=DIMS, or compile the range with tensorrt")
        return Support(True)

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        from onnxsmith.compilers.tvm.frontend import import_model
        from onnxsmith.compilers.tvm.tuning import TuneOptions

        target = request.target
        tune_options = TuneOptions.parse(request.options)
        if request.model.shape_ranges and request.options.get("tune"):
            raise UnsupportedError("TVM cannot tune a shape range", "MetaSchedule tunes kernels for static shapes",
                                   "compile the range untuned, or tune one shape (--shape NAME=DIMS)")
        threads = _int_option(request.options, "threads", request.profile.threads or 0)
        tt = tvm_target(target)
        check_cross_compiler(tt)
        notes = list(tt.notes)
        tvm_target_obj = tt.create()

        imported = import_model(request.model)
        notes += imported.notes
        dynamic = _bound_symbols(imported.mod, request.model) if request.model.shape_ranges else {}
        if dynamic:
            imported = dataclasses.replace(imported, mod=dynamic.pop("mod"))
        mod, metadata = self._prepare(imported.mod, tt, tvm_target_obj, request.precision, notes)
        progress = request.progress  # the CLI's spinner when the core passes one; else plain lines on stderr
        tuning_meta, mod = self._tune(mod, tt, tvm_target_obj, tune_options, target, threads, progress, notes)
        start = time.perf_counter()
        try:
            executable = tvm().compile(mod, target=tvm_target_obj)
        except Exception as exc:
            raise BackendError(f"TVM could not build the model for {target.id}", vendor_why(exc),
                               _build_hint(tt)) from exc
        build_seconds = round(time.perf_counter() - start, 3)
        files = [LIBRARY, IO_FILE]
        if tt.kind == "cuda":
            files.append(self._cuda_kernels(executable, tt, workdir, metadata, notes))
        library = workdir / LIBRARY
        _export(executable, library, tt)
        arch = elf_arch(library)
        if arch != tt.arch:
            raise BackendError("TVM exported a library for the wrong CPU", f"{LIBRARY} is {arch}, the target is {tt.arch}",
                               "check mtriple and cc under [device.tvm]")
        io = {
            "format": 1,
            "entry": "main",
            "inputs": [request.model.input_spec(n).to_json() for n in imported.input_names],
            "model_inputs": [s.to_json() for s in request.model.inputs],
            "outputs": [s.to_json() for s in request.model.outputs if s.name in imported.output_names],
            "device": "cuda" if tt.kind == "cuda" else "cpu",
            "arch": arch,
            "target": dict(tt.spec),
        }
        (workdir / IO_FILE).write_text(json.dumps(io, indent=2) + "\n")
        if tuning_meta.get("records"):
            (workdir / TUNING_FILE).write_text("\n".join(tuning_meta.pop("records")) + "\n")
            files.append(TUNING_FILE)
        tuning_meta.pop("records", None)
        if set(imported.input_names) != {s.name for s in request.model.inputs}:
            unused = sorted({s.name for s in request.model.inputs} - set(imported.input_names))
            notes.append(f"input(s) {', '.join(unused)} do not reach any output; the library does not take them")
        metadata.update({
            "tvm_version": tvm_version(), "tvm_ffi_version": ffi_version(), "target": dict(tt.spec),
            "target_canonical": json.loads(tt.canonical()), "library_arch": arch, "cross_compiled": tt.cross,
            "cc": tt.cc, "onnxslim": imported.slimmed, "onnx_nodes": imported.nodes_before,
            "onnx_nodes_after_slim": imported.nodes_after, "import_seconds": imported.seconds,
            "build_seconds": build_seconds, "library_bytes": library.stat().st_size, **tuning_meta,
        })
        if dynamic:
            metadata["dynamic_shapes"] = {"how": "Relax symbolic shapes (one library for the range)", **dynamic}
        return Artifact(
            backend=self.name, backend_version=self.version(), device=tt.kind, precision=request.precision,
            precision_used=metadata.pop("precision_used"), files=tuple(files),
            options={"target": dict(tt.spec), "cc": tt.cc, "threads": threads, "tune": tune_options.to_json()},
            metadata=metadata, notes=tuple(notes))

    def _prepare(self, mod: Any, tt: TVMTarget, target: Any, precision: str, notes: list[str]) -> tuple[Any, dict]:
        """Inference decompositions, then fp16 for CUDA (matmul/conv in fp16, accumulation and the rest fp32)."""
        relax = tvm().relax
        with target:
            mod = tvm().transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                              relax.transform.CanonicalizeBindings()])(mod)
        metadata: dict[str, Any] = {"precision_used": "fp32"}
        if precision == "fp16":
            mod = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
            fp16, total = _count_fp16_ops(mod)
            metadata.update(fp16_ops=fp16, compute_ops=total)
            if fp16:
                metadata["precision_used"] = "fp16"
                if fp16 < total:
                    notes.append(f"fp16: {fp16} of {total} matmul/conv ops run in fp16 (fp32 accumulation); the "
                                 "others stay fp32")
            else:
                notes.append("fp16 was asked, but TVM's ToMixedPrecision converted no matmul/conv: the model runs fp32")
        return mod, metadata

    def _tune(self, mod: Any, tt: TVMTarget, target_obj: Any, options: Any, target: Target, threads: int,
              progress: Callable[[str], None] | None, notes: list[str]) -> tuple[dict[str, Any], Any]:
        """MetaSchedule when asked; otherwise record that the code is untuned (CPU) or dlight-scheduled (CUDA)."""
        if not options.enabled:
            if tt.kind == "cuda":
                return {"tuning": "untuned", "schedules": "dlight default GPU schedules"}, mod
            notes.append("TVM CPU code is untuned (plain loop nests, typically many times slower than ONNX Runtime): "
                         "compile again with --option tune=1 (budget: tune_trials=N, tune_minutes=M) on the target "
                         "machine; tuning records are kept and reused")
            return {"tuning": "untuned", "schedules": "TVM default (no schedule)"}, mod
        runs = self.runs_here(target)
        if not runs:
            raise UnsupportedError(f"cannot tune for {target.id} on this machine", f"MetaSchedule measures candidates "
                                   f"locally and {runs.reason}", "tune on the device (compile for 'host' there), or "
                                   "compile without --option tune=1")
        from onnxsmith.compilers.tvm.tuning import progress_printer, tune

        relax = tvm().relax
        prepack = tt.kind == "llvm"
        with target_obj:
            mod = relax.pipeline.zero_pipeline()(mod)
            if prepack:
                # Weights are layout-free: MetaSchedule may pick a blocked layout for them (RewriteLayout), which
                # is what makes tuned CPU convolutions competitive; the layout change is folded into the constant
                # weights after tuning, so the library's interface stays the model's.
                mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
        cores = threads or int(tt.spec.get("num-cores", 0)) or (os.cpu_count() or 1)
        result = tune(mod, tt, options, cores, progress_printer(progress))
        if prepack:
            with target_obj:
                result = dataclasses.replace(result, mod=tvm().transform.Sequential([
                    relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
                    relax.transform.FoldConstant()])(result.mod))
        notes += result.notes
        if result.state != "tuned":
            notes.append(f"tuning left {result.tasks - result.tasks_with_records} of {result.tasks} kernels without a "
                         "measured schedule (budget spent or candidates failed): those run untuned; raise "
                         "tune_trials/tune_minutes")
        meta = {"tuning": result.state, "tuning_tasks": result.tasks, "tuning_tasks_with_records":
                result.tasks_with_records, "tuning_trials": result.trials, "tuning_build_errors": result.build_errors,
                "tuning_run_errors": result.run_errors, "tuning_seconds": result.seconds,
                "tuning_database": result.database, "tuning_records_sha256": result.fingerprint,
                "tuning_budget": options.to_json(), "records": list(result.records),
                "schedules": ("MetaSchedule" if result.tasks_with_records else "TVM default (no schedule)")
                + (" + dlight" if tt.kind == "cuda" else "")}
        return meta, result.mod

    def _cuda_kernels(self, executable: Any, tt: TVMTarget, workdir: Path, metadata: dict[str, Any],
                      notes: list[str]) -> str:
        """Write the CUDA kernels beside the library and, where nvcc is installed, check they compile."""
        from onnxsmith.compilers.tvm import cuda

        source = workdir / cuda.KERNELS_FILE
        source.write_text(cuda.kernel_source(executable))
        checked = cuda.check_kernels(source, cuda_sm(tt.spec))
        metadata["cuda_kernels_checked"] = checked or False
        notes.append(cuda.LOAD_NOTE + ("" if checked else "; nvcc is not installed here, so the kernels were not "
                                       "compiled at build time"))
        return cuda.KERNELS_FILE

    def load(self, artifact: Artifact, directory: Path, target: Target) -> TVMRunner:
        from onnxsmith.compilers.tvm.runner import TVMRunner

        io = read_io(directory)
        if io["arch"] != machine_arch():
            raise UnsupportedError(f"the TVM library is for {io['arch']} and this machine is {machine_arch()}",
                                   "a cross-compiled library runs on its device only",
                                   "copy the bundle to the device, or profile there with --rpc HOST:PORT")
        runs = self.runs_here(target)
        if not runs:
            raise UnsupportedError(f"cannot run the TVM artifact for {target.id} here", runs.reason, runs.hint)
        return TVMRunner(directory / LIBRARY, io, int(artifact.options.get("threads", 0) or 0),
                         tuned=artifact.metadata.get("tuning", "untuned"))

    def deploy_programs(self, artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
        from onnxsmith.compilers.tvm.deployment import programs

        return programs(artifact, directory, target)

    def load_remote(self, artifact: Artifact, directory: Path, target: Target, address: str) -> RemoteRunner:
        """Load the artifact on a TVM RPC server (``python -m tvm.exec.rpc_server`` on the device)."""
        from onnxsmith.compilers.tvm.remote import RemoteRunner

        return RemoteRunner(directory / LIBRARY, read_io(directory), address)

    def emulated_device(self, target: Target) -> Any:
        """An aarch64 CPU target runs under qemu-aarch64 through the C RPC server (:mod:`.emulate`) where the Debian
        packages and the aarch64 runtime wheels are present."""
        from onnxsmith.compilers.tvm import emulate
        from onnxsmith.compilers.tvm.targets import tvm_target

        if target.kind != "cpu" or emulate.missing():
            return None
        try:
            if tvm_target(target).arch != "aarch64":
                return None
        except Exception:  # a malformed target file is reported when compiling
            return None
        return emulate.emulated_server()


def elf_arch(path: Path) -> str:
    """The CPU architecture an ELF shared object is for, from its header (``x86_64``, ``aarch64``)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or head[16] != 3:  # ET_DYN: a shared object
        return "not an ELF shared object"
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def _export(executable: Any, library: Path, tt: TVMTarget) -> None:
    try:
        if tt.cc:
            from tvm.support import cc

            executable.export_library(str(library), fcompile=cc.cross_compiler(tt.cc))
        else:
            executable.export_library(str(library))
    except Exception as exc:
        raise BackendError(f"TVM could not link {LIBRARY}", vendor_why(exc),
                           f"check that '{tt.cc or 'g++'}' works" + (" (apt-get install gcc-aarch64-linux-gnu)"
                                                                     if tt.arch == "aarch64" else "")) from exc


def _build_hint(tt: TVMTarget) -> str:
    if tt.kind == "cuda":
        return "TVM compiles CUDA with NVRTC or nvcc: install the CUDA toolkit (nvcc on PATH or CUDA_HOME)"
    return "run 'onnxsmith inspect' and try another --backend; report the model if it is a TVM bug"


def _int_option(options: Any, key: str, default: int) -> int:
    if key not in options:
        return int(default)
    try:
        value = int(options[key])
    except ValueError:
        value = -1
    if value < 0:
        raise UserInputError(f"invalid --option {key}={options[key]}", "expected a non-negative integer")
    return value


def _count_fp16_ops(mod: Any) -> tuple[int, int]:
    """(matmul/conv calls computing in float16, all matmul/conv calls) in ``main``."""
    relax = tvm().relax
    fp16 = total = 0
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call) or not hasattr(value.op, "name"):
                continue
            if not any(k in str(value.op.name) for k in ("matmul", "conv", "dense")):
                continue
            total += 1
            dtypes = {str(getattr(getattr(arg, "ty", None), "dtype", "")) for arg in value.args}
            fp16 += "float16" in dtypes
    return fp16, total


def _cuda_device() -> str:
    """The first CUDA device's name when TVM sees one, else ''."""
    try:
        device = tvm().cuda(0)
        return str(device.device_name) if device.exist else ""
    except Exception:  # no driver, no libcuda
        return ""


def _bound_symbols(mod: Any, model: LoadedModel) -> dict[str, Any]:
    """The symbolic dims of the ranged inputs, each bounded by its MAX (``tir_var_upper_bound``, which Relax's
    memory planning uses to allocate static pools); returns the module as ``mod`` and the bounds applied."""
    bounds: dict[str, int] = {}
    for spec in model.inputs:
        shape_range = model.shape_ranges.get(spec.name)
        if shape_range is None:
            continue
        for dim, high in zip(spec.shape, shape_range.max):
            if isinstance(dim, str):
                bounds[dim] = max(bounds.get(dim, 0), int(high))
    main = mod["main"]
    try:
        mod["main"] = main.with_attr("tir_var_upper_bound", bounds)
    except Exception as exc:  # an older Relax without the attribute: the shapes stay symbolic, just unbounded
        return {"mod": mod, "upper_bounds": {}, "note": f"upper bounds not applied ({vendor_why(exc)})"}
    return {"mod": mod, "upper_bounds": bounds}
