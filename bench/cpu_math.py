"""Whole training runs with and without the opt-in CPU-math fix (hjepa_nb.fastmath, `train.cpu_math=fastmath`), side by side.

    python bench/cpu_math.py                 # writes bench/results/cpu_math.{json,md}
    python bench/cpu_math.py --rounds 1 --steps 4 --settings cifar10_tiny --out /tmp/c   # a quick look

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
import argparse, os, statistics
import common as C

SETTINGS = {
    'cifar10_tiny': ['configs/cifar10_tiny.yaml', 'data.num_workers=2'],
    'quick_validation': ['configs/quick_validation.yaml', 'data.dataset=folder'],
    'demo': ['configs/demo.yaml'],                     # offline sample: a smoke run only (not in the default --settings)
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
    r = C.hjepa_train(cfg, [*ov, *over, f'train.max_steps={steps}', 'eval.every=0', 'log.monitor_every=0',
                            'train.ckpt_every=100000', 'train.keep_best=0'], env={**env, **extra}, timeout=1200)
    rates = [x['img_s'] for x in r['rows'] if 'img_s' in x][1:]
    return dict(img_s=statistics.median(rates), img_s_all=rates, wall_s=r['wall_s'], loss=[x['loss'] for x in r['rows'] if 'loss' in x][-1])

def report(res: dict) -> str:
    L = C.md_header(res, 'hjepa-train with and without the CPU-math fix (`train.cpu_math=fastmath`, `hjepa_nb.fastmath`)')
    L += [f"fastmath plan here: {res.get('fastmath_plan', '?')}", '',
          'img/s: median over the log lines of a run, then median over rounds. Speed-up: per-round ratio to `default`, '
          'median over rounds. Wall: whole process, start-up and the restart included.', '',
          '| setting | variant | img/s | speed-up vs default | wall s | final loss | rounds |', '|---|---|---|---|---|---|---|']
    for s, vs in res['runs'].items():
        for v, rs in vs.items():
            sp = C.median_ratio([r['img_s'] for r in rs], [d['img_s'] for d in vs['default']]) if 'default' in vs else float('nan')
            L.append(f"| {s} | {v} | {statistics.median(r['img_s'] for r in rs):.1f} | **{sp:.2f}x** | "
                     f"{statistics.median(r['wall_s'] for r in rs):.1f} | {rs[-1]['loss']:.5f} | {len(rs)} |")
    return '\n'.join(L) + '\n'

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--steps', type=int, default=0, help='optimizer steps per run (0: 12 for cifar10_tiny, 6 for quick_validation)')
    ap.add_argument('--settings', nargs='*', default=['cifar10_tiny', 'quick_validation'])
    ap.add_argument('--variants', nargs='*', default=list(VARIANTS))
    ap.add_argument('--out', default=str(C.RESULTS / 'cpu_math'))
    a = ap.parse_args()
    from hjepa_nb.fastmath import fastmath_plan
    os.environ.pop('HJEPA_FASTMATH', None)             # as in the runs (run_once), for the plan's reason below
    res = C.header('cpu_math.py')
    res.update(fastmath_plan=fastmath_plan('fastmath').reason, runs={s: {v: [] for v in a.variants} for s in a.settings})
    for k in range(a.rounds):
        for s in a.settings:
            steps = a.steps or {'quick_validation': 6}.get(s, 12)
            order = a.variants[k % len(a.variants):] + a.variants[:k % len(a.variants)]
            for v in order:
                r = run_once(s, v, steps); res['runs'][s][v].append(r)
                print(f"round {k} {s:16s} {v:16s} {r['img_s']:6.1f} img/s  wall {r['wall_s']:5.1f} s  loss {r['loss']:.5f}", flush=True)
    C.write_results(res, a.out, report)

if __name__ == '__main__':
    main()
