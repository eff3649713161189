"""compile and compare choose a cell's precision by one rule (onnxsmith.precisions.choose_precision): for every
built-in target and each of its backends installed here, without --precision, both pick the same."""

from __future__ import annotations

import dataclasses

import pytest

from onnxsmith.precisions import choose_precision, headline_precision, min_cosine_for, precision_parts
from onnxsmith.profiles import load_profile
from onnxsmith.registry import backend_status, get_backend
from onnxsmith.targets import list_targets, load_target


def _cells() -> list[tuple[str, str]]:
    cells = []
    for target in list_targets():
        for name in target.backends:
            if backend_status(name, probe_devices=False).available and get_backend(name).supports(target):
                cells.append((target.id, name))
    return cells


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_compile_and_compare_pick_the_same_precision_for_every_target(precision: str) -> None:
    from onnxsmith.fleet import cells as compare_cells

    profile = dataclasses.replace(load_profile("quick"), precision=precision)
    checked = 0
    for target_id, name in _cells():
        target, backend = load_target(target_id), get_backend(name)
        chosen, why = choose_precision(backend, target, profile)
        offered = [p for p in backend.precisions(target) if p in target.precisions]
        assert chosen == (precision if precision in offered or not offered else offered[0]), (target_id, name)
        assert (why is None) == (chosen == precision), (target_id, name, why)
        assert compare_cells.choose_precision is choose_precision  # compare's stage decides with the same rule
        checked += 1
    assert checked > 0


def test_the_precision_vocabulary_has_one_home() -> None:
    assert precision_parts("int8+fp32") == ("int8", "fp32") and headline_precision("int8+fp16") == "int8"
    assert min_cosine_for("int8+fp32") == 0.98 and min_cosine_for("fp32") == 0.9999 and min_cosine_for("x", 0.5) == 0.5
