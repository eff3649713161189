"""One error wire across every process boundary (compile child, measuring process): class, message parts, exit
code and a missing dependency's package survive JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxsmith import errors
from onnxsmith.errors import from_wire, to_wire


@pytest.mark.parametrize("cls", [errors.UserInputError, errors.DataError, errors.TargetError, errors.BundleError,
                                 errors.BackendError, errors.UnsupportedError, errors.CheckFailedError])
def test_each_error_class_round_trips_through_json(cls: type[errors.OnnxsmithError]) -> None:
    exc = cls("what failed", "why", "the hint")
    back = from_wire(json.loads(json.dumps(to_wire(exc))))
    assert type(back) is cls and back.exit_code == exc.exit_code and back.one_line() == exc.one_line()


def test_a_plugins_own_error_class_becomes_a_backend_error_with_its_exit_code() -> None:
    class QuotaError(errors.OnnxsmithError):  # a third-party plugin's class, unknown to the parent
        exit_code = 7

    back = from_wire(to_wire(QuotaError("device quota exhausted", "3 of 3 in use")))
    assert isinstance(back, errors.BackendError) and back.exit_code == 7
    assert back.one_line() == "device quota exhausted: 3 of 3 in use."


def test_a_missing_dependency_keeps_its_package() -> None:
    back = from_wire(to_wire(errors.MissingDependencyError("openvino", "openvino")))
    assert type(back) is errors.MissingDependencyError and back.exit_code == 3
    assert back.package == "openvino" and back.extra == "openvino" and "pip install 'onnxsmith[openvino]'" in back.hint


def test_a_fleet_cell_stage_sends_its_error_on_the_same_wire(tmp_path: Path) -> None:
    from onnxsmith.fleet.cells import child_main

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": str(tmp_path / "m.onnx"), "target": "no/such-device", "profile": "quick",
                                   "output": str(tmp_path / "cell")}))
    child_main("compile", str(request), str(tmp_path / "result.json"))
    outcome = json.loads((tmp_path / "result.json").read_text())
    assert outcome["status"] == "error" and "no/such-device" in outcome["message"]
    back = from_wire(outcome["error"])
    assert isinstance(back, errors.UserInputError) and back.exit_code == 2 and back.one_line() == outcome["message"]
