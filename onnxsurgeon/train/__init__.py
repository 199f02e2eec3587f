"""Training support: continue training cut-out pieces with onnxruntime-training.

Nothing heavy is imported here. The submodules:

- :mod:`onnxsurgeon.train.ort` loads onnxruntime-training's ``api``, ``artifacts`` and
  ``onnxblock`` modules without importing torch, and keeps onnxruntime quiet.
- :mod:`onnxsurgeon.train.artifacts` turns an ONNX model into the training artifacts
  (training/eval/optimizer models and a checkpoint) that onnxruntime 1.19 can load.
"""
