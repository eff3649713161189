"""Profile across devices: a matrix of cells (target x backend x precision), each compiled, profiled and validated
as a normal bundle, by a local executor (subprocesses on this machine) or a Ray executor (a fleet of workers, each
advertising its devices as Ray custom resources). :func:`onnxsmith.fleet.compare.compare` is the entry point."""
