"""PyTorch in: a MODEL argument that names a PyTorch model becomes a checked ONNX export.

Every command that takes MODEL calls :func:`open_model`. An ONNX file goes straight to
:func:`onnxsmith.model.load_model` (torch is never imported); the PyTorch forms are

* ``package.module:factory`` or ``path/to/file.py:factory``: a function returning an ``nn.Module``;
* a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``);
* a TorchScript file saved with ``torch.jit.save``.

Their inputs come from ``--shape NAME=DIMS[:dtype]`` (dtype default float32; a ``.pt2`` program knows its own). The
export runs ``torch.onnx.export`` with the dynamo exporter first and the TorchScript exporter as a fallback (said
so in the record), at :func:`~onnxsmith.torchin.export.choose_opset` (the newest opset every backend of the target
reads, at most :data:`~onnxsmith.torchin.export.DEFAULT_OPSET`), with a dynamic batch dim where the inputs have one.
Then it checks: the ONNX checker, ONNX shape inference, and the numerics of ONNX Runtime against eager PyTorch on
sample inputs (the real data when given): cosine, max abs error and top-1 agreement. The record (torch version,
exporter, opset, the figures) lands in the bundle manifest (``model.export``) and its report. Exports are cached by
what determines them (the model's code, structure and weights, the inputs, the opset, the torch version, the check
data).

Exit codes: the model cannot be imported or built, or ``--shape`` is missing or wrong: 2; torch (or onnxscript)
not installed: 3; the exporter cannot handle the model: 4 (:class:`~onnxsmith.torchin.export.ExportError`, one line
naming the op or the construct, the exporter's reason and a hint); the export computes something else than eager
PyTorch: 6.

Modules, in the order an export runs: :mod:`~onnxsmith.torchin.api` (:func:`open_model`, the cached export, the
export of a module in hand, the one-line record), :mod:`~onnxsmith.torchin.source` (what MODEL is, building the
torch model), :mod:`~onnxsmith.torchin.inputs` (``--shape NAME=DIMS[:dtype]``, sample inputs and outputs),
:mod:`~onnxsmith.torchin.export` (the exporters tried in turn and why one failed), :mod:`~onnxsmith.torchin.check`
(the checks after the export). ``open_model`` is the public name (README) and stays importable from here.
"""

from onnxsmith.torchin.api import open_model

__all__ = ["open_model"]
