"""Built-in backend plugins, one folder each; registered through the ``onnxsmith.compilers`` entry-point group."""
