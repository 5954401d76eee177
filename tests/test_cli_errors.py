"""`hjepa-train` and `hjepa-eval` lose nothing and say nothing wrong: a results file is only ever new, a mismatched checkpoint
names what differs, options and overrides come in any order, and the OS's errors (a full disk) are one line naming the file.

Most cases run the console scripts' functions in-process (argv parsed as the scripts parse it, stderr captured); a few
run the installed scripts as a user would."""
import json, re, shutil, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import assert_one_line_error as _one_line_error
from conftest import ROOT, cli
import hjepa_nb.evaluate as evaluate
from hjepa_nb.callbacks import make_learner
from hjepa_nb.checkpoint import load_checkpoint
from hjepa_nb.cli import hjepa_eval, hjepa_export, hjepa_train, train_main
from hjepa_nb.config import tiny_config

DEMO = str(ROOT / 'configs' / 'demo.yaml')

def _run(capsys, f, *args, **kw):
    "Call console-script function `f` in-process: (exit code, stdout, stderr)."
    capsys.readouterr()
    try: f(*args, **kw); rc = 0
    except SystemExit as e: rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err

def _argv(monkeypatch, capsys, f, prog, *args):
    "Run console script `f` in-process with command line `prog args...` (parsed exactly as the installed script parses it)."
    monkeypatch.setattr(sys, 'argv', [prog, *map(str, args)])
    return _run(capsys, f)

@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    "A 2-step tiny run's last.pt (read only: tests copy it before changing anything)."
    d = tmp_path_factory.mktemp('tiny_run')
    make_learner(tiny_config(d, 'train.max_steps=2'), quiet=True).fit()
    return d / 'last.pt'

def _no_eval(monkeypatch):
    "Make any evaluation work fail the test: the checks under test must come first."
    def boom(*a, **k): raise AssertionError('evaluation work started before the check')
    for name in ('evaluate_embed', 'eval_datasets', 'load_checkpoint'): monkeypatch.setattr(evaluate, name, boom)

# --- 1. hjepa-eval --out writes only a new .json (or refuses, naming the file), before any work ---------------------

def test_eval_out_is_a_folder_fails_fast(tmp_path, ckpt):
    "The issue's case, as typed: `--out DIR` used to run the whole evaluation and then die with a traceback."
    r = cli('hjepa-eval', ckpt, '--out', tmp_path)
    _one_line_error('hjepa-eval', r.returncode, r.stderr, tmp_path, 'already exists (a folder)')
    assert 'kNN' not in r.stdout, r.stdout                                   # refused before evaluating
    assert list(tmp_path.iterdir()) == []

def test_eval_out_never_overwrites(tmp_path, ckpt, monkeypatch, capsys):
    "Not the checkpoint being evaluated, not an earlier results file: refused before any work, both left as they were."
    run = tmp_path / 'run'; shutil.copytree(ckpt.parent, run)
    own, old = run / 'last.pt', run / 'eval.json'
    old.write_text('{"knn": {"acc": 50.0}}')
    before = own.read_bytes()
    _no_eval(monkeypatch)
    for target in (own, old):
        rc, out, err = _run(capsys, hjepa_eval, str(own), out=str(target))
        _one_line_error('hjepa-eval', rc, err, target, 'already exists (a file)', 'new .json')
    assert own.read_bytes() == before and old.read_text() == '{"knn": {"acc": 50.0}}'

@pytest.mark.parametrize('name, needle', [('results.txt', 'must end in .json'), ('results', 'must end in .json'),
                                          ('a_file/sub/results.json', 'is not a folder')])
def test_eval_out_bad_names_fail_fast(tmp_path, ckpt, monkeypatch, capsys, name, needle):
    (tmp_path / 'a_file').write_text('x')
    _no_eval(monkeypatch)
    rc, out, err = _run(capsys, hjepa_eval, str(ckpt), out=str(tmp_path / name))
    _one_line_error('hjepa-eval', rc, err, tmp_path / name, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file']

def test_eval_out_unwritable_folder_fails_fast(tmp_path, ckpt, monkeypatch, capsys):
    "A folder where no file can be created (simulated: tests run as root, where permission bits are not enforced)."
    def denied(*a, **k): raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(evaluate.tempfile, 'TemporaryFile', denied)
    _no_eval(monkeypatch)
    target = tmp_path / 'new' / 'results.json'
    rc, out, err = _run(capsys, hjepa_eval, str(ckpt), out=str(target))
    _one_line_error('hjepa-eval', rc, err, target, 'not writable', 'Permission denied')
    assert list(tmp_path.iterdir()) == []                                   # no folder made for nothing

def test_eval_out_writes_a_new_json(tmp_path, ckpt, monkeypatch, capsys):
    "Options and overrides in any order; the results land, complete, in a new file in a new folder; nothing else is left."
    target = tmp_path / 'new' / 'results.json'
    rc, out, err = _argv(monkeypatch, capsys, hjepa_eval, 'hjepa-eval', ckpt, '--out', target, 'eval.knn_k=3', '--linear')
    assert rc == 0, err[-2000:]
    res = json.loads(target.read_text())
    assert res['step'] == 2 and res['checkpoint'] == str(ckpt) and 'linear' in res and 'kNN-3' in out
    assert [p.name for p in target.parent.iterdir()] == ['results.json']

def test_eval_disk_full_is_one_line(tmp_path, ckpt, monkeypatch, capsys):
    "An OSError while writing the results (ENOSPC, simulated) is one line naming the file, not a traceback."
    def full(self, *a, **k): raise OSError(28, 'No space left on device', str(self))
    monkeypatch.setattr(Path, 'write_text', full)
    rc, out, err = _run(capsys, hjepa_eval, str(ckpt), out=str(tmp_path / 'results.json'))
    _one_line_error('hjepa-eval', rc, err, 'No space left on device', tmp_path / '.results.json')
    assert list(tmp_path.iterdir()) == []

# --- 2. a checkpoint that does not fit: the differing settings or parameters are named ------------------------------

def test_eval_overrides_that_change_the_model(ckpt):
    r = cli('hjepa-eval', ckpt, 'model.depth=3', 'eval.knn_k=3')
    line = _one_line_error('hjepa-eval', r.returncode, r.stderr, ckpt, 'model.depth (2 -> 3)')
    assert 'eval.knn_k' not in line and 'state_dict' not in r.stderr, r.stderr

def test_eval_checkpoint_whose_config_and_weights_disagree(tmp_path, ckpt, capsys):
    st = load_checkpoint(ckpt)
    st['cfg']['model']['pred_depth'] = 2                                     # the weights have 1 predictor block
    torch.save(st, tmp_path / 'odd.pt')
    rc, out, err = _run(capsys, hjepa_eval, str(tmp_path / 'odd.pt'))
    _one_line_error('hjepa-eval', rc, err, tmp_path / 'odd.pt', 'do not match the model its stored config builds',
                    'predictor.blocks.1.')
    assert 'state_dict' not in err

# --- 3. usage: overrides are optional and may follow options; bad config input is one line -------------------------

@pytest.mark.parametrize('f, prog, usage', [(hjepa_train, 'hjepa-train', 'config [key=value ...]'),
                                            (hjepa_eval, 'hjepa-eval', 'checkpoint [key=value ...]'),
                                            (hjepa_export, 'hjepa-export', 'checkpoint')])
def test_help_shows_overrides_as_optional(monkeypatch, capsys, f, prog, usage):
    "The usage line; every option with a one-line meaning; examples at the end."
    rc, out, err = _argv(monkeypatch, capsys, f, prog, '--help')
    assert rc == 0, err
    first = ' '.join(out.split('\n\n')[0].split())                        # the usage line(s), rewrapped
    assert first.startswith(f'usage: {prog} ') and first.endswith(usage), first
    assert {'hjepa-train': '--out DIR', 'hjepa-eval': '--out FILE.json', 'hjepa-export': '--out DIR'}[prog] in first, first
    opts = [l.strip() for l in out.split('options:')[1].split('examples:')[0].splitlines() if l.strip()]
    assert len(opts) >= 3 and all(re.match(r'-\S+( [-A-Za-z.=]+)?\s{2,}\S', l) for l in opts), opts   # each with its meaning
    examples = out.split('examples:\n')[1].splitlines()
    assert len(examples) >= 2 and all(l.startswith(f'  {prog} ') or 'torchrun' in l or 'python' in l for l in examples), out

def test_train_overrides_after_out(tmp_path, tiny):
    "The issue's command, as typed: overrides after `--out DIR` (and after a flag) reach the config."
    run = tmp_path / 'x'
    r = cli('hjepa-train', 'configs/demo.yaml', '--out', run, *tiny, '--quiet', 'optim.lr=1e-4', 'train.max_steps=2')
    assert r.returncode == 0, r.stderr[-2000:]
    st = load_checkpoint(run / 'last.pt')
    assert st['step'] == 2 and st['cfg']['optim']['lr'] == 1e-4 and st['cfg']['model']['depth'] == 2

@pytest.mark.parametrize('args, needles', [
    (['{tmp}/missing.yaml'], ['config file not found', 'missing.yaml']),
    (['{tmp}'], ['is a folder', '{tmp}']),
    ([DEMO, 'train.device=gpu0'], ['train.device', 'gpu0']),
    ([DEMO, 'train.seed=abc'], ['train.seed', 'abc']),
    ([DEMO, '--out', '{tmp}/run', 'optim.learning_rate=1'], ['optim.learning_rate', 'configs/demo.yaml', "did you mean 'optim.lr'"]),
    (['{tmp}/bad_value.yaml', '--out', '{tmp}/run'], ['model.img_size', 'bad_value.yaml']),
    (['{tmp}/bad_syntax.yaml', '--out', '{tmp}/run'], ['bad_syntax.yaml', 'not valid YAML']),
])
def test_train_bad_config_is_one_line(tmp_path, monkeypatch, capsys, args, needles):
    (tmp_path / 'bad_value.yaml').write_text('model:\n  img_size: 30\n'); (tmp_path / 'bad_syntax.yaml').write_text('optim: [1, 2\n')
    args = [a.format(tmp=tmp_path) for a in args]
    rc, out, err = _argv(monkeypatch, capsys, hjepa_train, 'hjepa-train', *args, '--quiet')
    _one_line_error('hjepa-train', rc, err, *[n.format(tmp=tmp_path) for n in needles])
    assert not (tmp_path / 'run').exists()

# --- 4. the OS's errors while training (a full disk): one line naming the file; the last checkpoint survives ----------

@pytest.mark.parametrize('named', [True, False])
def test_train_disk_full_keeps_last_checkpoint(tmp_path, tiny, monkeypatch, capsys, named):
    run = tmp_path / 'run'
    rc, out, err = _run(capsys, train_main, DEMO, [*tiny, 'train.max_steps=2'], out=str(run), quiet=True)
    assert rc == 0, err[-2000:]
    before = (run / 'last.pt').read_bytes()
    def full(obj, f, *a, **k): raise OSError(28, 'No space left on device', *([str(f)] if named else []))
    monkeypatch.setattr(torch, 'save', full)
    rc, out, err = _run(capsys, train_main, DEMO, [*tiny, 'train.max_steps=8'], out=str(run), resume=True, quiet=True)
    # the OS names the file it could not write; when it names none, the run folder is named instead
    _one_line_error('hjepa-train', rc, err, 'No space left on device', run if named else f'(run folder {run})')
    assert (run / 'last.pt').read_bytes() == before
    assert not list(run.glob('.*.tmp'))

# --- 5. a mistake is answered at once: the front reads and checks everything it can before torch is loaded --------------

FRONT = """import sys, time
t = time.perf_counter()
sys.argv = ['hjepa-train', *sys.argv[1:]]
from hjepa_nb.cli import hjepa_train
try: hjepa_train()
finally: print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules), file=sys.stdout)
"""

@pytest.mark.parametrize('args, needles', [
    (['configs/demo.yaml', 'optim.lr=abc'], ['optim.lr', 'abc']),
    (['{tmp}/old.yaml'], ['eval.linear_epochs was removed', 'old.yaml']),
    (['configs/demo.yaml', 'eval.linear_epochs=5'], ['eval.linear_epochs was removed', 'command line']),
    (['configs/demo.yaml', '--out', '{tmp}/empty', '--resume'], ['holds no run to resume (no last.pt)']),
    (['configs/demo.yaml', '--out', '{tmp}/done'], ['already holds a run (last.pt, metrics.jsonl)', '--overwrite']),
])
def test_bad_start_is_answered_before_torch_loads(tmp_path, args, needles):
    "Each of these is refused by the front alone: one line, exit 2, and neither torch nor timm was imported."
    (tmp_path / 'old.yaml').write_text('eval:\n  linear_epochs: 100\n')
    (tmp_path / 'done').mkdir(); (tmp_path / 'done' / 'last.pt').write_bytes(b''); (tmp_path / 'done' / 'metrics.jsonl').write_text('')
    r = subprocess.run([sys.executable, '-c', FRONT, *[a.format(tmp=tmp_path) for a in args]], capture_output=True, text=True, cwd=ROOT)
    _one_line_error('hjepa-train', r.returncode, r.stderr, *needles)
    assert r.stdout.strip() == '[]', r.stdout

def test_bad_config_time_as_typed():
    "The issue's command through the installed script; prints the seconds it took (best of 3; no bound: speed lives in bench/)."
    times = []
    for _ in range(3):
        t = time.perf_counter(); r = cli('hjepa-train', 'configs/demo.yaml', 'optim.lr=abc'); times.append(time.perf_counter() - t)
        _one_line_error('hjepa-train', r.returncode, r.stderr, 'optim.lr', 'abc')
    print(f"\nhjepa-train configs/demo.yaml optim.lr=abc: {min(times):.2f} s (best of 3)")
