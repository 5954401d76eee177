"""Whole training runs with and without the opt-in CPU-math fix (hjepa_nb.fastmath, `train.cpu_math=fastmath`), side by side.

    python bench/cpu_math.py                 # writes bench/results/cpu_math.{json,md}
    python bench/cpu_math.py --rounds 1 --steps 4 --settings cifar10_tiny   # a quick look

Each measurement is the real command line a user types, `hjepa-train CONFIG ... --quiet`, in a fresh process, on
the shared CIFAR-10 folder. Variants alternate within each round (order rotated each round), so machine load hits
all of them alike:

- `default`: `train.cpu_math=default`, the kit's default (MKL as torch ships it: generic kernels on AMD CPUs)
- `fastmath`: `train.cpu_math=fastmath` (hjepa-train restarts itself with the MKL vendor-check shim preloaded and
  `HJEPA_FASTMATH=on`; where `fastmath_plan('fastmath')` finds nothing to do, this is `default`: the report says which)
- `fastmath+passive`: as `fastmath`, with `OMP_WAIT_POLICY=PASSIVE` (OpenMP threads sleep instead of spinning when idle)
Every run starts without LD_PRELOAD, HJEPA_FASTMATH, OMP_WAIT_POLICY or OMP_NUM_THREADS from the caller's environment.

Figures: images/s of training (median of the per-log-line rates, first line dropped: it holds worker start-up),
the process's wall time start to finish (includes the restart), and the final loss (the fix must not change the
run beyond fp32 rounding).
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    'cifar10_tiny': ['configs/cifar10_tiny.yaml', 'data.num_workers=2'],
    'quick_validation': ['configs/quick_validation.yaml', 'data.dataset=folder'],
}
VARIANTS = {   # name: (overrides, environment)
    'default': (['train.cpu_math=default'], {}),
    'fastmath': (['train.cpu_math=fastmath'], {}),
    'fastmath+passive': (['train.cpu_math=fastmath'], {'OMP_WAIT_POLICY': 'PASSIVE'}),
}

def run_once(setting: str, variant: str, steps: int) -> dict:
    cfg, *ov = SETTINGS[setting]
    over, extra = VARIANTS[variant]
    env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'HJEPA_FASTMATH', 'OMP_WAIT_POLICY', 'OMP_NUM_THREADS')}
    env.update(extra)
    with tempfile.TemporaryDirectory() as d:
        exe = shutil.which('hjepa-train')
        if exe is None: raise SystemExit('hjepa-train is not on PATH: pip install -e .')
        cmd = [exe, cfg, *ov, *over,
               f'train.max_steps={steps}', 'log.every=1', 'eval.every=0', 'log.monitor_every=0', 'log.tensorboard=false',
               'train.ckpt_every=100000', 'train.keep_best=0', '--out', d, '--quiet']
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
        wall = time.perf_counter() - t0
        if r.returncode: raise RuntimeError(f"{setting}/{variant}: {r.stderr.strip()[-500:]}")
        rows = [json.loads(l) for l in open(Path(d) / 'metrics.jsonl') if l.strip()]
    rates = [x['img_s'] for x in rows if 'img_s' in x][1:]
    return dict(img_s=statistics.median(rates), img_s_all=rates, wall_s=round(wall, 2),
                loss=[x['loss'] for x in rows if 'loss' in x][-1])

def report(res: dict) -> str:
    L = ['# hjepa-train with and without the CPU-math fix (`train.cpu_math=fastmath`, `hjepa_nb.fastmath`)', '',
         f"Command: `{res['command']}`  ", f"Date {res['date']}, torch {res['torch']}, CPU vendor {res['vendor']}, "
         f"{os.cpu_count()} logical CPUs; load average {res['loadavg_start']} -> {res['loadavg_end']}.  ",
         f"fastmath plan here: {res.get('fastmath_plan', '?')}", '',
         'img/s: median over the log lines of a run, then median over rounds. Speed-up: per-round ratio to `default`, '
         'median over rounds. Wall: whole process, start-up and the restart included.', '',
         '| setting | variant | img/s | speed-up vs default | wall s | final loss | rounds |', '|---|---|---|---|---|---|---|']
    for s, vs in res['runs'].items():
        for v, rs in vs.items():
            ratios = [r['img_s'] / d['img_s'] for r, d in zip(rs, vs['default'])]
            L.append(f"| {s} | {v} | {statistics.median(r['img_s'] for r in rs):.1f} | **{statistics.median(ratios):.2f}x** | "
                     f"{statistics.median(r['wall_s'] for r in rs):.1f} | {rs[-1]['loss']:.5f} | {len(rs)} |")
    return '\n'.join(L) + '\n'

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--steps', type=int, default=0, help='optimizer steps per run (0: 12 for cifar10_tiny, 6 for quick_validation)')
    ap.add_argument('--settings', nargs='*', default=list(SETTINGS))
    ap.add_argument('--variants', nargs='*', default=list(VARIANTS))
    ap.add_argument('--out', default='bench/results/cpu_math')
    a = ap.parse_args()
    import torch
    from hjepa_nb.fastmath import cpu_vendor, fastmath_plan
    os.environ.pop('HJEPA_FASTMATH', None)             # as in the runs (run_once), for the plan's reason below
    res = dict(command='python bench/cpu_math.py ' + ' '.join(sys.argv[1:]), date=time.strftime('%Y-%m-%d %H:%M'),
               torch=torch.__version__, vendor=cpu_vendor(), fastmath_plan=fastmath_plan('fastmath').reason, loadavg_start=[round(x, 2) for x in os.getloadavg()],
               runs={s: {v: [] for v in a.variants} for s in a.settings})
    for k in range(a.rounds):
        for s in a.settings:
            steps = a.steps or {'cifar10_tiny': 12, 'quick_validation': 6}[s]
            order = a.variants[k % len(a.variants):] + a.variants[:k % len(a.variants)]
            for v in order:
                r = run_once(s, v, steps); res['runs'][s][v].append(r)
                print(f"round {k} {s:16s} {v:13s} {r['img_s']:6.1f} img/s  wall {r['wall_s']:5.1f} s  loss {r['loss']:.5f}", flush=True)
    res['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    out = ROOT / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(res, indent=1))
    md = report(res); out.with_suffix('.md').write_text(md); print(md)

if __name__ == '__main__':
    main()
