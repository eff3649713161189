"""The data stage: the arrays a verb is given (``.npz``/``.npy`` files, image folders, CSV, dataset spec files),
checked against the model's inputs and read within a memory budget.

``dataset`` holds :class:`Dataset` and its checks, ``sources`` opens each kind of source (:func:`open_dataset`),
``npyfile`` reads ``.npy``/``.npz`` headers and arrays without trusting them, ``values`` parses inline values."""

from __future__ import annotations

from onnxsmith.data.dataset import Dataset
from onnxsmith.data.sources import open_dataset

__all__ = ["Dataset", "open_dataset"]
