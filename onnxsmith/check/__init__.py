"""The check stage: the fp32 reference (``reference``), the comparison engine (``numerics``), validation of a
bundle against the reference on real inputs (``validation``) and per-layer divergence (``layers``)."""
