"""The local executor: every cell on this machine, its stages in subprocesses, one cell after the other.

One cell at a time keeps one profile at a time per device: the devices this machine has (its CPU, an emulator
running on that CPU) share its cores, so two profiles at once would perturb each other's timings. A cell whose
bundle cannot run here is measured under a backend's emulator when it has one (labelled, never ranked), else
reported compiled but not measured.
"""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path
from typing import Any

from onnxsmith.fleet.cells import run_stage
from onnxsmith.fleet.plan import CellOutcome, Plan, Progress

NO_DEVICE = "not measured: no such device in the fleet"


class LocalExecutor:
    name = "local"
    address = None

    def workers(self) -> list[dict[str, Any]]:
        return [{"name": f"local ({platform.node()})", "devices": ["host"]}]

    def run(self, plan: Plan, work: Path, progress: Progress) -> list[CellOutcome]:
        cells = [CellOutcome(spec) for spec in plan.cells]
        worker = f"local ({platform.node()})"
        with contextlib.ExitStack() as emulators:
            started: dict[str, str] = {}
            for cell in cells:
                cell.worker = worker
                bundle = work / "cells" / cell.spec.slug
                stages = work / ".stages" / cell.spec.slug
                progress(cell, "compiling")
                t0 = time.perf_counter()
                outcome = run_stage("compile", plan.compile_request(cell.spec, bundle), stages)
                cell.seconds["compile"] = time.perf_counter() - t0
                if outcome["status"] != "ok":
                    cell.fail(outcome, "compile")
                    progress(cell, cell.reason)
                    continue
                cell.compile = outcome["result"]
                remote, emulated, why = self._device(cell, emulators, started)
                if why:
                    cell.status, cell.reason = "compiled", why
                    progress(cell, why)
                    continue
                cell.emulated = emulated
                cell.device = f"emulated {cell.spec.target} at {remote}" if emulated else "this machine"
                progress(cell, f"profiling and validating on {cell.device}")
                t0 = time.perf_counter()
                cell.attempts = 1
                outcome = run_stage("measure", plan.measure_request(bundle, remote, emulated), stages)
                cell.seconds["measure"] = time.perf_counter() - t0
                if outcome["status"] != "ok":
                    cell.fail(outcome, "measure")
                    progress(cell, cell.reason)
                    continue
                cell.profile, cell.validation = outcome["result"]["profile"], outcome["result"]["validation"]
                cell.device = cell.profile.get("device") or cell.device
                cell.status = "measured"
                progress(cell, "measured")
            import shutil

            shutil.rmtree(work / ".stages", ignore_errors=True)
        return cells

    @staticmethod
    def _device(cell: CellOutcome, emulators: contextlib.ExitStack,
                started: dict[str, str]) -> tuple[str | None, bool, str]:
        """(RPC address or None for this machine, emulated?, '' or why it is not measured)."""
        assert cell.compile is not None
        runs = cell.compile["runs_here"]
        if runs["ok"]:
            return None, False, ""
        from onnxsmith.registry import get_backend
        from onnxsmith.targets import load_target

        target = load_target(cell.spec.target)
        if target.id in started:
            return started[target.id], True, ""
        backend = get_backend(cell.compile["backend"])
        emulator = backend.emulated_device(target)
        if emulator is None:
            return None, False, f"{NO_DEVICE} (this machine cannot run it: {runs['reason']})"
        started[target.id] = emulators.enter_context(emulator)
        return started[target.id], True, ""
