"""Names from a model reach the terminal as text: rich markup in them prints as written (it used to crash
``inspect``), and control characters (ESC, BEL) are shown as escapes instead of reaching the terminal raw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsmith.console import shown
from onnxsmith.errors import UserInputError

HOSTILE_IN = "x[/bold]\x1b[31mred\x07"
HOSTILE_OUT = "[bold red]y\x1b]0;title\x07"


def _model(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", [HOSTILE_IN, "w"], [HOSTILE_OUT])], "g\x1b[2J",
                              [helper.make_tensor_value_info(HOSTILE_IN, TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(HOSTILE_OUT, TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="[/bold]\x1b[5m")
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_inspect_prints_markup_and_control_characters_as_text(tmp_path: Path) -> None:
    model = _model(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", "inspect", str(model)], capture_output=True, text=True,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout, repr(proc.stdout)
    assert "producer [/bold]\\x1b[5m" in proc.stdout, proc.stdout
    assert "x[/bold]\\x1b[31mred\\x07" in proc.stdout, proc.stdout


def test_shown_and_error_lines_escape_what_a_terminal_would_obey() -> None:
    assert shown("a\x1b[2Jb\x07\n[red]") == "a\\x1b[2Jb\\x07\\n\\[red]"
    line = UserInputError("bad name 'x\x1b[31m\x07'", "why", "hint").one_line()
    assert "\x1b" not in line and "\x07" not in line and "\\x1b[31m\\x07" in line


def test_compile_and_run_print_hostile_names_as_text(tmp_path: Path) -> None:
    """The plain summaries (``click.echo``, no rich) go through ``console.printable``: the model's file name and
    its tensor names print with their ESC and BEL as escapes."""
    model = _model(tmp_path / "m\x1b[2J.onnx")
    out = tmp_path / "bundle"
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb", "ONNXSMITH_CACHE_DIR": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", "compile", str(model), "-t", "host", "-b", "onnxruntime",
                           "-o", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr, repr(proc.stdout + proc.stderr)
    assert "compiled m\\x1b[2J for host" in proc.stdout, proc.stdout
    np.savez(tmp_path / "in.npz", **{HOSTILE_IN: np.ones((1, 4), np.float32)})
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", "run", str(out), "--input", str(tmp_path / "in.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout, repr(proc.stdout)
    assert "[bold red]y\\x1b]0;title\\x07:" in proc.stdout, proc.stdout
