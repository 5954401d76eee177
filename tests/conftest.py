import os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CIFAR = ROOT.parent / 'shared' / 'data' / 'cifar10'

# The same small, seconds-long settings the notebooks use (hjepa_nb.train.TINY_OVERRIDES).
from hjepa_nb.config import TINY_OVERRIDES

def cli(prog, *args, timeout=600, env=None, cwd=ROOT):
    "Run a console script as a user would; returns the CompletedProcess."
    exe = shutil.which(prog)
    assert exe, f"{prog} is not installed (pip install -e .)"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})})

def assert_one_line_error(prog, rc, err, *needles) -> str:
    "Exit code 2 and a last stderr line `prog: error: ...` holding every needle; no traceback. Returns that line."
    assert rc == 2, (rc, err[-2000:])
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith(f'{prog}: error:'), err[-2000:]
    assert 'Traceback' not in err, err[-2000:]
    for n in needles: assert str(n) in lines[-1], (n, lines[-1])
    return lines[-1]

def one_line_error(r, *needles, prog='hjepa-train') -> str:
    "`assert_one_line_error` for a finished console-script process `r`."
    return assert_one_line_error(prog, r.returncode, r.stderr, *needles)

@pytest.fixture
def tiny():
    return list(TINY_OVERRIDES)
