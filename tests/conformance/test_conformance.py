"""The ONNX backend node tests, raw vs through onnxsmith: onnxsmith passes every case the backend library passes.

The default suite runs a fixed sample (:data:`~tests.conformance.cases.SAMPLE`: the cases issue 10 found lost —
parameters as inputs, scalars, empty dims — and common ops; :data:`~tests.conformance.cases.STRUCTURED_SAMPLE`:
strings, sequences and optionals); ``-m conformance`` runs every case.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.conformance.cases import SAMPLE, STRUCTURED_SAMPLE, TVM_SAMPLE, all_cases
from tests.conformance.run import lost_cases, summary
from tests.conformance.runner import run_cases


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _check(names: tuple[str, ...] | list[str], backend: str, min_raw: int) -> None:
    results = run_cases(names, [backend], timeout=120)
    raw = sum(r.passed for r in results if r.mode == "raw")
    ours = sum(r.passed for r in results if r.mode == "onnxsmith")
    report = summary(results)
    assert raw >= min_raw, f"the raw backend passes only {raw} of {len(names)}: the sample no longer tests much\n{report}"
    assert not lost_cases(results), report
    assert ours >= raw, report


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sample_passes_everything_the_backend_passes(backend: str) -> None:
    _need(backend)
    _check(SAMPLE, backend, min_raw=len(SAMPLE) - 3)


def test_strings_and_sequences_pass_through_onnxruntime() -> None:
    _need("onnxruntime")
    _check(STRUCTURED_SAMPLE, "onnxruntime", min_raw=len(STRUCTURED_SAMPLE))


@pytest.mark.parametrize("backend", ["openvino", "tvm"])
def test_other_backends_refuse_strings_and_sequences_before_compiling(backend: str) -> None:
    _need(backend)
    results = run_cases(["test_equal_string", "test_sequence_insert_at_back"], [backend], modes=("onnxsmith",))
    for r in results:
        assert r.status == "error" and "compile: exit 5" in r.reason and "cannot take input" in r.reason, r


def test_tvm_sample_passes_everything_tvm_passes() -> None:
    _need("tvm")
    _check(TVM_SAMPLE, "tvm", min_raw=len(TVM_SAMPLE))


@pytest.mark.conformance
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tvm"])
def test_all_node_tests(backend: str) -> None:
    _need(backend)
    _check(all_cases(), backend, min_raw=1)
