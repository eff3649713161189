"""Every onnxsmith module imports without pulling in a vendor library (they load lazily, inside methods)."""

from __future__ import annotations

import subprocess
import sys

VENDOR = ("tvm", "openvino", "nncf", "coremltools", "onnx2coreml", "tensorrt", "onnxruntime", "torch", "ray",
          "onnxslim", "matplotlib")

CODE = """
import importlib, pkgutil, sys
import onnxsmith, onnxsmith.compilers, onnxsmith.targets, onnxsmith.profiles
names = []
for pkg in (onnxsmith, onnxsmith.compilers, onnxsmith.targets, onnxsmith.profiles):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if ".examples." in info.name or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
print(len(names))
print(",".join(sorted(m for m in %r if m in sys.modules)))
"""


def test_every_module_imports_without_vendor_libraries() -> None:
    proc = subprocess.run([sys.executable, "-c", CODE % (VENDOR,)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    count, loaded = proc.stdout.strip().split("\n")[-2:] if proc.stdout.strip().count("\n") else (proc.stdout, "")
    assert int(count) > 20
    assert loaded == "", f"imported at module level: {loaded}"
