"""Stage 2, optimize: measured ONNX passes, the optimization ladder and its evidence card.

Modules, in the order data flows:

- ``passes`` (base, catalogue) with ``simplify``, ``fp16``, ``quantize`` (int8 QDQ) and ``prune``.
- ``steps`` (build, compile, profile and evaluate one step) and ``evaluate`` (comparison with fp32).
- ``ladder``: ``run_ladder``, the whole walk; ``selection``: the choice under the constraints.
- ``batching``: the batch sweep and the dynamic-batching simulation.
- ``record`` (``Step``, ``Card``), ``card`` (Markdown, HTML, JSON), ``plots``.
"""
