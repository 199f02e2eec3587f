#!/usr/bin/env bash
# KL-regularised adaptation: a learnable clone of a classifier trained against labels
# interpolated with the softmax of a frozen reference clone (kl_adaptation/recipe.toml).
# The reference clone stays bit-identical; the loss goes down.
# Run from the repository root: bash examples/train_kl_adaptation.sh [WORK_DIR]
set -euo pipefail
work=${1:-$(mktemp -d)}
python examples/train_data.py "$work"
onnxsurgeon compose examples/kl_adaptation/recipe.toml -o "$work/kl.onnx"
onnxsurgeon train "$work/kl.onnx" --data "$work/kl_train.npz" --val "$work/kl_val.npz" \
    --loss 'ce(0.1 * labels + 0.9 * softmax(zRef), z)' --metric 'error(z, labels)' \
    --optimizer adam --lr 0.01 --epochs 5 --batch-size 64 --seed 0 -o "$work/kl_trained.onnx"
onnxsurgeon eval "$work/kl_trained.onnx" --data "$work/kl_val.npz" --metric 'ce(0.1 * labels + 0.9 * softmax(zRef), z)'
