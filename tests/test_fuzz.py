"""Every numeric setting, given nan, inf, -1, 0 and a huge value through `hjepa-train`'s own code path: either a valid short
run, or one line naming that key, with no traceback and nothing written into an existing run folder.

The fields come from the config dataclasses themselves, so a field added later is fuzzed without editing this file."""
import dataclasses, hashlib, os, typing
from pathlib import Path
import pytest
from conftest import ROOT, TINY_OVERRIDES
from hjepa_nb import config as C
from hjepa_nb.cli import train_main

def numeric_fields() -> list[tuple[str, str]]:
    "`(dotted key, type name)` of every int, float and list-of-numbers field of `Config`."
    hints = typing.get_type_hints
    out = []
    for sec in dataclasses.fields(C.Config):
        cls = hints(C.Config)[sec.name]
        for f, t in hints(cls).items():
            name = getattr(t, '__name__', str(t))
            if name in ('int', 'float', 'tuple', 'list'): out.append((f'{sec.name}.{f}', name))
    return out

VALUES = {'nan': 'nan', 'inf': 'inf', '-1': '-1', '0': '0', 'huge': '1e15'}

def _override(key: str, typ: str, v: str) -> str:
    return f'{key}=[{v},{v}]' if typ in ('tuple', 'list') else f'{key}={v}'

def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}

@pytest.fixture(scope='module')
def old_run(tmp_path_factory):
    "A finished run folder that no fuzzed start may touch."
    d = tmp_path_factory.mktemp('old') / 'run'
    os.chdir(ROOT)
    train_main('configs/demo.yaml', [*TINY_OVERRIDES, 'train.max_steps=1'], out=str(d), quiet=True)
    assert (d / 'last.pt').exists()
    return d

def test_fields_found():
    keys = [k for k, _ in numeric_fields()]
    assert len(keys) >= 40 and 'optim.lr' in keys and 'model.depth' in keys and 'mask.pred_scale' in keys, keys

@pytest.mark.parametrize('key,typ', numeric_fields())
def test_fuzz_field(key, typ, old_run, tmp_path, capsys):
    before = _snapshot(old_run)
    for name, v in VALUES.items():
        ov = [*TINY_OVERRIDES, 'train.max_steps=1', 'log.every=1', _override(key, typ, v)]
        try: C.load_config(ROOT / 'configs/demo.yaml', ov); valid = True
        except C.ConfigError: valid = False
        out = old_run if not valid else tmp_path / name           # a refused setting must not touch an existing run
        try: train_main('configs/demo.yaml', ov, out=str(out), quiet=True); code = 0
        except SystemExit as e: code = e.code
        err = capsys.readouterr().err.strip()
        if code == 0: assert valid and (out / 'last.pt').exists(), (key, name, err)
        else:
            lines = err.splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith('hjepa-train: error:'), (key, name, code, err[-1500:])
            assert key in lines[0], (key, name, lines[0])
        assert _snapshot(old_run) == before, (key, name)
