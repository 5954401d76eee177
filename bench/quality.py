"""Quality benchmark: train a config on ../shared/data/cifar10 for a budget of images seen (or of minutes), then score
20-NN and a linear probe of the trained encoders beside two baselines measured the same way in the same run: raw
pixels, and the same encoder at random initialisation.

    python bench/quality.py --epochs 2                      # 100,000 images; writes bench/results/quality.json + .png
    python bench/quality.py --epochs 0.2 --eval-train 10000 --eval-test 2000 --name lr5e-4 optim.lr=5e-4
    python bench/quality.py --minutes 30                    # the old wall-clock budget (sized by a calibration run)

The schedules (LR warm-up over the first tenth, cosine, weight decay, EMA) are sized to the budget. The kNN curve
during training and its baselines are scored on the same bank / test subsets (--curve-train / --curve-test); the
final figures on --eval-train / --eval-test (0: all 50,000 / 10,000). Both encoders are scored at the end: the EMA
target (I-JEPA's choice) and the context encoder. Wall-clock, img/s and the CPU are reported beside the budget.
"""
import argparse, json, os, platform, shutil, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hjepa_nb.core import seed_everything
from hjepa_nb.config import load_config, config_to_dict
from hjepa_nb.data import build_datasets
from hjepa_nb.hjepa import HJEPA
from hjepa_nb.callbacks import make_learner
from hjepa_nb.checkpoint import read_metrics
from hjepa_nb.evaluate import eval_datasets, evaluate_embed, pixel_features

def cpu_name() -> str:
    "The CPU's model name (what every figure must say it came from)."
    try:
        for l in Path('/proc/cpuinfo').read_text().splitlines():
            if l.startswith('model name'): return l.split(':', 1)[1].strip() + f' ({os.cpu_count()} cores)'
    except OSError: pass
    return platform.processor() or platform.machine()

def calibrate(config, overrides, run, datasets) -> float:
    "Training img/s of `config` on this machine now, from a 12-step run."
    cal = load_config(config, overrides + [f'train.out_dir={run}_cal', 'train.max_steps=12', 'eval.every=0', 'log.progress=false',
                                           'log.tensorboard=false', 'log.monitor_every=0', 'log.every=1'])
    shutil.rmtree(cal.train.out_dir, ignore_errors=True)
    rows = make_learner(cal, datasets=datasets, quiet=True).fit()
    shutil.rmtree(cal.train.out_dir, ignore_errors=True)
    return sum(r['img_s'] for r in rows[4:]) / len(rows[4:])

def score(model_or_fn, etr, ete, encoder=None, linear=True) -> dict:
    "kNN (and linear probe) of one encoder (or a feature function) on the given bank / test sets."
    fn = model_or_fn if encoder is None else (lambda x: model_or_fn.embed(x, encoder))
    r = evaluate_embed(fn, etr, ete, linear=linear)
    return {'knn': r['knn']['acc'], **({'linear': r['linear']['acc']} if linear else {}), 'n_train': r['n_train'], 'n_test': r['n_test']}

def _cached(key: list, compute) -> dict:
    "`compute()`, cached under runs/baselines/ by `key` (what decides its result)."
    import hashlib
    k = json.dumps(key, sort_keys=True)
    f = ROOT / 'runs' / 'baselines' / (hashlib.sha1(k.encode()).hexdigest()[:16] + '.json')
    if f.exists(): return json.loads(f.read_text())['res']
    res = compute()
    f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(dict(key=k, res=res)))
    return res

def baselines(cfg, rnd, etr, ete) -> dict:
    "Random-init scores (decided by the model settings, seed and sizes) and raw-pixel scores (by the data and sizes), cached."
    data = [cfg.data.root, cfg.model.img_size, len(etr), len(ete), 'probe: warm-started L-BFGS']   # the probe decides the linear score too
    return dict(random_init=_cached([config_to_dict(cfg)['model'], cfg.train.seed, *data], lambda: score(rnd, etr, ete, 'target')),
                raw_pixels=_cached(['pixels', *data], lambda: score(pixel_features, etr, ete)))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--epochs', type=float, default=0., help='budget in passes over the 50,000 training images')
    ap.add_argument('--minutes', type=float, default=0., help='budget in minutes of training (sized by a calibration run)')
    ap.add_argument('--config', default='configs/cifar10_tiny.yaml')
    ap.add_argument('--out', default='bench/results/quality.json', help='result json (a .png of the same name beside it)')
    ap.add_argument('--run', default='runs/quality')
    ap.add_argument('--name', default='', help='a label for the recipe table')
    ap.add_argument('--eval-train', type=int, default=0, help='training images for the final kNN bank / probe (0: all)')
    ap.add_argument('--eval-test', type=int, default=0, help='test images scored at the end (0: all 10,000)')
    ap.add_argument('--curve-train', type=int, default=5000, help='kNN bank during training (baselines use the same)')
    ap.add_argument('--curve-test', type=int, default=1000, help='test images scored during training')
    ap.add_argument('--curve-points', type=int, default=8)
    ap.add_argument('--encoders', default='target,context', help='trained encoders scored at the end (comma-separated)')
    ap.add_argument('--warmup', type=float, default=0.1, help='LR warm-up as a fraction of the budget (unless optim.warmup_epochs is given)')
    ap.add_argument('--replot', action='store_true', help='only redraw the .png from the json and the run folder')
    ap.add_argument('--cpu-math', default='default', choices=('fastmath', 'default'),
                    help="as train.cpu_math of hjepa-train: 'fastmath' restarts this process with MKL's fast fp32 kernels on AMD CPUs")
    ap.add_argument('overrides', nargs='*')
    a = ap.parse_args()
    out = Path(a.out)
    if a.replot:
        os.chdir(ROOT); rep = json.loads(out.read_text()); return plot(rep, read_metrics(rep['run']), out.with_suffix('.png'))
    if bool(a.epochs) == bool(a.minutes): ap.error('give one budget: --epochs E or --minutes M')
    if a.cpu_math == 'fastmath':
        from hjepa_nb.fastmath import relaunch
        relaunch('fastmath')
    os.chdir(ROOT)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = load_config(a.config, a.overrides)
    datasets = build_datasets(base)
    n_train = len(datasets[0])
    epochs, cal = a.epochs, None
    if a.minutes:
        cal = calibrate(a.config, a.overrides, a.run, datasets)
        epochs = round(a.minutes * 60 * cal / n_train, 4)
        print(f'calibration: {cal:.0f} img/s -> {epochs} epochs in {a.minutes} min')
    spe = n_train // base.data.batch_size / base.optim.accum_steps
    steps = max(1, round(epochs * spe))
    le = base.log.every
    every = max(le, (steps // a.curve_points) // le * le)       # kNN on logging steps
    warm = [] if any(o.startswith('optim.warmup_epochs=') for o in a.overrides) else [f'optim.warmup_epochs={round(a.warmup * epochs, 4)}']
    cfg = load_config(a.config, warm + a.overrides + [
        f'train.out_dir={a.run}', 'log.progress=false', f'train.epochs={epochs}', 'train.max_steps=0', f'eval.every={every}',
        f'eval.train_subset={a.curve_train}', f'eval.test_subset={a.curve_test}', f'train.time_limit={a.minutes * 1.1 if a.minutes else 0}'])
    shutil.rmtree(cfg.train.out_dir, ignore_errors=True)
    seed_everything(cfg.train.seed)
    rnd = HJEPA.from_config(cfg).eval()                          # the random-init baseline (same seed as the run)
    # the curve's baselines, on the curve's own bank / test subsets
    ctr, cte = eval_datasets(cfg, *datasets, a.curve_train, a.curve_test)
    curve_base = dict(random_init=score(rnd, ctr, cte, 'target', linear=False)['knn'],
                      raw_pixels=score(pixel_features, ctr, cte, linear=False)['knn'])
    t0 = time.time()
    learn = make_learner(cfg, datasets=datasets, quiet=True)
    learn.fit()
    train_s = time.time() - t0
    rows = read_metrics(cfg.train.out_dir)
    knn_s = sum(r.get('knn_s', 0) for r in rows)
    t1 = time.time()
    etr, ete = eval_datasets(cfg, *datasets, a.eval_train, a.eval_test)
    model = learn.model.eval()
    res = {e: score(model, etr, ete, e) for e in a.encoders.split(',')}
    res.update(baselines(cfg, rnd, etr, ete))
    eval_s = time.time() - t1
    images = learn.step * cfg.data.batch_size * cfg.optim.accum_steps
    scored = cfg.eval.encoder if cfg.eval.encoder in res else next(iter(res))
    summary = {k: {'knn': round(v['knn'], 2), 'linear': round(v['linear'], 2)} for k, v in res.items()}
    gain = {m: round(summary[scored][m] - summary['random_init'][m], 2) for m in ('knn', 'linear')}
    mon = [r for r in rows if 'target_rank' in r]
    report = dict(name=a.name, command='python bench/quality.py ' + ' '.join(sys.argv[1:]), config=a.config, overrides=a.overrides,
                  run=cfg.train.out_dir, seed=cfg.train.seed, budget_epochs=epochs, budget_min=a.minutes or None,
                  steps=learn.step, images_seen=images, epochs_seen=round(images / n_train, 3),
                  train_min=round(train_s / 60, 2), eval_min=round(eval_s / 60, 2),
                  img_s=round(images / max(1e-9, train_s - knn_s), 1), img_s_calibration=cal and round(cal, 1),
                  cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__, amp=cfg.train.amp,
                  cpu_math='fastmath' if os.environ.get('HJEPA_FASTMATH') == 'on' else 'default', cpu_math_asked=a.cpu_math,
                  HJEPA_FASTMATH=os.environ.get('HJEPA_FASTMATH'), scored_encoder=scored, gain_vs_random=gain,
                  summary=summary, eval_sizes=[res['target']['n_train'], res['target']['n_test']],
                  curve_sizes=[len(ctr), len(cte)], curve_baselines=curve_base,
                  knn_curve=[(r['step'], r['knn_acc']) for r in rows if 'knn_acc' in r],
                  final_monitor=mon[-1] if mon else None, first_monitor=mon[0] if mon else None,
                  final_loss=next((r['loss'] for r in reversed(rows) if 'loss' in r), None))
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(dict(name=a.name, summary=summary, gain=gain, steps=learn.step, train_min=report['train_min'], img_s=report['img_s'])))
    plot(report, rows, out.with_suffix('.png'))
    try:
        from hjepa_nb.monitor import pca_figure
        pca_figure({'random init': rnd, f'after {report["epochs_seen"]:g} epochs': model}, ete, path=out.with_name(out.stem + '_pca.png'))
    except ImportError: pass

def plot(report: dict, rows: list, path):
    "kNN accuracy over training beside both baselines (same bank / test sizes), and the content diagnostics of the run."
    try:
        import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    except ImportError as e: print('no plot:', e); return
    summ, curve, cb = report['summary'], report['knn_curve'], report['curve_baselines']
    ntr, nte = report['curve_sizes']
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    if curve: ax.plot(*zip(*curve), 'o-', label=f'H-JEPA target encoder ({ntr // 1000}k bank, {nte // 1000}k test)')
    ax.axhline(cb['random_init'], ls='--', c='gray', label='random init (same sizes)')
    ax.axhline(cb['raw_pixels'], ls=':', c='k', label='raw pixels (same sizes)')
    ax.set_xlabel('optimizer step'); ax.set_ylabel('20-NN accuracy (%)'); ax.legend(fontsize=8)
    s = summ[report['scored_encoder']]
    ax.set_title(f"CIFAR-10, {report['epochs_seen']:g} epochs: final kNN {s['knn']:.1f} / linear {s['linear']:.1f} "
                 f"(random {summ['random_init']['knn']:.1f} / {summ['random_init']['linear']:.1f})", fontsize=9)
    mon = [r for r in rows if 'loss_ctxfree' in r]
    if mon:
        st = [r['step'] for r in mon]
        ax2.plot(st, [r['loss_eval'] for r in mon], 'o-', label='loss (held-out batch)')
        ax2.plot(st, [r['loss_ctxfree'] for r in mon], 's--', label='context-free loss (position means)')
        ax2.plot(st, [r['loss_other'] for r in mon], '^:', label='loss, context from another image')
        ax2.set_xlabel('optimizer step'); ax2.set_ylabel('fine-level loss'); ax2.legend(fontsize=8, loc='upper right')
        b = ax2.twinx(); b.plot(st, [r['energy_image'] for r in mon], 'r.-', label='image-specific share of target energy')
        b.set_ylabel('image-specific share', color='r'); b.set_ylim(0, 1)
        ax2.set_title('does the prediction use the image?', fontsize=9)
    fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)

if __name__ == '__main__':
    main()
