"""Where an encoder's evaluation time goes, and the linear probe side by side: the kit's warm-started L-BFGS probe vs the
cold-started one it replaced vs a closed-form ridge classifier, on the same features, with the kNN beside them.

    python bench/probe.py                                   # random-init cifar10_tiny encoder + raw pixels, all 50k / 10k
    python bench/probe.py --checkpoint runs/quality/last.pt --sets trained
    python bench/probe.py --features /tmp/feats.pt           # features saved earlier (dict ftr, ytr, fte, yte)

Features are extracted once per encoder (timed: that is the extraction figure) and kept under runs/probe/ for reruns;
each probe then runs on exactly those tensors, one after another in one process. Writes bench/results/probe.json/.md.
"""
import argparse, time
from pathlib import Path
import torch
import torch.nn.functional as F
from common import ROOT, RESULTS, header, md_header, write_results
from hjepa_nb.config import load_config, from_dict
from hjepa_nb.hjepa import HJEPA
from hjepa_nb.checkpoint import load_checkpoint
from hjepa_nb.evaluate import eval_datasets, extract_features, knn_predict, linear_probe, whiten


def ridge_probe(train_f, train_y, test_f, lams=tuple(10.0 ** k for k in range(-4, 3)), seed: int = 0):
    "Closed-form ridge regression onto one-hot labels of whitened features, `lam` picked on a held-out tenth (one eigh for all)."
    nc = int(train_y.max()) + 1
    xtr, xte = [torch.cat([x, torch.ones(len(x), 1)], 1).double() for x in whiten(train_f.float(), test_f.float())]
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))
    va, tr = perm[:len(xtr) // 10], perm[len(xtr) // 10:]
    def solver(x, y):
        e, V = torch.linalg.eigh(x.T @ x)
        b = V.T @ (x.T @ F.one_hot(y, nc).double())
        return lambda lam: V @ (b / (e + lam * len(x))[:, None])
    sol = solver(xtr[tr], train_y[tr])
    best = max(lams, key=lambda l: (xtr[va] @ sol(l)).argmax(1).eq(train_y[va]).float().mean().item())
    return (xte @ solver(xtr, train_y)(best)).argmax(1)


def features(name: str, a) -> dict:
    "Features `{ftr, ytr, fte, yte, extract_s}` of one set: the random-init encoder, raw pixels, a checkpoint, or a saved file."
    if name == 'file': return torch.load(a.features)
    cache = ROOT / 'runs' / 'probe' / f'{name}_{a.train}_{a.test}.pt'
    if cache.exists() and name != 'trained': return torch.load(cache)
    if name == 'trained':
        st = load_checkpoint(a.checkpoint); cfg = from_dict(st['cfg']); model = HJEPA.from_config(cfg); model.load_state_dict(st['model'])
    else:
        cfg = load_config(ROOT / 'configs' / 'cifar10_tiny.yaml'); torch.manual_seed(0); model = HJEPA.from_config(cfg)
    model.eval()
    tr, te = eval_datasets(cfg, train_subset=a.train, test_subset=a.test)
    embed = (lambda x: x.flatten(1)) if name == 'pixels' else model.embed
    t = time.perf_counter()
    ftr, ytr = extract_features(embed, tr); fte, yte = extract_features(embed, te)
    d = dict(ftr=ftr, ytr=ytr, fte=fte, yte=yte, extract_s=time.perf_counter() - t)
    cache.parent.mkdir(parents=True, exist_ok=True); torch.save(d, cache)
    return d


def timed(f) -> tuple:
    t = time.perf_counter(); out = f(); return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sets', nargs='+', default=['random', 'pixels'], choices=('random', 'pixels', 'trained', 'file'))
    ap.add_argument('--checkpoint', help="a checkpoint for --sets trained")
    ap.add_argument('--features', help="a saved features file for --sets file")
    ap.add_argument('--train', type=int, default=0, help='training images (0: all 50,000)')
    ap.add_argument('--test', type=int, default=0, help='test images (0: all 10,000)')
    ap.add_argument('--probes', nargs='+', default=['warm', 'cold', 'ridge'])
    ap.add_argument('--out', default=str(RESULTS / 'probe'))
    a = ap.parse_args()
    res = dict(header('probe.py'), sets={})
    probes = dict(warm=lambda d: linear_probe(d['ftr'], d['ytr'], d['fte']), cold=lambda d: linear_probe(d['ftr'], d['ytr'], d['fte'], warm=False),
                  ridge=lambda d: ridge_probe(d['ftr'], d['ytr'], d['fte']))
    for s in a.sets:
        d = features(s, a)
        row = dict(n_train=len(d['ytr']), n_test=len(d['yte']), dim=d['ftr'].shape[1], extract_s=round(float(d['extract_s']), 1))
        p, row['knn_s'] = timed(lambda: knn_predict(d['ftr'], d['ytr'], d['fte']))
        row['knn'] = round((p == d['yte']).float().mean().item() * 100, 2)
        for name in a.probes:
            p, t = timed(lambda: probes[name](d))
            row[name] = dict(acc=round((p == d['yte']).float().mean().item() * 100, 2), s=round(t, 2))
            print(s, name, row[name], flush=True)
        res['sets'][s] = row
    write_results(res, a.out, report)


def report(res: dict) -> str:
    lines = md_header(res, 'Evaluation of one encoder: where the time goes, and the linear probe side by side')
    lines += ['| features | bank / test | dim | extraction s | kNN s | kNN % | ' + ' | '.join(f'{p} linear % (s)' for p in ('warm', 'cold', 'ridge')) + ' |',
              '|---|---|---|---|---|---|---|---|---|']
    for s, r in res['sets'].items():
        cells = [f"{r[p]['acc']:.2f} ({r[p]['s']:.1f})" if p in r else '-' for p in ('warm', 'cold', 'ridge')]
        lines.append(f"| {s} | {r['n_train']} / {r['n_test']} | {r['dim']} | {r['extract_s']} | {r['knn_s']:.1f} | {r['knn']:.2f} | " + ' | '.join(cells) + ' |')
    lines += ['', 'warm: the kit\'s probe (L-BFGS along the weight-decay path, each fit from the previous one); cold: the same fits each '
              'from a fresh init (the probe before); ridge: closed form (bench only). Extraction is the feature pass over bank + test.']
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
