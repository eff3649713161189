"""Stage 1, load: read an ONNX model safely, check it, fix dynamic shapes and fingerprint it.

ONNX is the one intermediate form: every later stage takes a :class:`LoadedModel`.

Modules: :mod:`~onnxsmith.model.loading` (:func:`load_model`, :class:`LoadedModel`, the fingerprint),
:mod:`~onnxsmith.model.checks` (what is refused at load: unsafe external data, unknown types, oversized inputs),
:mod:`~onnxsmith.model.shapes` (``--shape``/``--batch``, shape ranges, fixing dynamic dims),
:mod:`~onnxsmith.model.specs` (:class:`TensorSpec` and reading it from the graph), :mod:`~onnxsmith.model.saving`.
``TensorSpec``, ``LoadedModel`` and ``load_model`` are the public names (README, "Writing a backend") and stay
importable from here.
"""

from onnxsmith.model.loading import LoadedModel, load_model
from onnxsmith.model.specs import TensorSpec

__all__ = ["LoadedModel", "TensorSpec", "load_model"]
