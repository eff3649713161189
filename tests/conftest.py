"""Shared fixtures: small ONNX models built with onnx.helper, an isolated cache, a CLI runner."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest

from tests.models import make_cnn, make_mlp


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test session gets its own cache directory; tests never touch ~/.cache."""
    root = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(root))
    # 'compile -t host' without --backend takes the host's listed order in tests, so each test gets the backend it
    # was written for; tests/test_host_pick.py measures the pick itself.
    monkeypatch.setenv("ONNXSMITH_HOST_PICK", "listed")
    return root


@pytest.fixture
def cnn_path(tmp_path: Path) -> Path:
    """A tiny image classifier: 1x3x16x16 -> 1x10 (Conv, Relu, MaxPool, Gemm, Softmax)."""
    path = tmp_path / "cnn.onnx"
    onnx.save_model(make_cnn(), str(path))
    return path


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    """A dynamic-batch MLP: Nx32 -> Nx10."""
    path = tmp_path / "mlp.onnx"
    onnx.save_model(make_mlp(), str(path))
    return path


@pytest.fixture
def bundle(cnn_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """``cnn_path`` compiled through the CLI with onnxruntime: a bundle folder (``tmp_path/bundle``)."""
    from tests.cli.test_cli import cli

    out = tmp_path / "bundle"
    code, _, err = cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(out)], capsys)
    assert code == 0, err
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test that needs an optional extra which is not installed skips, naming it, instead of erroring: only when
    the package really cannot be imported here (a MissingDependencyError for an installed package still fails)."""
    from onnxsmith.errors import MissingDependencyError

    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    name = None
    if isinstance(error, MissingDependencyError):
        name = error.package.split()[0]
    elif isinstance(error, ModuleNotFoundError):
        name = error.name
    module = {"apache-tvm": "tvm", "pillow": "PIL", "cuda-python": "cuda"}.get(name or "", name or "")
    if name and module and importlib.util.find_spec(module.split(".")[0]) is None:
        outcome.force_exception(pytest.skip.Exception(f"optional dependency {name} is not installed",
                                                      _use_item_location=True))
