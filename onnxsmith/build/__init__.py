"""The build stage: compile a model for a target into a bundle (``compile``), through the compile cache
(``cache``), in a process of its own when a backend can crash (``isolate``)."""
