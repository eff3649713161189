"""`make bench`: onnxsmith against its peers, measured in the same run, printed as ratios.

Sections (pick with `python -m tests.bench.run [openvino] [benchmark_app] ...`; default all):
- openvino: ResNet-50 int8 via `onnxsmith compile` vs a hand-written OpenVINO + NNCF script (target: <= 1.10x).
- benchmark_app: `onnxsmith profile` p50 vs OpenVINO's `benchmark_app -api sync -hint latency` on the same
  compiled blob (target: within +-5 %).
Runs alternate A B A B so drift hits both sides; medians are quoted. Results go to .bench/results.json.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".bench"
BIN = Path(sys.executable).parent
ROUNDS = 3


def sh(*args: str, timeout: int = 3600) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n{proc.stderr[-3000:]}")
    return proc.stdout


def resnet_inputs() -> tuple[Path, Path]:
    import numpy as np

    from tests.bench.models import export_resnet50, image_batch

    model = export_resnet50(WORK / "resnet50.onnx")
    calib = WORK / "resnet50-calib.npz"
    if not calib.exists():
        np.savez(calib, input=image_batch(64, seed=1))
    return model, calib


def onnxsmith_profile(bundle: Path, baseline: bool = False) -> dict:
    args = [BIN / "onnxsmith", "profile", bundle, "--profile", "latency", "--json", "--seconds", "10"]
    if not baseline:
        args.append("--no-baseline")
    return json.loads(sh(*args))


def bench_openvino(results: dict) -> Path:
    model, calib = resnet_inputs()
    bundle = WORK / "resnet50-host-int8"
    compiled = json.loads(sh(BIN / "onnxsmith", "compile", model, "--target", "host", "--backend", "openvino",
                             "--precision", "int8", "--calibration", calib, "--profile", "latency", "-o", bundle,
                             "--json"))
    ours, theirs = [], []
    for _ in range(ROUNDS):
        ours.append(onnxsmith_profile(bundle)["latency_ms"]["p50"])
        out = WORK / "handwritten.json"
        sh(sys.executable, "-m", "tests.bench.handwritten_openvino", model, calib, out)
        theirs.append(json.loads(out.read_text())["p50_ms"])
    ratio = statistics.median(o / t for o, t in zip(ours, theirs))
    results["openvino_int8_vs_handwritten_nncf"] = {
        "onnxsmith_p50_ms": ours, "handwritten_p50_ms": theirs, "ratio_median": round(ratio, 3),
        "precision_used": compiled["precision_used"], "target": "<= 1.10"}
    print(f"ResNet-50 int8, OpenVINO: onnxsmith p50 {statistics.median(ours):.2f} ms vs hand-written OpenVINO+NNCF "
          f"{statistics.median(theirs):.2f} ms -> ratio {ratio:.3f} (target <= 1.10)")
    return bundle


def bench_benchmark_app(results: dict, bundle: Path) -> None:
    # benchmark_app 2026.4 refuses .blob files ("Cannot set precision for a compiled model"), so it gets the IR
    # with the exact properties onnxsmith compiled the blob with (openvino_config.json, -load_config format).
    artifact = bundle / "artifact"
    blob = artifact / "model.xml"
    ours, theirs = [], []
    for _ in range(ROUNDS):
        ours.append(onnxsmith_profile(bundle)["latency_ms"]["p50"])
        text = sh(BIN / "benchmark_app", "-m", blob, "-load_config", artifact / "openvino_config.json", "-d", "CPU",
                  "-api", "sync", "-hint", "latency", "-t", "10")
        match = re.search(r"Median:\s*([\d.]+)\s*ms", text)
        if not match:
            raise SystemExit(f"could not read benchmark_app's median:\n{text[-2000:]}")
        theirs.append(float(match.group(1)))
    ratio = statistics.median(o / t for o, t in zip(ours, theirs))
    results["profile_vs_benchmark_app"] = {"onnxsmith_p50_ms": ours, "benchmark_app_median_ms": theirs,
                                           "ratio_median": round(ratio, 3), "model": str(blob.name),
                                           "target": "0.95 .. 1.05"}
    print(f"ResNet-50 int8 blob: onnxsmith profile p50 {statistics.median(ours):.2f} ms vs benchmark_app median "
          f"{statistics.median(theirs):.2f} ms -> ratio {ratio:.3f} (target 0.95..1.05)")


def main(sections: list[str]) -> None:
    WORK.mkdir(exist_ok=True)
    results_path = WORK / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    wanted = sections or ["openvino", "benchmark_app"]
    bundle = None
    if "openvino" in wanted or "benchmark_app" in wanted:
        bundle = bench_openvino(results)
    if "benchmark_app" in wanted and bundle is not None:
        bench_benchmark_app(results, bundle)
    results_path.write_text(json.dumps(results, indent=2))
    print(f"results: {results_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
