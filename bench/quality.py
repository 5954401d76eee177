"""Quality benchmark: train configs/cifar10_tiny.yaml on ../shared/data/cifar10 for a fixed wall-clock budget on this
machine, then score kNN (k=20) and a linear probe on the 10,000 test images, beside two baselines measured the same
way in the same run: raw pixels, and the same encoder at random initialisation.

    python bench/quality.py --minutes 30            # writes bench/results/quality.json and quality.png

The budget covers training only (a short calibration run sets max_steps so the LR and EMA schedules finish inside
it); feature extraction and probes come after and are timed separately.
"""
import argparse, json, math, os, platform, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hjepa_nb.config import load_config, seed_everything
from hjepa_nb.data import build_datasets
from hjepa_nb.hjepa import HJEPA
from hjepa_nb.train import Trainer, read_metrics
from hjepa_nb.evaluate import eval_datasets, evaluate_embed, pixel_features

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--minutes', type=float, default=30.)
    ap.add_argument('--config', default='configs/cifar10_tiny.yaml')
    ap.add_argument('--out', default='bench/results')
    ap.add_argument('--run', default='runs/quality')
    ap.add_argument('--eval-train', type=int, default=0, help='training images for the final kNN bank / probe (0: all)')
    ap.add_argument('--eval-test', type=int, default=0, help='test images scored at the end (0: all 10,000)')
    ap.add_argument('--replot', action='store_true', help='only redraw quality.png from quality.json and the run folder')
    ap.add_argument('overrides', nargs='*')
    ap.add_argument('--cpu-math', default='auto', choices=('auto', 'default'),
                    help="as hjepa-train: 'auto' restarts this process with MKL's fast fp32 kernels on AMD CPUs")
    a = ap.parse_args()
    if a.replot: os.chdir(ROOT); return replot(Path(a.out), a.run)
    from hjepa_nb.fastmath import relaunch
    relaunch(a.cpu_math)              # what hjepa-train does: the kit's default math path, fp32
    os.chdir(ROOT)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config, a.overrides + [f'train.out_dir={a.run}', 'log.progress=false'])
    train_ds, test_ds = build_datasets(cfg)
    # calibrate: time a few steps to size the run to the budget
    cal = load_config(a.config, a.overrides + [f'train.out_dir={a.run}_cal', 'train.max_steps=12', 'eval.every=0',
                                               'log.progress=false', 'log.tensorboard=false', 'log.monitor_every=0', 'log.every=1'])
    import shutil; shutil.rmtree(cal.train.out_dir, ignore_errors=True)
    rows = Trainer(cal, datasets=(train_ds, test_ds), quiet=True).fit()
    img_s = sum(r['img_s'] for r in rows[4:]) / len(rows[4:])
    step_s = cfg.data.batch_size * cfg.optim.accum_steps / img_s
    eval_frac = 0.08 if cfg.eval.every else 0.0       # time kNN checks take during training, measured roughly
    steps = int(a.minutes * 60 * (1 - eval_frac) / step_s)
    le = cfg.log.every
    every = max(le, (steps // 12) // le * le)      # kNN on logging steps, about 12 points on the curve
    print(f'calibration: {img_s:.0f} img/s, {step_s*1000:.0f} ms/step -> {steps} steps in {a.minutes} min, kNN every {every}')
    shutil.rmtree(cfg.train.out_dir, ignore_errors=True)
    spe = len(train_ds) // cfg.data.batch_size / cfg.optim.accum_steps
    warm = round(0.1 * steps / spe, 4)                # warm up over the first tenth of the budget
    cfg = load_config(a.config, [f'optim.warmup_epochs={warm}'] + a.overrides +
                      [f'train.out_dir={a.run}', 'log.progress=false', f'train.max_steps={steps}', f'eval.every={every}',
                       f'train.time_limit={a.minutes}'])   # the budget holds even when the machine is slower than calibrated
    t0 = time.time()
    tr = Trainer(cfg, datasets=(train_ds, test_ds), quiet=True)
    tr.fit()
    train_min = (time.time() - t0) / 60
    # final scores on all 10,000 test images, all 50,000 training images as bank / probe training set
    t1 = time.time()
    etr, ete = eval_datasets(cfg, train_ds, test_ds, a.eval_train, a.eval_test)
    model = tr.model.eval()
    res = {'trained': evaluate_embed(model.embed, etr, ete, linear=True)}
    seed_everything(cfg.train.seed)
    rnd = HJEPA.from_config(cfg).eval()
    res['random_init'] = evaluate_embed(rnd.embed, etr, ete, linear=True)
    res['raw_pixels'] = evaluate_embed(pixel_features, etr, ete, linear=True)
    eval_min = (time.time() - t1) / 60
    curve = [(r['step'], r['knn_acc']) for r in read_metrics(cfg.train.out_dir) if 'knn_acc' in r]
    summary = {k: {'knn': v['knn']['acc'], 'linear': v['linear']['acc']} for k, v in res.items()}
    report = dict(command='python bench/quality.py ' + ' '.join(sys.argv[1:]), config=a.config, cpu_math=os.environ.get('HJEPA_CPU_MATH', a.cpu_math), overrides=a.overrides,
                  budget_min=a.minutes, train_min=round(train_min, 2), eval_min=round(eval_min, 2), steps=tr.step,
                  images_seen=tr.step * cfg.data.batch_size * cfg.optim.accum_steps, img_s_calibration=round(img_s, 1),
                  threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(), torch=torch.__version__,
                  summary=summary, knn_curve=curve, details=res)
    (out / 'quality.json').write_text(json.dumps(report, indent=1))
    print(json.dumps(dict(summary=summary, steps=tr.step, train_min=report['train_min']), indent=1))
    plot(report, read_metrics(cfg.train.out_dir), out / 'quality.png')

def plot(report: dict, rows: list, path):
    "kNN accuracy over training beside the baselines, and the collapse metrics of the same run."
    try:
        import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    except ImportError as e: print('no plot:', e); return
    summ, curve = report['summary'], report['knn_curve']
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.plot(*zip(*curve), 'o-', label='H-JEPA during training (5k bank, 1k test)')
    ax.plot([report['steps']], [summ['trained']['knn']], 's', c='tab:blue', ms=9, label='H-JEPA final (full test)')
    ax.axhline(summ['random_init']['knn'], ls='--', c='gray', label='random init (full test)')
    ax.axhline(summ['raw_pixels']['knn'], ls=':', c='k', label='raw pixels (full test)')
    ax.set_xlabel('optimizer step'); ax.set_ylabel('20-NN accuracy (%)'); ax.legend(fontsize=8)
    ax.set_title(f"CIFAR-10 kNN, {report['budget_min']:g} min on this CPU ({report['images_seen'] / 50000:.1f} epochs)", fontsize=10)
    mon = [r for r in rows if 'target_rank' in r]
    if mon:
        st = [r['step'] for r in mon]
        ax2.plot(st, [r['target_rank'] for r in mon], 'o-', label='target effective rank')
        ax2.plot(st, [r['embed_rank'] for r in mon], 's-', label='pooled-embedding effective rank')
        ax2.set_xlabel('optimizer step'); ax2.set_ylabel('effective rank (RankMe)'); ax2.legend(fontsize=8, loc='upper left')
        b = ax2.twinx(); b.plot(st, [r['target_cos'] for r in mon], 'r^--', label='target mean cosine'); b.set_ylabel('mean cosine', color='r')
        b.legend(fontsize=8, loc='upper right'); ax2.set_title('collapse monitor (held-out batch)', fontsize=10)
    fig.tight_layout(); fig.savefig(path, dpi=100); plt.close(fig)

def replot(out: Path, run: str):
    "Redraw quality.png from quality.json and the run's metrics.jsonl (no training)."
    plot(json.loads((out / 'quality.json').read_text()), read_metrics(run), out / 'quality.png')

if __name__ == '__main__':
    main()
