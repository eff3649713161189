"""The backend plugin contract.

A backend is one folder under ``compilers/`` (or a third-party package) that exposes a class implementing
:class:`Compiler`, registered under the ``onnxsmith.compilers`` entry-point group::

    [project.entry-points."onnxsmith.compilers"]
    openvino = "onnxsmith.compilers.openvino:OpenVINOCompiler"

The core owns timing, validation, caching, bundles and reports; a backend only compiles an ONNX file into
artifact files and loads those files into a :class:`Runner`. Backend modules import their vendor library
inside methods, never at module top level, and raise :class:`~onnxsmith.errors.MissingDependencyError` when
it is absent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.data import Dataset
    from onnxsmith.model import LoadedModel, TensorSpec
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


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
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Backend options given with ``--option KEY=VALUE``; backends reject keys they do not know."""
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


@runtime_checkable
class Runner(Protocol):
    """A loaded artifact, ready to run. Used as a context manager."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; outputs keyed by the model's output names."""
        ...

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Bind inputs once and return a call that runs one inference and waits for it.

        The profiler times this call, so it must do the work a deployed application does per request and no
        more (no input conversion, no output copies beyond what the runtime needs)."""
        ...

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        """Inferences per second with the backend's own parallel requests/streams, and the number of requests
        used; ``None`` when the backend has no parallel execution."""
        ...

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        """Per-layer timings from the backend's profiler for one inference, or ``None``."""
        ...


class Compiler(Protocol):
    """What every backend implements. Instances are cheap: constructing one imports no vendor library."""

    name: str
    """Backend id, the same everywhere: ``openvino``, ``tvm``, ``tensorrt``, ``coreml``, ``onnxruntime``."""
    extra: str
    """The pip extra that installs the vendor library: ``pip install 'onnxsmith[<extra>]'``."""
    artifact_kind: str
    """What the artifact is, for manifests: e.g. ``OpenVINO IR + compiled blob``."""

    def check_environment(self) -> None:
        """Raise :class:`MissingDependencyError` (or :class:`UnsupportedError`) when unusable here."""
        ...

    def version(self) -> str:
        """The vendor library's version; part of every cache key and checked when a bundle is loaded."""
        ...

    def devices(self) -> list[str]:
        """Devices this backend can run on, on this machine (e.g. ``["CPU"]``)."""
        ...

    def supports(self, target: Target) -> Support:
        """Whether this backend can compile for ``target`` at all (not whether it can run here)."""
        ...

    def runs_here(self, target: Target) -> Support:
        """Whether an artifact for ``target`` can be loaded and run on this machine."""
        ...

    def precisions(self, target: Target) -> tuple[str, ...]:
        """Precisions this backend offers for ``target``."""
        ...

    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        """Op type -> node names this backend cannot convert (empty when all convert)."""
        ...

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        """Compile ``request.model`` into files under ``workdir`` (an empty directory).

        Optional extras the core uses when a backend defines them: ``needs_calibration(precision, model) -> bool``
        (default: int8 needs calibration data), ``load_remote(artifact, directory, target, address) -> Runner``
        (``onnxsmith profile --rpc``) and ``cache_token(target, options) -> str`` (state outside the request that
        changes the artifact, such as a tuning database; it joins the compile cache key)."""
        ...

    def load(self, artifact: Artifact, directory: Path, target: Target) -> Runner:
        """Load an artifact previously written under ``directory``."""
        ...
