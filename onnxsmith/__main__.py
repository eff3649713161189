from onnxsmith.cli import main

main()
