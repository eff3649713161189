"""profile on a shape-range bundle: min, opt and max measured on one loaded artifact and one loaded baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxsmith.profiling import worker as profiling
from tests.cli.test_cli import cli
from tests.models import make_cnn


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_range_points_share_one_load_per_runner(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    model = tmp_path / "cnn-dyn.onnx"
    onnx.save_model(make_cnn(batch="N"), str(model))
    bundle = tmp_path / "b"
    code, out, err = cli(["compile", str(model), "-b", backend, "--shape", "input=1x3x16x16:4x3x16x16:16x3x16x16",
                          "-o", str(bundle), "--json"], capsys)
    assert code == 0, err
    started: list[tuple[str, int]] = []
    real_init = profiling.MeasureWorker.__init__

    def counting_init(self: profiling.MeasureWorker, kind: str, *args: object, **kwargs: object) -> None:
        real_init(self, kind, *args, **kwargs)  # type: ignore[arg-type]
        started.append((kind, self.proc.pid))

    monkeypatch.setattr(profiling.MeasureWorker, "__init__", counting_init)
    np.savez(tmp_path / "x.npz", input=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    for extra in ([], ["--input", str(tmp_path / "x.npz")]):
        started.clear()
        code, out, err = cli(["profile", str(bundle), "-p", "quick", "--iterations", "3", "--seconds", "0", *extra,
                              "--json"], capsys)
        assert code == 0, err
        record = json.loads(out)
        # was 6 processes (each point loaded the artifact and ONNX Runtime again)
        assert sorted(kind for kind, _ in started) == ["artifact", "baseline"]
        assert [(p["point"], p["batch"]) for p in record["shapes"]] == [("min", 1), ("opt", 4), ("max", 16)]
        assert all(p["latency_ms"]["p50"] > 0 and p["baseline_latency_ms"]["p50"] > 0 for p in record["shapes"])
        assert record["comparison"]["point"] == "opt" and record["batch"] == 4
        assert record["environment"]["other_processes_cpu_share"] is not None


def test_profile_rpc_is_refused_before_any_process_for_a_backend_without_a_remote_runner(
        bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime declares no remote runner (``Compiler.remote_profiling``): one line, exit 5, nothing started."""
    from tests.cli.test_cli import cli

    code, _, err = cli(["profile", str(bundle), "--rpc", "127.0.0.1:9"], capsys)
    assert code == 5 and "cannot profile remotely" in err and len(err.strip().splitlines()) == 1, err
