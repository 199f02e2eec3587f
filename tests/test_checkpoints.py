"""Never lose a checkpoint: a checkpoint folder belongs to one run; resuming keeps what that
run kept, never goes past the end asked for, and says what changed (issue 12)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxsurgeon.errors import InputError
from onnxsurgeon.train import checkpoint
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings

sys.path.insert(0, str(Path(__file__).parent))
from test_train import DATA, after  # noqa: E402
from test_train_stack import mlp  # noqa: E402

# 40 examples, batches of 8: 5 steps per epoch
BASE = dict(loss="ce(y, labels)", metrics=("error(y, labels)",), optimizer=OptimizerSettings("sgd", lr=0.1, momentum=0.5),
            batch_size=8, seed=3)


def settings(folder: Path, **kw) -> TrainSettings:
    return TrainSettings(**{**BASE, "checkpoint_dir": str(folder), **kw})


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def steps(folder: Path) -> list[int]:
    return [s for s, _ in checkpoint.listing(folder)]


def test_fresh_run_into_another_runs_folder_is_refused(tmp_path, cli):
    folder = tmp_path / "ck"
    train(mlp(), DATA, settings(folder, epochs=2))
    before = files(folder)
    other = mlp()
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((3, 4), np.float32), "W1"))
    with pytest.raises(InputError, match=r"holds 2 checkpoints of another run.*step-000000010") as e:
        train(other, DATA, settings(folder, epochs=2))
    assert "--resume" in e.value.hint and "--overwrite" in e.value.hint
    assert files(folder) == before
    # from the command line, with the metrics log: every file stays as it was
    onnx.save(other, tmp_path / "other.onnx")
    np.savez(tmp_path / "d.npz", **DATA)
    argv = ["train", tmp_path / "other.onnx", "--data", tmp_path / "d.npz", "--loss", "ce(y, labels)", "--batch-size", "8",
            "--checkpoint-dir", tmp_path / "cli", "-o", tmp_path / "t.onnx", "-q"]
    assert cli(*argv)[0] == 0
    before = files(tmp_path / "cli")
    code, _, err = cli(*argv, "--seed", "9")
    assert code == 2 and "of another run" in err and "Traceback" not in err
    assert files(tmp_path / "cli") == before
    # --overwrite replaces them (and starts a new log)
    code, _, err = cli(*argv, "--seed", "9", "--overwrite")
    assert code == 0, err
    assert files(tmp_path / "cli") != before and steps(tmp_path / "cli") == [5]
    log = (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()
    assert sum('"event": "start"' in line for line in log) == 1


def test_resume_keeps_what_keep_all_kept(tmp_path):
    folder = tmp_path / "ck"
    train(mlp(), DATA, settings(folder, epochs=2, checkpoint_every=1, keep=None, max_steps=6))
    assert steps(folder) == [6, 5, 4, 3, 2, 1]
    # resumed with the default --keep 3: the folder's policy (all) still holds
    _, report = train(mlp(), DATA, settings(folder, epochs=2, checkpoint_every=1, resume=True))
    assert steps(folder) == list(range(10, 0, -1))
    assert any("keeping all checkpoints" in w for w in report.warnings)


def test_keep_count_still_prunes(tmp_path):
    folder = tmp_path / "ck"
    train(mlp(), DATA, settings(folder, epochs=2, checkpoint_every=1, keep=2))
    assert steps(folder) == [10, 9]


def test_resume_past_the_end_is_refused_and_says_where(tmp_path):
    folder = tmp_path / "ck"
    train(mlp(), DATA, settings(folder, epochs=4, keep=None))
    assert steps(folder) == [20, 15, 10, 5]
    with pytest.raises(InputError, match=r"step-000000020.ckpt is at epoch 4 \(step 20\), past the end") as e:
        train(mlp(), DATA, settings(folder, epochs=2, resume=True))
    assert "--resume-from" in e.value.hint and "step-000000010.ckpt" in e.value.hint
    # the hint works: the epoch-2 state, exactly that of a 2-epoch run
    two, _ = train(mlp(), DATA, TrainSettings(**BASE, epochs=2))
    got, report = train(mlp(), DATA, TrainSettings(**BASE, epochs=2, resume_from=re.search(r"--resume-from (\S+) ", e.value.hint).group(1)))
    assert report.steps == 10 and report.steps_run == 0
    assert all(after(got)[k].tobytes() == v.tobytes() for k, v in after(two).items())


def test_resume_from_an_older_checkpoint(tmp_path):
    folder = tmp_path / "ck"
    straight, _ = train(mlp(), DATA, TrainSettings(**BASE, epochs=3))
    train(mlp(), DATA, settings(folder, epochs=3, keep=None))
    older = folder / "step-000000005.ckpt"
    # into the same folder: the newer checkpoints would be overwritten
    with pytest.raises(InputError, match="2 checkpoints newer than"):
        train(mlp(), DATA, settings(folder, epochs=3, resume_from=str(older)))
    got, report = train(mlp(), DATA, settings(tmp_path / "new", epochs=3, resume_from=str(older)))
    assert report.resumed_from == str(older) and report.steps_run == 10 and steps(tmp_path / "new") == [15, 10]
    assert all(after(got)[k].tobytes() == v.tobytes() for k, v in after(straight).items())
    with pytest.raises(InputError, match="no such checkpoint file"):
        train(mlp(), DATA, TrainSettings(**BASE, resume_from=str(tmp_path / "nope.ckpt")))
    with pytest.raises(InputError, match="is a folder, not a checkpoint file") as folder_given:
        train(mlp(), DATA, TrainSettings(**BASE, resume_from=str(folder)))
    assert f"--checkpoint-dir {folder} --resume" in folder_given.value.hint
    model_file = tmp_path / "m.onnx"
    onnx.save(mlp(), model_file)
    with pytest.raises(InputError, match="is not an onnxsurgeon checkpoint .not a zip archive") as not_zip:
        train(mlp(), DATA, TrainSettings(**BASE, resume_from=str(model_file)))
    assert "step-*.ckpt" in not_zip.value.hint
    cut_short = tmp_path / "short.ckpt"
    cut_short.write_bytes(older.read_bytes()[:100])
    with pytest.raises(InputError, match="is damaged or incomplete"):
        train(mlp(), DATA, TrainSettings(**BASE, resume_from=str(cut_short)))


def test_changed_settings_on_resume_are_reported_or_refused(tmp_path):
    folder = tmp_path / "ck"
    train(mlp(), DATA, settings(folder, epochs=3, max_steps=4))
    changed = dict(BASE, optimizer=OptimizerSettings("sgd", lr=0.01, momentum=0.5))
    _, report = train(mlp(), DATA, TrainSettings(**changed, epochs=3, checkpoint_dir=str(folder), resume=True, max_steps=1))
    assert any("lr 0.1 -> 0.01" in w and "differs from an uninterrupted run" in w for w in report.warnings), report.warnings
    with pytest.raises(InputError, match=r"seed 3 \(now 4\): the data order"):
        train(mlp(), DATA, settings(folder, epochs=3, seed=4, resume=True))


def test_resume_on_other_data_of_the_same_size_is_reported(tmp_path):
    """Only the number of examples was compared: other data of the same size resumed in
    silence, and the result is no uninterrupted run's. The same data stays silent."""
    folder = tmp_path / "ck"
    train(mlp(), DATA, settings(folder, epochs=3, max_steps=4))
    _, report = train(mlp(), DATA, settings(folder, epochs=3, resume=True, max_steps=1))
    assert not [w for w in report.warnings if "other data" in w], report.warnings
    other = {k: v[::-1].copy() for k, v in DATA.items()}  # the same examples in another order
    _, report = train(mlp(), other, settings(folder, epochs=3, resume=True, max_steps=1))
    assert any("on other data than its run" in w and "differs from an uninterrupted run" in w for w in report.warnings), report.warnings


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_run_into_a_folder_another_run_is_writing_is_refused(tmp_path):
    """Two runs started into one --checkpoint-dir before either wrote a checkpoint both
    passed the "another run's checkpoints" check and wrote over each other's step files
    and log. The running one holds the folder (an flock on it, as another process would)."""
    import fcntl
    import os

    folder = tmp_path / "ck"
    folder.mkdir()
    other = os.open(folder, os.O_RDONLY)  # the run already writing there
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(InputError, match="is in use by another training run") as e:
            train(mlp(), DATA, settings(folder, epochs=1))
        assert "another --checkpoint-dir" in e.value.hint and list(folder.iterdir()) == []
    finally:
        os.close(other)
    train(mlp(), DATA, settings(folder, epochs=1))  # once it ended
    train(mlp(), DATA, settings(folder, epochs=2, resume=True))  # and the lock went with each run
    assert steps(folder) == [10, 5]


def test_the_model_changed_says_what(tmp_path):
    folder = tmp_path / "ck"
    train(mlp(), DATA, settings(folder, epochs=1, max_steps=2))
    other = mlp()
    w = numpy_helper.to_array(other.graph.initializer[2]) + 1  # W2
    other.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, "W2"))
    with pytest.raises(InputError, match=r"the model changed: parameters with other values or types: W2"):
        train(other, DATA, settings(folder, epochs=1, resume=True))
    relu6 = mlp()
    relu6.graph.node[2].op_type = "Sigmoid"
    with pytest.raises(InputError, match=r"the model changed: changed nodes: the node computing h2 \(Relu -> Sigmoid\)"):
        train(relu6, DATA, settings(folder, epochs=1, resume=True))
