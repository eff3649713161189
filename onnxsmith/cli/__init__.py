"""The ``onnxsmith`` command line. Each verb lives in its own module, imported only when it runs.

The CLI only turns arguments into a call of a documented library function; errors become one line on stderr
and an exit code (see :mod:`onnxsmith.errors`); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import click

import onnxsmith

# verb -> (module, function, one-line help); kept here so `--help` imports no command module.
COMMANDS = {
    "compile": ("compile", "compile_command", "Compile an ONNX model for a target into a bundle."),
    "profile": ("profile", "profile_command", "Measure a bundle's latency, throughput and memory beside ONNX Runtime."),
    "validate": ("validate", "validate_command", "Compare a bundle's outputs with ONNX Runtime fp32 on real inputs."),
    "run": ("run", "run_command", "Run a bundle on inputs from an .npz and save the outputs."),
    "export": ("export", "export_command", "Export a PyTorch model to ONNX, checked against eager PyTorch."),
    "distill": ("distill", "distill_command", "Train a smaller PyTorch student on a teacher's outputs; export it."),
    "inspect": ("inspect", "inspect_command", "Show a model's inputs, ops, parameters, FLOPs and backend support."),
    "optimize": ("optimize", "optimize_command", "Walk the optimization ladder and keep the best measured artifact."),
    "serving": ("serving", "serving_command", "Write a bundle's serving configuration (Triton, OVMS) from measurements."),
    "serve-check": ("serving", "serve_check_command", "Serve a bundle with a real Triton server and compare with the simulation."),
    "compare": ("compare", "compare_command", "Compile, profile and validate a model for many targets; one table."),
    "worker": ("worker", "worker_command", "Start a Ray worker node that offers this machine's backends and devices."),
    "probe": ("probe", "probe_command", "Measure this device's peak GEMM throughput and memory bandwidth."),
    "targets": ("targets", "targets_group", "List the hardware catalogue, or show one target."),
    "profiles": ("targets", "profiles_command", "List the optimization presets."),
    "doctor": ("doctor", "doctor_command", "Show which backends and devices are usable here, and why not."),
    "verify": ("verify", "verify_command", "Check that every file of a bundle matches its seal (exit 6 if not)."),
    "debug": ("debug", "debug_group", "Find the layer that broke: per-layer divergence, int8 sensitivity."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"onnxsmith.cli.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, _, help_text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(onnxsmith.__version__, prog_name="onnxsmith")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """onnxsmith: compile an ONNX model for a named hardware target, profile it and validate it.

    \b
    Exit codes: 0 ok, 1 internal error, 2 bad input, 3 missing dependency,
    4 backend failure, 5 unsupported here, 6 check failed.
    """
    ctx.obj = {"debug": debug}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` (private build dirs, model copies in
    ``$TMPDIR``, measuring and compiling child processes) cleans up as it does on Ctrl-C."""


_HELD: dict[int, float] = {}  # signal -> when it was first held back
HOLD_S = 10.0
"""How long a signal waits for an import to finish; after that it is raised anyway (an import that hangs)."""


def _importing(signum: int, frame: FrameType | None) -> bool:
    """Whether the interrupted code is inside an import (the import machinery is on the stack) and the signal has
    not waited :data:`HOLD_S` yet."""
    first = _HELD.setdefault(signum, time.monotonic())
    if time.monotonic() - first > HOLD_S:
        _HELD.pop(signum, None)
        return False
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    _HELD.pop(signum, None)
    return False


def _held(signum: int, frame: FrameType | None) -> bool:
    """Whether the signal is held back for an import; if so it is sent to this process again in 50 ms (the handler
    then runs again, outside the import)."""
    if not _importing(signum, frame):
        return False
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
    return True


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C, held back while a module imports: raised inside a vendor extension's initialisation it becomes an
    ImportError ("onnxruntime is not installed", exit 5), a C++ ``std::terminate`` from pybind11 (SIGABRT) or an
    exit by SIGINT after our own exit 130 (each seen when 'debug precision' was interrupted as torch imported)."""
    if not _held(signum, frame):
        raise KeyboardInterrupt


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if not _held(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map errors to one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored or someone else's
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _on_sigint)
    try:
        _main(args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _forget_interrupt() -> None:
    """Exit with 130 after a handled Ctrl-C, not by the signal: CPython ends the process by SIGINT after
    ``sys.exit(130)`` when a KeyboardInterrupt once left code it ran through ``PyRun_String`` (a flag that outlives
    the catch; 3 of 80 interrupted 'debug precision' runs exited -2 before this). Running one empty statement
    through the same C API resets the flag."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.pythonapi.PyRun_SimpleString(b"")


def _main(args: list[str]) -> None:
    from onnxsmith.errors import OnnxsmithError

    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="onnxsmith", standalone_mode=False)
    except OnnxsmithError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        _forget_interrupt()
        sys.exit(130)
    except click.ClickException as exc:  # bad usage: one line too, naming what was given
        ctx = getattr(exc, "ctx", None)
        where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        text = " ".join(exc.format_message().split())
        text += "" if text.endswith((".", "?", "!")) else "."
        click.echo(f"error: {text} Hint: check the command line{where}.", err=True)
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        _forget_interrupt()
        sys.exit(130)
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc}. Hint: this is a bug in onnxsmith; run again "
                   "with --debug and report the traceback.", err=True)
        sys.exit(1)
    sys.exit(0)
