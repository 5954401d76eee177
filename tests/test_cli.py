"End-to-end tests of `hjepa-train` as a user runs it: the demo config, real CIFAR-10, kill -9 and resume, bad input."
import json, os, re, signal, subprocess, sys, time, shutil
from pathlib import Path
import pytest, torch
from conftest import one_line_error as _one_line_error
from conftest import ROOT, SHARED_CIFAR, cli
from hjepa_nb.checkpoint import read_metrics, load_checkpoint

def _readme_quick_start() -> list[str]:
    "The commands of the first shell block of README.md (comments dropped)."
    block = (ROOT / 'README.md').read_text().split('```sh\n', 1)[1].split('```', 1)[0]
    return [l.split('#')[0].strip() for l in block.splitlines() if l.split('#')[0].strip()]

def test_demo_config_end_to_end(tmp_path):
    "The README's quick start as a newcomer meets it: `hjepa-train configs/demo.yaml` as written, in a fresh folder."
    assert _readme_quick_start() == ['pip install -e ".[dev]"', 'hjepa-train configs/demo.yaml'], _readme_quick_start()
    shutil.copytree(ROOT / 'configs', tmp_path / 'configs')
    r = cli('hjepa-train', *_readme_quick_start()[1].split()[1:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r'train: +\d+%.*\[\d+:\d\d<\d+:\d\d', r.stderr), r.stderr[-2000:]     # a progress bar with its ETA
    tail = r.stdout.strip().splitlines()[-5:]
    assert tail[0].startswith('done: ') and tail[0].endswith('; run folder runs/demo') and tail[1] == 'next:', tail
    cmds = [l.split('#')[0].strip() for l in tail[2:]]
    assert cmds == ['hjepa-eval runs/demo/last.pt', 'hjepa-export runs/demo/last.pt --out runs/demo/export',
                    'jupyter lab nbs/11_live.ipynb'], tail
    assert "watch_run('runs/demo')" in tail[-1], tail
    run = tmp_path / 'runs' / 'demo'
    rows = read_metrics(run)
    assert rows and all(torch.isfinite(torch.tensor(x['loss'])) for x in rows)
    st = load_checkpoint(run / 'last.pt')
    assert st['step'] == rows[-1]['step'] and st['step'] > 10
    # it learns: the last logged loss is below the first
    assert rows[-1]['loss'] < rows[0]['loss'], (rows[0]['loss'], rows[-1]['loss'])

def test_next_steps_are_the_last_lines(tmp_path, tiny):
    "A run ends with its folder and the exact commands for it: evaluate, export, the dashboard notebook."
    run = tmp_path / 'r'
    r = cli('hjepa-train', 'configs/demo.yaml', *tiny, 'train.max_steps=2', '--out', run)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-5].startswith('done: 2 steps, loss ') and lines[-5].endswith(f'; run folder {run}') and lines[-4] == 'next:', lines
    assert lines[-3].startswith(f'  hjepa-eval {run}/last.pt ') and lines[-2].startswith(f'  hjepa-export {run}/last.pt --out {run}/export ')
    assert lines[-1].startswith('  jupyter lab nbs/11_live.ipynb') and f"watch_run('{run}')" in lines[-1], lines

def test_quiet_is_quiet(tmp_path, tiny):
    "--quiet: no data-loading lines, no notes, no progress bar: only the final summary line (and errors)."
    from PIL import Image
    for split, n in (('train', 8), ('test', 4)):
        for c in ('a', 'b'):
            (tmp_path / 'imgs' / split / c).mkdir(parents=True)
            for i in range(n): Image.new('RGB', (32, 32), (40 * i, 200 if c == 'a' else 0, 90)).save(tmp_path / 'imgs' / split / c / f'{i}.png')
    ov = [*tiny, 'data.dataset=folder', f'data.root={tmp_path}/imgs', 'data.batch_size=4', 'train.max_steps=2', 'log.progress=true']
    loud = cli('hjepa-train', 'configs/demo.yaml', *ov, '--out', tmp_path / 'loud')
    assert loud.returncode == 0 and 'images' in loud.stdout, (loud.stdout, loud.stderr[-2000:])    # what --quiet leaves out
    r = cli('hjepa-train', 'configs/demo.yaml', *ov, '--out', tmp_path / 'q', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr == '' and len(r.stdout.strip().splitlines()) == 1 and r.stdout.startswith('done: 2 steps'), (r.stdout, r.stderr)

@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason='needs ../shared/data/cifar10 beside the checkout')
def test_cifar10_folder_few_steps(tmp_path):
    r = cli('hjepa-train', 'configs/cifar10_tiny.yaml', 'train.max_steps=3', 'data.batch_size=16', 'log.every=1',
            'model.depth=2', 'eval.every=0', '--out', tmp_path / 'c', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_metrics(tmp_path / 'c')
    assert [x['step'] for x in rows] == [1, 2, 3]
    assert rows[0]['global_batch'] == 16

def _wait_for(pred, timeout, what):
    t = time.time()
    while time.time() - t < timeout:
        if pred(): return
        time.sleep(0.2)
    raise AssertionError(f'timed out waiting for {what}')

def test_kill9_and_resume_continues_the_same_trajectory(tmp_path, tiny):
    ov = tiny + ['train.max_steps=30', 'train.ckpt_every=5', 'log.every=1']
    ref = cli('hjepa-train', 'configs/demo.yaml', *ov, '--out', tmp_path / 'ref', '--quiet')
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / 'run'
    p = subprocess.Popen([shutil.which('hjepa-train'), 'configs/demo.yaml', *ov, '--out', str(run), '--quiet'], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def past_first_ckpt():
        try: return (run / 'last.pt').exists() and len(read_metrics(run)) >= 12
        except Exception: return False
    _wait_for(past_first_ckpt, 120, 'a checkpoint and 12 logged steps')
    p.send_signal(signal.SIGKILL); p.wait()
    killed_at = load_checkpoint(run / 'last.pt')['step']
    assert 5 <= killed_at < 30
    r = cli('hjepa-train', 'configs/demo.yaml', *ov, '--out', run, '--resume', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = read_metrics(tmp_path / 'ref'), read_metrics(run)
    assert [x['step'] for x in b] == list(range(1, 31))          # no duplicated or missing steps
    for x, y in zip(a[killed_at:], b[killed_at:]):
        assert abs(x['loss'] - y['loss']) <= 1e-5 * max(1, abs(x['loss'])), (x['step'], x['loss'], y['loss'])

def test_sigterm_writes_last_checkpoint(tmp_path, tiny):
    run = tmp_path / 'run'
    p = subprocess.Popen([shutil.which('hjepa-train'), 'configs/demo.yaml', *tiny, 'train.max_steps=100000', 'train.ckpt_every=100000',
                          'log.every=1', '--out', str(run), '--quiet'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / 'metrics.jsonl').exists() and len(read_metrics(run)) >= 3, 120, '3 logged steps')
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    st = load_checkpoint(run / 'last.pt')
    assert st['step'] >= 3 and 'last.pt written' in err

def test_fastmath_opt_in(tmp_path, tiny):
    "Only with train.cpu_math=fastmath does hjepa-train restart itself with MKL's fast kernels (on AMD), say so, and train the same run to fp32 rounding."
    from hjepa_nb.fastmath import fastmath_plan
    ov = [*tiny, 'train.max_steps=4', 'log.every=1']
    env = {'HJEPA_FASTMATH': '', 'LD_PRELOAD': ''}
    fast = cli('hjepa-train', 'configs/demo.yaml', *ov, 'train.cpu_math=fastmath', '--out', tmp_path / 'a', env=env)
    plain = cli('hjepa-train', 'configs/demo.yaml', *ov, '--out', tmp_path / 'b', env=env)
    assert fast.returncode == 0 and plain.returncode == 0, (fast.stderr[-2000:], plain.stderr[-2000:])
    assert 'fp32 math' not in plain.stderr
    assert ('fp32 math: MKL' in fast.stderr) == (fastmath_plan('fastmath').preload is not None), fast.stderr[-2000:]
    a, b = read_metrics(tmp_path / 'a'), read_metrics(tmp_path / 'b')
    assert [x['step'] for x in a] == [x['step'] for x in b] == [1, 2, 3, 4]
    for x, y in zip(a, b): assert abs(x['loss'] - y['loss']) <= 1e-3 * abs(y['loss']), (x['loss'], y['loss'])

# --- bad input: one clear line naming the culprit, exit code 2, nothing saved is lost ----------------

def test_bad_config_as_typed(tmp_path):
    "One bad setting through the installed console script (the other config errors run in-process: tests/test_cli_errors.py)."
    bad = tmp_path / 'bad.yaml'; bad.write_text('model:\n  img_size: 30\n')
    _one_line_error(cli('hjepa-train', bad, '--out', tmp_path / 'o'), 'model.img_size', 'bad.yaml')

def test_missing_data(tmp_path):
    _one_line_error(cli('hjepa-train', 'configs/cifar10_tiny.yaml', f'data.root={tmp_path}/nowhere', '--out', tmp_path / 'o'),
                    'data.root', 'nowhere')

def test_unwritable_output_folder(tmp_path, tiny):
    f = tmp_path / 'a_file'; f.write_text('x')
    _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, '--out', f / 'run'), 'not writable', 'a_file')

def test_failed_start_never_overwrites_a_checkpoint(tmp_path, tiny):
    run = tmp_path / 'run'
    r = cli('hjepa-train', 'configs/demo.yaml', *tiny, 'train.max_steps=2', '--out', run, '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    before = (run / 'last.pt').read_bytes()
    _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, '--out', run), 'already holds a run', '--resume')
    _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, 'model.pred_depth=3', '--out', run, '--resume'),
                    'different settings', 'model.pred_depth (1 -> 3)')
    assert (run / 'last.pt').read_bytes() == before

def test_corrupt_checkpoint(tmp_path, tiny):
    run = tmp_path / 'run'; run.mkdir()
    (run / 'last.pt').write_bytes(b'\x00garbage')
    _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, '--out', run, '--resume'), 'last.pt', 'corrupt')
    assert (run / 'last.pt').read_bytes() == b'\x00garbage'

def test_two_runs_into_one_folder(tmp_path, tiny):
    "A second run into a folder that a live run holds stops at once, naming the folder and the holder; the first run is unharmed."
    run = tmp_path / 'run'
    first = subprocess.Popen([shutil.which('hjepa-train'), 'configs/demo.yaml', *tiny, 'train.max_steps=400', 'log.every=1',
                              '--out', str(run), '--quiet'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / 'metrics.jsonl').exists() and len(read_metrics(run)) >= 1, 120, 'the first run to start')
        _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, '--out', run), 'is in use by another run', f'pid {first.pid}')
        _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, '--out', run, '--resume'), 'is in use by another run')
    finally:
        first.send_signal(signal.SIGTERM); first.communicate(timeout=60)
    rows = read_metrics(run)
    assert [r['step'] for r in rows] == list(range(1, len(rows) + 1))       # one history, the first run's

def test_resume_checks(tmp_path, tiny):
    "--resume on a folder with no run says so; an earlier run is refused, then replaced with --overwrite."
    _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, '--out', tmp_path / 'empty', '--resume'), 'holds no run to resume')
    run = tmp_path / 'run'; run.mkdir(); (run / 'metrics.jsonl').write_text('{"step": 1, "loss": 1.0}\n')
    _one_line_error(cli('hjepa-train', 'configs/demo.yaml', *tiny, '--out', run), 'already holds a run (metrics.jsonl)', '--overwrite')
    assert read_metrics(run) == [{'step': 1, 'loss': 1.0}]
    r = cli('hjepa-train', 'configs/demo.yaml', *tiny, 'train.max_steps=2', 'log.every=1', '--out', run, '--overwrite', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x['step'] for x in read_metrics(run)] == [1, 2]
