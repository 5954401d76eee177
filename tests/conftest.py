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

@pytest.fixture
def tiny():
    return list(TINY_OVERRIDES)
