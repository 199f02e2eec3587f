"""bench/extract_phases.py runs, and its bound walks to the same nodes as extract."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "extract_phases.py"


@pytest.mark.parametrize("types", ["recorded", "none"])
def test_phases_of_a_small_model(types):
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "3000", "--repeat", "1", "--types", types],
        capture_output=True, text=True, timeout=120,
    )
    # each run asserts that the bound's scan keeps as many nodes as the piece has
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("surgeon ") and " bound " in last, p.stdout
    assert ("vi names" in p.stdout) == (types == "recorded") and ("sigs" in p.stdout) == (types == "none")
