from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


@pytest.fixture
def fixture_path():
    def get(name: str) -> Path:
        path = FIXTURES / name
        assert path.exists(), f"missing fixture {name}: run python fixtures/build.py"
        return path

    return get


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from onnxsurgeon.cli import main

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return code, out, err

    return run


def pytest_terminal_summary(terminalreporter):
    """The figures of the reliability tests (docs/reliability.md), when any ran."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from figures import FIGURES

    if FIGURES:
        terminalreporter.section("reliability figures")
        for key, value in FIGURES.items():
            terminalreporter.write_line(f"{key}: {value}")
