"""The ONNX backend node tests: where their files are, how a case's inputs and outputs are read, how they compare.

The ``onnx`` package ships the cases as code (``onnx.backend.test.case.node``); source trees also hold them as
files under ``onnx/backend/test/data/node/<case>/`` (``model.onnx``, ``test_data_set_0/input_*.pb``,
``output_*.pb``). Wheels that leave the files out (onnx 1.23 here) get them written once, by onnx's own writer
(``onnx.backend.test.cmd_tools.generate_data``), into a cache folder.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

RTOL, ATOL = 1e-3, 1e-7
"""onnx.backend.test's own defaults (``TestCase.rtol/atol``); node tests carry no tolerance of their own."""

# A fixed sample for the default suite: the three causes issue 10 found (inputs without a shared batch axis,
# scalar inputs, zero-sized dims), then common ops.
SAMPLE = (
    "test_batchnorm_example", "test_batchnorm_epsilon", "test_instancenorm_example",
    "test_slice", "test_slice_default_axes", "test_slice_neg_steps", "test_where_example", "test_where_long_example",
    "test_pow_bcast_scalar", "test_clip_example", "test_clip_default_inbounds", "test_expand_dim_changed",
    "test_slice_start_out_of_bounds", "test_concat_1d_axis_0", "test_reduce_sum_empty_set",
    "test_add", "test_add_bcast", "test_matmul_2d", "test_gemm_default_no_bias", "test_conv_with_strides_padding",
    "test_maxpool_2d_pads", "test_relu", "test_sigmoid", "test_softmax_axis_1", "test_transpose_default",
    "test_reshape_reordered_all_dims", "test_gather_0", "test_flatten_axis1", "test_argmax_default_axis_example",
    "test_cast_FLOAT_to_FLOAT16", "test_layer_normalization_2d_axis0", "test_equal",
    # found by the full run: an input wired straight to the output (OpenVINO port names), an op the OpenVINO blob
    # export gets wrong, bfloat16 data
    "test_einsum_scalar", "test_rotary_embedding", "test_unique_bfloat16_sorted_without_axis",
)
STRUCTURED_SAMPLE = ("test_string_concat", "test_equal_string", "test_regex_full_match_basic",
                     "test_ai_onnx_ml_label_encoder_string_int", "test_sequence_insert_at_back",
                     "test_split_to_sequence_1", "test_sequence_map_add_2_sequences", "test_identity_opt",
                     "test_if_seq")
"""Strings, sequences and optionals (the .npz convention of onnxsmith.data.values): ONNX Runtime runs them raw and
through onnxsmith; OpenVINO and TVM refuse them before compiling."""
TVM_SAMPLE = ("test_batchnorm_example", "test_slice", "test_where_example", "test_pow_bcast_scalar", "test_relu",
              "test_add_bcast", "test_spacetodepth_expanded", "test_cast_e8m0_FLOAT8E8M0_to_FLOAT")
"""TVM builds every case with LLVM (seconds each): the default suite runs a handful."""


def node_data_dir() -> Path:
    """The folder of node test cases: the package's own, else one written from the package's case code."""
    import onnx.backend.test

    shipped = Path(onnx.backend.test.__file__).parent / "data" / "node"
    if shipped.is_dir() and any(shipped.iterdir()):
        return shipped
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onnxsmith-conformance"
    root = cache / f"onnx-{onnx.__version__}"
    done = root / "node" / ".complete"
    if not done.is_file():
        _generate(root)
        done.write_text(onnx.__version__ + "\n")
    return root / "node"


def _generate(root: Path) -> None:
    """Write the node cases with onnx's own data writer (``cmd_tools.generate_data`` over the node cases)."""
    import argparse
    import contextlib
    import io
    import warnings

    import onnx.backend.test.case.node as node_cases
    from onnx.backend.test import cmd_tools

    class NodeCases:
        @staticmethod
        def collect_testcases() -> list[Any]:
            return node_cases.collect_testcases(None)

    saved = cmd_tools.model_test
    cmd_tools.model_test = NodeCases  # type: ignore[assignment]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            cmd_tools.generate_data(argparse.Namespace(output=str(root)))
    finally:
        cmd_tools.model_test = saved


def all_cases() -> list[str]:
    return sorted(p.name for p in node_data_dir().iterdir() if (p / "model.onnx").is_file())


@dataclasses.dataclass
class Case:
    """One node test: its model and first data set."""

    name: str
    directory: Path
    model: onnx.ModelProto
    inputs: dict[str, Any]
    """Graph input name -> value (an array; a list or None for sequence/optional inputs)."""
    outputs: list[Any]
    tensor_only: bool
    """Every input and output is a tensor (what an .npz can hold)."""

    @property
    def ops(self) -> str:
        return "+".join(sorted({n.op_type for n in self.model.graph.node})) or "(none)"

    @property
    def model_path(self) -> Path:
        return self.directory / "model.onnx"

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.inputs.items() if isinstance(v, np.ndarray)}


def _read_value(path: Path, type_proto: onnx.TypeProto) -> Any:
    data = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    if type_proto.HasField("map_type"):
        mp = onnx.MapProto()
        mp.ParseFromString(data)
        return numpy_helper.to_dict(mp)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    return numpy_helper.to_array(tensor)


def load_case(name: str) -> Case:
    directory = node_data_dir() / name
    model = onnx.load(str(directory / "model.onnx"))
    data = directory / "test_data_set_0"
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    inputs: dict[str, Any] = {}
    for j, value in enumerate(graph_inputs):
        path = data / f"input_{j}.pb"
        if path.is_file():
            inputs[value.name] = _read_value(path, value.type)
    outputs = [_read_value(data / f"output_{j}.pb", v.type) for j, v in enumerate(model.graph.output)
               if (data / f"output_{j}.pb").is_file()]
    tensor_only = all(v.type.HasField("tensor_type") for v in [*graph_inputs, *model.graph.output])
    return Case(name, directory, model, inputs, outputs, tensor_only)


def compare(expected: list[Any], got: list[Any]) -> str | None:
    """None when ``got`` matches ``expected`` by onnx's own check (``Runner.assert_similar_outputs``), else why."""
    from onnx.backend.test.runner import Runner

    try:
        Runner.assert_similar_outputs(expected, got, rtol=RTOL, atol=ATOL)
    except (AssertionError, TypeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        return " ".join(lines[:3])[:200] or type(exc).__name__
    return None
