"""Backend plugin tests, one module per backend."""
