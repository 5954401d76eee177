"Two CPU processes with gloo under torchrun: the same trajectory as one process, identical weights, no hang when a rank dies."
import os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import ROOT
from hjepa_nb.checkpoint import read_metrics, load_checkpoint

WORKER = Path(__file__).parent / 'ddp_worker.py'
COMMON = ['train.max_steps=10', 'log.every=1', 'train.ckpt_every=5', 'train.threads=1']

def torchrun(nproc, *args, **kw):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', str(WORKER), *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kw)

def test_two_ranks_match_one_process(tmp_path):
    """2 ranks x batch 16 (DDP averages their gradients) against 1 process x batch 16 x 2 accumulation steps.
    The EpochSampler gives both the same images and micro-batch numbers, so the same masks: the global batch
    and the maths are the same, and only the order of floating-point sums differs."""
    one = subprocess.run([sys.executable, str(WORKER), tmp_path / 'one', *COMMON, 'data.batch_size=16', 'optim.accum_steps=2'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    p = torchrun(2, tmp_path / 'two', *COMMON, 'data.batch_size=16', 'optim.accum_steps=1')
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    a, b = read_metrics(tmp_path / 'one'), read_metrics(tmp_path / 'two')
    assert [r['step'] for r in a] == [r['step'] for r in b] == list(range(1, 11))
    assert b[0]['global_batch'] == a[0]['global_batch'] == 32
    for x, y in zip(a, b):
        assert abs(x['loss'] - y['loss']) <= 1e-4 * abs(x['loss']), (x['step'], x['loss'], y['loss'])
    w0, w1 = torch.load(tmp_path / 'two' / 'rank0.pt'), torch.load(tmp_path / 'two' / 'rank1.pt')
    for k in w0: assert torch.equal(w0[k], w1[k]), k             # ranks hold identical weights, target encoder included
    w = torch.load(tmp_path / 'one' / 'rank0.pt')
    for k in w0: assert torch.allclose(w[k], w0[k], atol=1e-4, rtol=1e-3), k
    assert not (tmp_path / 'two' / 'pid1').read_text() == ''     # rank 1 ran
    assert len(list((tmp_path / 'two').glob('metrics.jsonl'))) == 1

def test_killed_rank_does_not_hang(tmp_path):
    run = tmp_path / 'run'
    p = torchrun(2, run, 'train.max_steps=100000', 'log.every=1', 'train.ckpt_every=3', 'train.threads=1')
    t = time.time()
    while time.time() - t < 180:
        try:
            if (run / 'pid1').exists() and (run / 'last.pt').exists() and len(read_metrics(run)) >= 4: break
        except Exception: pass
        time.sleep(0.3)
    else:
        p.kill(); raise AssertionError('run did not start: ' + p.stderr.read()[-2000:])
    os.kill(int((run / 'pid1').read_text()), signal.SIGKILL)
    t = time.time()
    try: p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill(); raise AssertionError('the surviving rank hung after its peer was killed')
    assert p.returncode != 0
    assert time.time() - t < 120
    st = load_checkpoint(run / 'last.pt')           # intact
    assert st['step'] >= 3
