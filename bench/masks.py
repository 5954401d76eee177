"""Time the multi-block mask collator: ms per batch of 256 at 8x8 and 14x14, against a loop-per-sample
sampler written after I-JEPA's `MaskCollator`, side by side in one run; also the explorer's redraw.

    python bench/masks.py            # from the repository root; writes bench/results/masks.json

Each figure is the median of `--reps` calls after a warm-up. `threads=1` is what DataLoader workers run
with (they call torch.set_num_threads(1)); the default thread count is what `num_workers=0` gets.
"""
import argparse, itertools, math, statistics
from multiprocessing import Value

import torch
import common as C
from hjepa_nb.masks import MultiBlockMaskCollator  # noqa: E402
from hjepa_nb.show import mask_explorer  # noqa: E402


class LoopMaskCollator:
    "I-JEPA's multi-block sampler as published (one Python loop per image and block), masks only, for comparison."
    def __init__(self, grid, enc_scale=(0.85, 1.0), pred_scale=(0.15, 0.2), aspect=(0.75, 1.5), npred=4, min_keep=10):
        self.height, self.width = grid
        self.enc_scale, self.pred_scale, self.aspect, self.npred, self.min_keep = enc_scale, pred_scale, aspect, npred, min_keep
        self._itr = Value('i', -1)

    def step(self):
        with self._itr.get_lock():
            self._itr.value += 1
            return self._itr.value

    def _block_size(self, g, scale, aspect):
        r = torch.rand(1, generator=g).item()                     # one number for scale and aspect (as published)
        keep = int(self.height * self.width * (scale[0] + r * (scale[1] - scale[0])))
        ar = aspect[0] + r * (aspect[1] - aspect[0])
        h, w = int(round(math.sqrt(keep * ar))), int(round(math.sqrt(keep / ar)))
        while h >= self.height: h -= 1
        while w >= self.width: w -= 1
        return h, w

    def _block_mask(self, size, acceptable=None):
        h, w = size
        tries, timeout = 0, 20
        while True:
            top = torch.randint(0, self.height - h, (1,))
            left = torch.randint(0, self.width - w, (1,))
            mask = torch.zeros((self.height, self.width), dtype=torch.int32)
            mask[top:top + h, left:left + w] = 1
            if acceptable is not None:
                for k in range(max(len(acceptable) - tries, 0)): mask *= acceptable[k]
            idx = torch.nonzero(mask.flatten())
            if len(idx) > self.min_keep: break
            timeout -= 1
            if timeout == 0: tries, timeout = tries + 1, 20
        comp = torch.ones((self.height, self.width), dtype=torch.int32)
        comp[top:top + h, left:left + w] = 0
        return idx.squeeze(), comp

    def sample_masks(self, B):
        g = torch.Generator(); g.manual_seed(self.step())
        p_size = self._block_size(g, self.pred_scale, self.aspect)
        e_size = self._block_size(g, self.enc_scale, (1., 1.))
        preds, encs = [], []
        keep_p = keep_e = self.height * self.width
        for _ in range(B):
            ps, comps = [], []
            for _ in range(self.npred):
                m, c = self._block_mask(p_size)
                ps.append(m); comps.append(c); keep_p = min(keep_p, len(m))
            preds.append(ps)
            e, _ = self._block_mask(e_size, acceptable=comps)
            encs.append(e); keep_e = min(keep_e, len(e))
        enc = torch.stack([e[:keep_e] for e in encs])
        pred = [torch.stack([p[t][:keep_p] for p in preds]) for t in range(self.npred)]
        return enc, pred


def median_ms(f, reps, warmup=3): return 1000 * statistics.median(C.timings(f, reps, warmup))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--reps', type=int, default=30)
    ap.add_argument('--loop-reps', type=int, default=5)
    ap.add_argument('--out', default=str(C.RESULTS / 'masks.json'))
    a = ap.parse_args()
    res = C.header('masks.py')
    B, default_threads = a.batch, torch.get_num_threads()
    rows = []
    for threads in (1, default_threads) if default_threads > 1 else (1,):
        torch.set_num_threads(threads)
        for grid in ((8, 8), (14, 14)):
            # I-JEPA's loop also applies min_keep to target blocks (len > min_keep): with min_keep=10 a 3x3 target
            # on the 8x8 grid (scale 0.15) is never accepted and the loop never ends, so 8x8 uses min_keep=4 for both.
            mk = 4 if grid == (8, 8) else 10
            ours = MultiBlockMaskCollator(grid=grid, min_keep=mk, seed=0)
            loop = LoopMaskCollator(grid, min_keep=mk)
            steps = itertools.count()                             # a new batch number per call, as in training
            ms = median_ms(lambda: ours.sample_masks(B, step=next(steps)), a.reps)
            ms_loop = median_ms(lambda: loop.sample_masks(B), a.loop_reps, warmup=1)
            imgs = [(torch.rand(3, 4 * grid[0], 4 * grid[1]), 0) for _ in range(B)]
            ms_call = median_ms(lambda: ours(imgs), a.reps)        # plain items: the step comes from the global RNG
            nc = statistics.mean(ours.sample_masks(B, step=s)[0].shape[1] for s in range(20))
            nc_loop = statistics.mean(loop.sample_masks(B)[0].shape[1] for _ in range(5))
            row = dict(threads=threads, grid=f'{grid[0]}x{grid[1]}', batch=B, min_keep=mk, masks_ms=round(ms, 2),
                       collate_ms=round(ms_call, 2), collate_images=f'{B}x3x{4 * grid[0]}x{4 * grid[1]} float',
                       ijepa_loop_ms=round(ms_loop, 1), speedup=round(ms_loop / ms, 1),
                       mean_ctx_kept=round(nc, 1), mean_ctx_kept_ijepa_loop=round(nc_loop, 1))
            rows.append(row)
            print(f"threads={threads} grid {row['grid']} B={B} min_keep={mk}: masks {ms:6.2f} ms/batch | collate with "
                  f"{row['collate_images']} images {ms_call:6.2f} ms | I-JEPA-style loop {ms_loop:7.1f} ms "
                  f"({ms_loop / ms:.0f}x slower) | context kept {nc:.1f} vs {nc_loop:.1f} patches", flush=True)
    torch.set_num_threads(default_threads)
    w = mask_explorer()
    seeds = iter(range(1, 10 ** 6))
    def redraw(): w.sliders['seed'].value = next(seeds)
    explorer_ms = median_ms(redraw, 10, warmup=2)
    print(f"mask_explorer redraw (4 images, 200-draw statistics, PNG): {explorer_ms:.0f} ms")
    res.update(results=rows, explorer_redraw_ms=round(explorer_ms, 1),
               note='median ms per call; masks = sample_masks(B, step); collate = full collate_fn call incl. stacking images')
    C.write_results(res, a.out)

if __name__ == '__main__':
    main()
