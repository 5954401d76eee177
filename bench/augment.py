"""Training augmentation of one micro-batch, side by side: the kit's batch-level `TrainAugment` (one seeded draw for the
batch, one grid_sample) vs the per-item path it replaced (torchvision v2 RandomResizedCrop + flip + normalise, one forked
generator per image), interleaved round by round in one process.

    python bench/augment.py                       # batch 128 at 32 px (cifar10_tiny) -> bench/results/augment.{json,md}
"""
import argparse, statistics
import torch
import torch.utils.benchmark
from common import RESULTS, header, md_header, median_ratio, write_results
from hjepa_nb.core import mix
from hjepa_nb.data import IMAGENET_MEAN, IMAGENET_STD, SyntheticShapes, TrainAugment


def per_item(size: int, scale):
    "The per-item path of commit cc31c85: v2 transforms per image, each under its own forked, seeded generator."
    from torchvision.transforms import v2
    tf = v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    def run(images, b: int):
        out = []
        for i, x in enumerate(images):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mix(0, b, i)); out.append(tf(x))
        return torch.stack(out)
    return run


def batched(size: int, scale):
    aug = TrainAugment(size, scale)
    def run(images, b: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(0, b)); return aug.batch(images)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--size', type=int, default=32)
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--out', default=str(RESULTS / 'augment'))
    a = ap.parse_args()
    images, scale = SyntheticShapes(a.batch, a.size, seed=0).images, (0.3, 1.0)
    paths = dict(per_item=per_item(a.size, scale), batch=batched(a.size, scale))
    ms = {k: [] for k in paths}
    for r in range(a.rounds + 1):
        for k, f in paths.items():
            t = torch.utils.benchmark.Timer('f(x, b)', globals=dict(f=f, x=images, b=r)).blocked_autorange(min_run_time=0.2)
            if r: ms[k].append(t.median * 1e3)                 # round 0 warms up
    res = dict(header('augment.py'), batch=a.batch, size=a.size, ms=ms,
               median_ms={k: statistics.median(v) for k, v in ms.items()}, speedup=median_ratio(ms['per_item'], ms['batch']))
    write_results(res, a.out, report)


def report(res: dict) -> str:
    m = res['median_ms']
    return '\n'.join(md_header(res, 'Training augmentation of one micro-batch: batch-level vs per item') + [
        f"Batch {res['batch']} at {res['size']} px, {len(res['ms']['batch'])} interleaved rounds (medians).", '',
        '| path | ms per batch | ms per image |', '|---|---|---|',
        f"| per item (v2 + a forked generator per image; the kit before) | {m['per_item']:.1f} | {m['per_item'] / res['batch']:.2f} |",
        f"| batch-level `TrainAugment` (now) | {m['batch']:.1f} | {m['batch'] / res['batch']:.3f} |", '',
        f"**{res['speedup']:.1f}x** (median of the per-round ratios)."]) + '\n'


if __name__ == '__main__':
    main()
