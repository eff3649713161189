"""One measuring process per runner kind for all the points of a profile (a shape range's min, opt and max, or a
batch sweep's sizes on one dynamic-batch artifact).

A bundle compiled for a range runs any shape inside it on one loaded runner (the dynamic-shapes contract of every
backend that compiles ranges: OpenVINO bounded dims, ONNX Runtime symbolic dims, TensorRT profiles with
``set_input_shape``, TVM symbolic shapes), so the artifact and the ONNX Runtime baseline are each loaded once and
handed the next point's inputs (the worker's ``feeds`` command) instead of being loaded again per point. A point's
``first_inference_ms`` after the first point is then the first run at that shape on the loaded runner; its
``load_seconds`` is the one load.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxsmith.bundle import Bundle
    from onnxsmith.model import LoadedModel
    from onnxsmith.profiling.environment import LoadWatch
    from onnxsmith.profiling.worker import MeasureWorker


class WorkerPool:
    """Measuring processes kept alive across points, one per kind ('artifact', 'baseline'); closed together."""

    def __init__(self, watch: LoadWatch | None = None) -> None:
        self.watch = watch
        self.workers: dict[str, MeasureWorker] = {}
        self.loads = 0
        """How many measuring processes loaded a runner (one per kind however many points)."""

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def use(self, kind: str, bundle: Bundle, feeds_path: Path, batch: int, remote: str | None = None,
            timeout: float = 600.0) -> Iterator[MeasureWorker]:
        """The ``kind`` worker holding these feeds: started (and loaded) on first use, else switched to them.
        Leaving the block keeps it alive for the next point."""
        from onnxsmith.profiling.worker import MeasureWorker

        worker = self.workers.get(kind)
        if worker is None:
            worker = MeasureWorker(kind, bundle, feeds_path, batch, remote, timeout=timeout)
            self.workers[kind] = worker
            self.loads += 1
            if self.watch is not None:
                self.watch.track(worker.proc.pid)
        else:
            worker.use_feeds(feeds_path, batch)
        yield worker

    def close(self) -> None:
        for kind in list(self.workers):
            worker = self.workers.pop(kind)
            if self.watch is not None:
                self.watch.untrack(worker.proc.pid)  # while its /proc entry is still there
            worker.close()


def reference_model(path: Path) -> LoadedModel:
    """The bundle's reference model as loaded for generated inputs: parsed once per file version, not per point."""
    stat = Path(path).stat()
    return _reference(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _reference(path: str, mtime_ns: int, size: int) -> Any:
    from onnxsmith.model import load_model

    return load_model(path, check=False)
