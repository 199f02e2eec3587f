from onnxsurgeon.cli import run

run()
