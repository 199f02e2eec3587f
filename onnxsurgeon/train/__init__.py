"""Training support: continue training models, cut pieces and composed networks with
onnxruntime-training (see docs/training.md).

Nothing heavy is imported here. The modules, in the order a run uses them:

- :mod:`~onnxsurgeon.train.ort` loads onnxruntime-training's ``api``, ``artifacts`` and
  ``onnxblock`` modules without importing torch, and keeps onnxruntime quiet;
- :mod:`~onnxsurgeon.train.data` checks the data (:mod:`onnxsurgeon.datafiles`) against the
  graph (``--fixed``, ``--batch-axis``, class indices), reads batches and orders them;
- :mod:`~onnxsurgeon.train.losses` compiles loss and metric expressions into the graph;
- :mod:`~onnxsurgeon.train.prepare` makes a copy of the model trainable and decides what
  is trained, frozen, updated or constant;
- :mod:`~onnxsurgeon.train.artifacts` builds the training/eval/optimizer models and the
  initial state with generate_artifacts, around its pitfalls;
- :mod:`~onnxsurgeon.train.optim` optimizers (torch semantics) and learning-rate schedules;
- :mod:`~onnxsurgeon.train.checkpoint` atomic, checked checkpoint files;
- :mod:`~onnxsurgeon.train.loop` the run: :func:`~onnxsurgeon.train.loop.train`;
- :mod:`~onnxsurgeon.train.distributed` the ranks of a run under MPI (mpiexec, srun), or
  one process; it imports mpi4py only under a launcher (see docs/scale.md);
- :mod:`~onnxsurgeon.train.weights` writing values back, reading them from checkpoints;
- :mod:`~onnxsurgeon.train.evaluate` ``eval`` and ``run``; :mod:`~onnxsurgeon.train.transfer`.
"""
