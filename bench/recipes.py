"""Recipe search: run bench/quality.py once per override set, all at the same images-seen budget, and collect the
results in bench/results/recipes.json, a markdown table (recipes.md) and a plot (recipes.png).

    python bench/recipes.py --epochs 0.2 --parallel 2      # every recipe of bench/recipes.yaml not yet in recipes.json
    python bench/recipes.py --epochs 0.2 --only nt4 base   # some of them
    python bench/recipes.py --table                        # only redraw the table and plot

With --parallel 2 two recipes run at once, each on one thread and one data worker (on 2 cores this gives more
images per minute in all than one run on two threads); the budget is in images, so results do not depend on it,
only the img/s column does (it is then per run, with the other run beside it).
"""
import argparse, json, subprocess, sys, time
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parent.parent
RES = ROOT / 'bench' / 'results'

def load_results() -> list:
    "Every finished run's json under bench/results/recipes/ (recipes.json is their collection)."
    return [json.loads(f.read_text()) for f in sorted((RES / 'recipes').glob('*.json'))]

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--epochs', type=float, default=0.2)
    ap.add_argument('--recipes', default='bench/recipes.yaml')
    ap.add_argument('--config', default='bench/recipe_base.yaml', help='the config every recipe overrides')
    ap.add_argument('--only', nargs='*', default=None)
    ap.add_argument('--parallel', type=int, default=1)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--eval-train', type=int, default=10000)
    ap.add_argument('--eval-test', type=int, default=2000)
    ap.add_argument('--curve', nargs=3, type=int, default=[3, 2000, 500], metavar=('POINTS', 'BANK', 'TEST'),
                    help='kNN curve during training: points, bank and test sizes (small: the curve costs forward passes)')
    ap.add_argument('--table', action='store_true')
    a = ap.parse_args()
    if a.table: return table(load_results())
    recipes = yaml.safe_load((ROOT / a.recipes).read_text())
    done = {(r['name'], r['budget_epochs'], r['seed']) for r in load_results()}
    todo = [(n, o) for n, o in recipes.items() if (a.only is None or n in a.only) and (n, a.epochs, a.seed) not in done]
    par = ['train.threads=1', 'data.num_workers=1'] if a.parallel > 1 else []
    running = []
    while todo or running:
        while todo and len(running) < a.parallel:
            name, over = todo.pop(0)
            tag = f'{name}_e{a.epochs:g}_s{a.seed}'
            out = RES / 'recipes' / f'{tag}.json'
            cmd = [sys.executable, 'bench/quality.py', '--epochs', str(a.epochs), '--name', name, '--cpu-math', 'fastmath', '--config', a.config,
                   '--eval-train', str(a.eval_train), '--eval-test', str(a.eval_test),
                   '--curve-points', str(a.curve[0]), '--curve-train', str(a.curve[1]), '--curve-test', str(a.curve[2]), '--out', str(out.relative_to(ROOT)),
                   '--run', f'runs/recipes/{tag}', *over, f'train.seed={a.seed}', *par]
            log = open(RES / 'recipes' / f'{tag}.log', 'w')
            print(time.strftime('%H:%M:%S'), 'start', ' '.join(cmd), flush=True)
            running.append((name, out, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(5)
        for item in list(running):
            name, out, p = item
            if p.poll() is None: continue
            running.remove(item)
            if p.returncode or not out.exists(): print(time.strftime('%H:%M:%S'), name, 'FAILED', p.returncode, flush=True); continue
            r = json.loads(out.read_text())
            r['parallel'] = a.parallel
            out.write_text(json.dumps(r, indent=1))
            (RES / 'recipes.json').write_text(json.dumps(load_results(), indent=1))
            print(time.strftime('%H:%M:%S'), name, json.dumps(r['summary']), flush=True)
            table(load_results())

def table(rows: list):
    "recipes.md (one line per run, best first by the scored encoder's linear probe) and recipes.png."
    key = lambda r: -(r['summary']['target']['linear'] + r['summary']['context']['linear'])
    rows = sorted(rows, key=key)
    L = ['# Recipe search (bench/recipes.py)', '',
         'Each row: `python bench/quality.py` at the budget shown, 20-NN and linear probe (whitened, converged) on the bank / '
         'test sizes shown; random init and raw pixels measured in the same run. Gains are over random init.', '',
         '| recipe | epochs | seed | target kNN | target linear | context kNN | context linear | random kNN / linear | pixels kNN / linear | img/s | CPU | overrides |',
         '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        s = r['summary']; ri, px = s['random_init'], s['raw_pixels']
        d = lambda e, m: f"{s[e][m]:.1f} ({s[e][m] - ri[m]:+.1f})"
        L.append(f"| {r['name']} | {r['epochs_seen']:g} | {r['seed']} | {d('target', 'knn')} | {d('target', 'linear')} | "
                 f"{d('context', 'knn')} | {d('context', 'linear')} | {ri['knn']:.1f} / {ri['linear']:.1f} | {px['knn']:.1f} / {px['linear']:.1f} | "
                 f"{r['img_s']:.0f}{' (x' + str(r.get('parallel', 1)) + ')' if r.get('parallel', 1) > 1 else ''} | {r['cpu'].split(' (')[0]} | "
                 f"`{' '.join(r['overrides'])}` |")
    L += ['', f"Sizes: {rows[0]['eval_sizes'][0]} bank / {rows[0]['eval_sizes'][1]} test." if rows else '']
    (RES / 'recipes.md').write_text('\n'.join(L) + '\n')
    try:
        import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    except ImportError: return
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    names = [f"{r['name']} ({r['epochs_seen']:g} ep, s{r['seed']})" for r in rows][::-1]
    y = range(len(rows))
    for off, enc, m, c in ((-0.3, 'target', 'linear', 'tab:blue'), (-0.1, 'context', 'linear', 'tab:cyan'),
                           (0.1, 'target', 'knn', 'tab:orange'), (0.3, 'context', 'knn', 'gold')):
        ax.barh([i + off for i in y], [r['summary'][enc][m] - r['summary']['random_init'][m] for r in rows][::-1], 0.2, color=c, label=f'{enc} {m}')
    ax.axvline(0, c='k', lw=0.8); ax.axvline(5, c='gray', ls=':', lw=0.8)
    ax.set_yticks(list(y)); ax.set_yticklabels(names, fontsize=7); ax.set_xlabel('points above the same encoder at random init')
    ax.legend(fontsize=7, loc='lower right'); fig.tight_layout(); fig.savefig(RES / 'recipes.png', dpi=90); plt.close(fig)

if __name__ == '__main__':
    main()
