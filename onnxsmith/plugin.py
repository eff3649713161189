"""The backend plugin contract: two base classes, :class:`Compiler` and :class:`Runner`.

A backend is one folder under ``compilers/`` (or a third-party package) with a :class:`Compiler` subclass,
registered under the ``onnxsmith.compilers`` entry-point group (the entry-point name must equal ``name``)::

    [project.entry-points."onnxsmith.compilers"]
    openvino = "onnxsmith.compilers.openvino:OpenVINOCompiler"

The core owns timing, validation, caching, bundles and reports; a backend only compiles an ONNX file into artifact
files and loads those files into a :class:`Runner`. Required methods raise ``NotImplementedError`` here; optional
hooks are ordinary methods with documented defaults. A subclass that defines a public name the contract does not
know (a misspelt hook such as ``cache_tokn``) is refused when it is defined, so a typo can never silently fall back
to a default. Backend modules import their vendor library inside methods (:meth:`Compiler.vendor_import`), never at
module top level.

What the core has checked before it calls :meth:`Compiler.compile`, so a backend need not check again: the backend
is installed (:meth:`~Compiler.check_environment`) and :meth:`~Compiler.supports` the target; the precision is one of
the target's and of :meth:`~Compiler.precisions`; calibration data is present when :meth:`~Compiler.needs_calibration`;
:meth:`~Compiler.unsupported_ops` is empty; the model's inputs are static, except the dims of
``request.model.shape_ranges`` (``--shape NAME=MIN:OPT:MAX``, ``--batch``), which only reach a backend whose
:meth:`~Compiler.dynamic_shapes` says yes; every input and output is a numeric tensor or of a kind in
:attr:`~Compiler.value_types`; ``request.options`` holds only declared
options (:attr:`Compiler.options`), each parsed to its declared type.

Errors: raise :mod:`onnxsmith.errors` exceptions (``UserInputError`` exit 2, ``MissingDependencyError`` 3,
``BackendError`` 4, ``UnsupportedError`` 5). Any other exception escaping ``compile``, ``load`` or a runner's ``run``
becomes a ``BackendError`` naming the backend (exit 4), with the original as ``__cause__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
import contextlib
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from onnxsmith.precisions import PRECISIONS  # noqa: F401 (re-exported: the plugin contract names it)

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.options import Option

    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel, TensorSpec
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target


@dataclasses.dataclass(frozen=True)
class Support:
    """Whether something is possible, and if not, why and what to do."""

    ok: bool
    reason: str = ""
    hint: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclasses.dataclass(frozen=True)
class CompileRequest:
    """Everything a backend needs to compile one model for one target."""

    model: LoadedModel
    target: Target
    precision: str
    profile: Profile
    calibration: Dataset | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Backend options given with ``--option KEY=VALUE``, checked against :attr:`Compiler.options` and parsed to
    their declared types by the core (:func:`onnxsmith.options.parse_backend_options`)."""
    progress: Callable[[str], None] | None = dataclasses.field(default=None, compare=False, repr=False)
    """Where a long stage (calibration, tuning) reports what it is doing: the CLI's spinner, or ``None``."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What a backend produced: files in its work directory plus what is needed to load them again."""

    backend: str
    backend_version: str
    device: str
    """The backend's device string, e.g. ``CPU`` (OpenVINO), ``llvm`` (TVM), ``cuda:0``."""
    precision: str
    """The precision that was requested (one of :data:`PRECISIONS`)."""
    precision_used: str
    """What the compiled artifact really computes in, as read back from the backend
    (e.g. ``fp32``, ``bf16``, ``int8+bf16``): never just the request echoed."""
    files: tuple[str, ...]
    """Paths relative to the work directory; the first is the main artifact file."""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Backend settings that were actually applied (hints, streams, threads...)."""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """JSON-serialisable facts worth keeping in the manifest (quantization stats, tuning state...)."""
    notes: tuple[str, ...] = ()
    """Warnings for the report: fallbacks, precision differences, untuned code..."""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["files"] = list(self.files)
        data["notes"] = list(self.notes)
        data["options"] = dict(self.options)
        data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["files"] = tuple(values.get("files", ()))
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class LayerTime:
    """One layer's time from the backend's own per-layer profiler."""

    name: str
    op_type: str
    time_ms: float
    exec_type: str = ""
    """The kernel or implementation the backend chose (e.g. ``jit_avx512_FP32``)."""
    precision: str = ""
    """The precision the layer really computed in, as the backend reports it (``int8``, ``bf16``, ``fp16``,
    ``fp32``; see :data:`onnxsmith.profiling.measure.LAYER_PRECISIONS`); ``""`` when it does not say."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ladder step a backend proposes for a precision: the options to compile with and what changes."""

    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    change: str = ""
    """Words for the evidence card, e.g. ``NNCF, same calibration set``."""


@dataclasses.dataclass(frozen=True)
class DeployProgram:
    """A minimal program that loads the artifact with the backend's own runtime (``BUNDLE/deploy/<folder>/``),
    rendered by :mod:`onnxsmith.deploy` from the files in ``templates``: a ``NAME.in`` file is written as ``NAME``
    with its ``@@NAME@@`` placeholders replaced by ``variables`` and by the core's own (inputs, outputs, title);
    any other file is copied as it is. C++ programs also get the shared ``deploy.hpp``."""

    language: str
    """``C++``, ``Python``, ``Swift``."""
    folder: str
    templates: Path
    loads: tuple[str, ...]
    """The artifact files it opens (names under ``artifact/``)."""
    build: tuple[str, ...] = ()
    """Shell commands that build it, run in its folder (none for scripts)."""
    run: tuple[str, ...] = ()
    """Shell commands that run it on the bundle's example input, in its folder."""
    checked: str = ""
    """What onnxsmith's own tests do with it here, or why they cannot (the deploy README quotes it)."""
    variables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Placeholder values: a ``CPP_``, ``PY_`` or ``SWIFT_`` name holds a literal made by
    :mod:`onnxsmith.deploy.quoting`; any other, plain text only (:func:`onnxsmith.deploy.quoting.text`)."""
    inputs: tuple[TensorSpec, ...] | None = None
    """The inputs it takes, in order (default: the bundle's)."""


@dataclasses.dataclass(frozen=True)
class TritonModel:
    """How Triton Inference Server serves the artifact natively: ``platform`` or ``backend`` and the files of its
    version folder (name in the folder -> artifact file)."""

    field: str
    """``platform`` or ``backend``."""
    value: str
    """e.g. ``onnxruntime_onnx``, ``openvino``, ``tensorrt_plan``."""
    files: Mapping[str, str]
    parameters: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Emulation:
    """What a runner that is not the vendor's runtime computes (see :meth:`Compiler.load_emulated`)."""

    label: str
    """One line for reports, e.g. ``MIL program evaluated on Linux, not Core ML's kernels``."""
    checked: tuple[str, ...] = ()
    """What a comparison through this runner does check (the converted program's ops, weights, precision)."""
    not_checked: tuple[str, ...] = ()
    """What it cannot (the vendor's kernels, their arithmetic, timings)."""

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "checked": list(self.checked), "not_checked": list(self.not_checked)}


_RUNNER_NAMES = frozenset({"inputs", "outputs", "device_name", "emulation", "run", "bind", "parallel_throughput",
                           "layer_profile", "device_latencies_ms", "vendor_timing", "close"})
_COMPILER_NAMES = frozenset({"name", "extra", "install_hint", "artifact_kind", "options", "check_environment",
                             "version", "devices", "supports", "runs_here", "precisions", "unsupported_ops",
                             "needs_calibration", "cache_token", "compile", "load", "load_emulated", "load_remote",
                             "ladder_variants", "runtime_knobs",
                             "onnx_pass_precisions", "slow_artifact_advice", "portable_across_versions",
                             "dynamic_shapes", "load_layers", "keep_fp32_option", "deploy_programs", "triton_model",
                             "ovms_model",
                             "max_opset", "builds_on_device", "emulated_device", "vendor_import",
                             "install_command", "value_types", "remote_profiling", "exposes_layers"})


def _check_names(cls: type, known: frozenset[str], kind: str) -> None:
    unknown = sorted(n for n in vars(cls) if not n.startswith("_") and n not in known)
    if unknown:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} defines {', '.join(map(repr, unknown))}, which the "
                        f"{kind} contract does not know (a misspelt hook would silently never be called); rename "
                        f"helpers with a leading underscore. Known names: {', '.join(sorted(known))}")


class Runner:
    """A loaded artifact, ready to run; used as a context manager (``__exit__`` calls :meth:`close`).

    Required: :attr:`inputs`, :attr:`outputs`, :meth:`run`. Everything else has a default."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    device_name: str | None = None
    """The device it really runs on, as the runtime names it (e.g. the CPU's brand string), when known."""
    emulation: Emulation | None = None
    """Set by runners from :meth:`Compiler.load_emulated` (not the vendor's runtime): what their outputs mean."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_names(cls, _RUNNER_NAMES, "Runner")

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the runtime's resources (default: nothing to release)."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; outputs keyed by the model's output names."""
        raise NotImplementedError

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Bind inputs once and return a call that runs one inference and waits for it.

        The profiler times this call, so it must do the work a deployed application does per request and no
        more (no input conversion, no output copies beyond what the runtime needs). Default: ``run(feeds)``."""
        def call() -> None:
            self.run(feeds)

        return call

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        """Inferences per second with the backend's own parallel requests/streams, and the number of requests
        used; ``None`` (default) when the backend has no parallel execution."""
        return None

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        """Per-layer timings from the backend's profiler for one inference; ``None`` (default) when it has none."""
        return None

    def device_latencies_ms(self, feeds: Mapping[str, np.ndarray], iterations: int) -> list[float] | None:
        """Latencies timed on a remote device itself (RPC runners); ``None`` (default) for local runners."""
        return None

    def vendor_timing(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
        """The runtime's own measurement, made the way its vendor's benchmark tool makes it (TensorRT: trtexec's
        GPU compute time on CUDA events, H2D/D2H, host latency), JSON-ready with a ``method`` line saying which
        tool's defaults it matches; reported beside onnxsmith's host timing, never instead of it. ``None``
        (default) when the backend has none."""
        return None


class Compiler:
    """What every backend implements. Instances are cheap: constructing one imports no vendor library, and the
    constructor takes no arguments.

    Required: :attr:`name`, :attr:`artifact_kind`, :meth:`check_environment`, :meth:`version`, :meth:`devices`,
    :meth:`supports`, :meth:`runs_here`, :meth:`precisions`, :meth:`compile`, :meth:`load`. Everything else is an
    optional hook with a default."""

    name: ClassVar[str] = ""
    """Backend id, the same everywhere (and equal to the entry-point name)."""
    extra: ClassVar[str] = ""
    """For backends shipped with onnxsmith: the pip extra that installs the vendor library."""
    install_hint: ClassVar[str] = ""
    """For third-party backends: how to install what is missing (e.g. ``pip install my-backend``)."""
    artifact_kind: ClassVar[str] = ""
    """What the artifact is, for manifests: e.g. ``OpenVINO IR + compiled blob``."""
    options: ClassVar[tuple[Option, ...]] = ()
    """The ``--option KEY=VALUE`` settings this backend takes (see :class:`onnxsmith.options.Option`)."""
    value_types: ClassVar[frozenset[str]] = frozenset()
    """What the backend takes as model inputs and outputs besides numeric tensors: ``string`` (string tensors,
    fed as numpy text arrays), ``sequence``, ``optional``. The core refuses a model needing anything else before
    :meth:`compile` is called. Default: numeric tensors only."""
    remote_profiling: ClassVar[bool] = False
    """True when :meth:`load_remote` is implemented (``profile --rpc``); the core refuses ``--rpc`` for others
    before any process starts."""
    exposes_layers: ClassVar[bool] = False
    """True when :meth:`load_layers` is implemented (the backend exposes per-layer tensors itself); ``debug diverge``
    names these backends."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_names(cls, _COMPILER_NAMES, "Compiler")
        names = [o.name for o in cls.options]
        if len(set(names)) != len(names):
            raise TypeError(f"{cls.__qualname__}.options declares an option twice: {names}")

    # --- required ---------------------------------------------------------------------------------------------
    def check_environment(self) -> None:
        """Raise :class:`MissingDependencyError` (or :class:`UnsupportedError`) when unusable here."""
        raise NotImplementedError

    def version(self) -> str:
        """Part of every cache key and checked when a bundle is loaded: the vendor library's version, and the
        plugin's own version for third-party plugins (e.g. ``"2.1+myplugin-0.3"``), or a changed plugin would be
        served stale cache entries."""
        raise NotImplementedError

    def devices(self) -> list[str]:
        """Devices this backend can run on, on this machine (e.g. ``["CPU"]``)."""
        raise NotImplementedError

    def supports(self, target: Target) -> Support:
        """Whether this backend can compile for ``target`` at all (not whether it can run here)."""
        raise NotImplementedError

    def runs_here(self, target: Target) -> Support:
        """Whether an artifact for ``target`` can be loaded and run on this machine."""
        raise NotImplementedError

    def precisions(self, target: Target) -> tuple[str, ...]:
        """Precisions this backend offers for ``target``."""
        raise NotImplementedError

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        """Compile ``request.model`` (read it from ``request.model.path``) into files under ``workdir``, an empty
        private directory. The module docstring lists what the core checked before this call."""
        raise NotImplementedError

    def load(self, artifact: Artifact, directory: Path, target: Target) -> Runner:
        """Load an artifact: ``directory`` is the bundle's ``artifact/`` folder holding exactly
        ``artifact.files`` (checksums verified by the core before this call)."""
        raise NotImplementedError

    # --- optional hooks -----------------------------------------------------------------------------------------
    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        """Op type -> node names this backend cannot convert. Default: none."""
        return {}

    def needs_calibration(self, precision: str, model: LoadedModel) -> bool:
        """Whether compiling ``precision`` needs calibration data. Default: int8 does."""
        return precision == "int8"

    def cache_token(self, target: Target, options: Mapping[str, Any]) -> str:
        """State outside the request that changes the artifact (e.g. a tuning database); it joins the compile cache
        key. Default: none."""
        return ""

    def load_remote(self, artifact: Artifact, directory: Path, target: Target, address: str) -> Runner:
        """Load the artifact on a remote device (``onnxsmith profile --rpc``). Default: not possible."""
        from onnxsmith.errors import UnsupportedError

        raise UnsupportedError(f"backend '{self.name}' cannot profile remotely", "it has no RPC runner",
                               "profile on the device itself")

    def load_emulated(self, artifact: Artifact, directory: Path, target: Target) -> Runner | None:
        """A runner that computes the artifact's own program on this machine without the vendor's runtime, for
        ``validate`` where :meth:`runs_here` is false (Core ML's MIL program evaluated with numpy on Linux). Its
        :attr:`Runner.emulation` says what a comparison through it checks and what it does not; it is never
        profiled. Raise :class:`~onnxsmith.errors.UnsupportedError` saying why when this artifact cannot be
        evaluated. Default: ``None`` (no such runner)."""
        return None

    def ladder_variants(self, target: Target, precision: str) -> list[Variant]:
        """The steps ``optimize`` tries for ``precision`` with this backend. Default: one, with no options."""
        return [Variant()]

    def runtime_knobs(self, target: Target, profile: Profile, options: Mapping[str, Any]) -> list[Variant]:
        """Runtime settings ``optimize`` tries as ladder steps on this backend's best artifact, one change each
        (threads, streams, performance hint, graph optimization level...), chosen for the profile's objective
        (``profile.performance_hint``); ``options`` are the ones that artifact was compiled with. Each variant's
        options must be declared in :attr:`options`. A knob is kept only if its step wins significantly.
        Default: none."""
        return []

    def onnx_pass_precisions(self, target: Target) -> dict[str, str]:
        """Precisions this backend reaches by running an ONNX graph an onnxsmith pass transformed, not natively:
        precision -> pass name (``fp16``, ``int8_qdq``). Default: none."""
        return {}

    def load_layers(self, artifact: Artifact, directory: Path, target: Target, tensors: list[str]) -> Runner | None:
        """Load the artifact with the named tensors of the reference ONNX exposed as extra outputs, the backend's
        own way (``onnxsmith debug diverge``): its runner's ``run()`` returns them beside the model's outputs,
        keyed by the ONNX tensor names; tensors it cannot expose (fused away) are simply absent. Default ``None``:
        the core then compiles the reference ONNX again with the extra outputs, where that gives the same
        artifact (compiled from the reference itself, no calibration)."""
        return None

    def keep_fp32_option(self, target: Target) -> str | None:
        """The declared option (a ``list``) that keeps the named ONNX nodes out of int8 quantization (a mixed-
        precision keep-list: NNCF ignored scope, Q/DQ omission, op selectors), or ``None`` (default) when the
        backend has none. Backends whose int8 is an onnxsmith ONNX pass get the keep-list through that pass."""
        return None

    def slow_artifact_advice(self, artifact: Artifact) -> str:
        """What to do when this artifact is slower than the ONNX Runtime baseline (e.g. tune it). Default: none."""
        return ""

    def dynamic_shapes(self, model: LoadedModel, target: Target) -> Support:
        """Whether this backend compiles ``model.shape_ranges`` (inputs kept dynamic between MIN and MAX, tuned for
        OPT) into one artifact for ``target`` whose runner takes any shape in the range. The core asks before
        compiling a model with ranges and refuses with the reason when the answer is no. Default: no."""
        return Support(False, f"backend '{self.name}' compiles fixed shapes only",
                       "give one shape (--shape NAME=DIMS), or use a backend that compiles ranges "
                       "(the README's dynamic-shapes section lists them)")

    def max_opset(self, target: Target) -> int | None:
        """The newest ONNX opset this backend's importer reads for ``target``; PyTorch models are exported at
        or below it (:func:`onnxsmith.torchin.export.choose_opset`). Default: ``None``, any opset onnx knows."""
        return None

    def portable_across_versions(self, artifact: Artifact) -> bool:
        """Whether an artifact built by another version of the vendor library still loads. Default: no."""
        return False

    def deploy_programs(self, artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
        """The deployment programs written into ``BUNDLE/deploy/`` (``directory`` holds the artifact's files).
        Default: none."""
        return []

    def triton_model(self, artifact: Artifact, target: Target) -> TritonModel | None:
        """How Triton serves the artifact natively; ``None`` (default): through Triton's Python backend."""
        return None

    def ovms_model(self, artifact: Artifact, target: Target) -> tuple[str, ...]:
        """The artifact files OpenVINO Model Server loads as a model version (``BUNDLE/serving/ovms/``); empty
        (default): OVMS cannot serve this artifact kind."""
        return ()

    def builds_on_device(self, target: Target) -> bool:
        """Whether an artifact for ``target`` must be built on the device itself (a TensorRT engine is specific to
        the GPU and TensorRT version), so a fleet compiles it where it profiles it. Default: no (it cross-builds)."""
        return False

    def emulated_device(self, target: Target) -> contextlib.AbstractContextManager[str] | None:
        """A context manager that starts an emulator of ``target``'s device on 127.0.0.1 and yields the address
        :meth:`load_remote` takes, or None when this backend has none here (its timings mean nothing: a fleet labels
        them emulated and never ranks them). Default: none."""
        return None

    # --- helpers ------------------------------------------------------------------------------------------------
    def install_command(self) -> str:
        """How to install what this backend needs: :attr:`install_hint`, else the onnxsmith extra."""
        if self.install_hint:
            return self.install_hint
        return f"pip install 'onnxsmith[{self.extra}]'" if self.extra else "pip install onnxsmith"

    def vendor_import(self, module: str, package: str | None = None, why: str = "") -> Any:
        """Import a vendor module lazily; a missing one raises :class:`MissingDependencyError` with this backend's
        install hint."""
        from onnxsmith.errors import MissingDependencyError

        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(package or module.split(".")[0], self.extra or self.name,
                                         why or f"the '{self.name}' backend needs it",
                                         hint=self.install_command()) from exc


@contextlib.contextmanager
def backend_call(backend: str, what: str) -> Iterator[None]:
    """Run a call into a backend: onnxsmith errors pass through; anything else (a vendor or plugin exception)
    becomes a :class:`BackendError` naming the backend, with the original as ``__cause__``."""
    from onnxsmith.errors import BackendError, OnnxsmithError, first_line

    try:
        yield
    except (OnnxsmithError, KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:
        raise BackendError(f"backend '{backend}' failed to {what}", f"{type(exc).__name__}: {first_line(exc)}",
                           "run with --debug for the traceback; report it to the backend's authors") from exc
