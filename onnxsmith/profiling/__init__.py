"""Stage 4a, profile: time a bundle on this machine beside the ONNX Runtime fp32 baseline, in one run.

Each runner is measured in its own fresh process (as Polygraphy's comparator does), so peak memory is the
runner's own and a crashing backend cannot take the CLI down. Timing: load, one first inference, warm-up, then
at least ``min_iterations`` and ``min_seconds`` (capped at ``max_seconds``) of bound single-request calls, then
the backend's parallel-requests throughput when it has one.

A measuring process (:class:`~onnxsmith.profiling.worker.MeasureWorker`) stays alive and takes commands, so two or
more runners can be loaded at once and timed in interleaved runs (:func:`~onnxsmith.profiling.worker.interleave`:
A B, B A, ...); the artifact-to-baseline ratio of medians then gets a confidence interval (:mod:`onnxsmith.profiling.stats`).
Each profile records the machine it ran on and how busy it was (:mod:`onnxsmith.profiling.environment`).

Modules, in the order a profile runs:

- :mod:`~onnxsmith.profiling.run`: :func:`profile_bundle` (the inputs, each shape-range point, the baseline, the
  interleaved comparison) and its input checks;
- :mod:`~onnxsmith.profiling.worker`: the measuring processes and the interleaving of their runs;
- :mod:`~onnxsmith.profiling.measure`: the timed loop inside a measuring process, latency statistics, per-layer
  precision shares;
- :mod:`~onnxsmith.profiling.environment`: the machine's fingerprint and how busy it was (:class:`LoadWatch`);
- :mod:`~onnxsmith.profiling.record`: the profile record (:class:`ProfileResult`: efficiency against the peaks)
  and what is said about it.
"""
