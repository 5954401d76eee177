"""Where one training step's time goes on this CPU, and how fast each numeric path trains, side by side in one process.

    python bench/profile_step.py                                   # cifar10_tiny + quick_validation -> bench/results/profile_step.{json,md}
    python bench/profile_step.py --configs demo --steps 2 --warmup 1 --out /tmp/p   # a smoke run

For each config and path it builds the kit's own `Learner` (the step timed is `Learner.one_step`, the one training runs)
on the offline synthetic sample at the config's image size, collates a fixed set of batches with the config's masks
(a loader built as the Learner builds its own: bench/common.py train_batches), and then:
- times `--steps` optimizer steps (after `--warmup` untimed ones; compile time is reported separately), paths
  interleaved round by round so that machine load hits them alike;
- profiles a few steps with `torch.profiler`: milliseconds per phase (the `record_function` labels of `one_step`:
  forward, backward, clip, optimizer, ema) and per op (self CPU time), and the share of the step spent in matmul ops;
- counts the step's matmul FLOPs (`torch.utils.flop_counter`) and divides by the step time: model FLOP utilisation
  against the matmul rate of the path's dtype, measured in the same process (2048^2, the step's thread count).

Paths (`--paths`): `fp32` (train.amp=none), `bf16` (train.amp=bf16 with PyTorch's fused attention kernel), `bf16m` (bf16
with attention as plain matmuls: what train.attention=auto does on a CPU in bf16), `bf16mc` (bf16m + train.compile=true,
dynamic shapes), `fp32c` (fp32 + compile). Default: fp32, bf16, bf16m on a CPU with native bf16 (hjepa_nb.core.native_bf16:
AVX512-BF16 or AMX), else fp32 alone -- there bf16 is emulated (a bf16 2048^2 matmul runs ~50x slower than fp32), so
its matmul rate is measured at 256^2 only and the report says 'no native bf16'.
"""
import argparse, statistics, time
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
import common as C
from hjepa_nb.core import native_bf16
from hjepa_nb.config import load_config
from hjepa_nb.train import Learner

PATHS = dict(fp32=['train.amp=none', 'train.attention=fused'],
             bf16=['train.amp=bf16', 'train.attention=fused'],
             bf16m=['train.amp=bf16', 'train.attention=math'],
             bf16mc=['train.amp=bf16', 'train.attention=math', 'train.compile=true'],
             fp32c=['train.amp=none', 'train.compile=true'])
MATMUL = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::_scaled_dot_product_flash_attention_for_cpu',
          'aten::_scaled_dot_product_flash_attention_for_cpu_backward', 'aten::_weight_int8pack_mm', 'mkldnn::_linear_pointwise')
PHASES = ('forward', 'backward', 'clip', 'optimizer', 'ema')

def matmul_rate(dtype, n: int, reps: int = 5) -> float:
    "Best GFLOP/s of an n x n matmul in `dtype`."
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / min(C.timings(lambda: a @ b, reps, warmup=2)) / 1e9

def make_learner(config: str, path: str, n_batches: int):
    "A set-up Learner for `config` on the synthetic sample at the config's size, and `n_batches` collated batches."
    cfg0 = load_config(C.ROOT / 'configs' / f'{config}.yaml')
    n = cfg0.data.batch_size * cfg0.optim.accum_steps * n_batches
    cfg = load_config(C.ROOT / 'configs' / f'{config}.yaml',
                      ['data.dataset=synthetic', f'data.synthetic_size={max(n, 64)}', 'data.num_workers=0', 'train.max_steps=1000000',
                       'log.monitor_every=0', 'eval.every=0', *PATHS[path]])
    learn = Learner(cfg)
    learn.setup()
    return learn, C.train_batches(learn, n_batches)

def profile_steps(learn, batches, k: int = 3) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(k): learn.one_step(batches[i % len(batches)])
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev) / k / 1e3
    phases = {e.key: e.cpu_time_total / k / 1e3 for e in ev if e.key in PHASES}
    ops = sorted(((e.key, e.self_cpu_time_total / k / 1e3) for e in ev if e.key not in PHASES), key=lambda t: -t[1])
    mm = sum(t for name, t in ops if name in MATMUL)
    return dict(ms_total=total, phases_ms=phases, matmul_ms=mm, matmul_share=mm / max(total, 1e-9), top_ops_ms=ops[:15])

def add_flops(run: dict, gflop: float, rates: dict):
    "GFLOP per step, achieved GFLOP/s and MFU against both matmul rates, and against the path's own dtype (`mfu`)."
    g = gflop / run['step_s']
    run.update(gflop_per_step=gflop, achieved_gflops=g, mfu_fp32=g / rates['fp32'], mfu_bf16=g / rates['bf16'],
               mfu=g / rates['bf16' if run['path'].startswith('bf16') else 'fp32'])

def main():
    native = native_bf16()
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--configs', nargs='+', default=['cifar10_tiny', 'quick_validation'])
    ap.add_argument('--paths', nargs='+', default=['fp32', 'bf16', 'bf16m'] if native else ['fp32'], choices=list(PATHS))
    ap.add_argument('--steps', type=int, default=12, help='timed optimizer steps per path (interleaved rounds of 2)')
    ap.add_argument('--warmup', type=int, default=3, help='untimed steps first (compiles, for the compiled paths)')
    ap.add_argument('--batches', type=int, default=6, help='distinct collated batches cycled through')
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: as is)')
    ap.add_argument('--out', default=str(C.RESULTS / 'profile_step'))
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    res = C.header('profile_step.py')
    bf16_n = 2048 if native else 256                        # emulated bf16 at 2048^2 takes minutes
    res.update(matmul_gflops=dict(fp32=matmul_rate(torch.float32, 2048), bf16=matmul_rate(torch.bfloat16, bf16_n)),
               bf16_matmul_size=bf16_n, runs={})
    rates = res['matmul_gflops']
    print(f"{C.cpu_line(res['cpu'])}; {res['threads']} threads; matmul: fp32 {rates['fp32']:.0f} GFLOP/s (2048^2), "
          f"bf16 {rates['bf16']:.1f} GFLOP/s ({bf16_n}^2)", flush=True)
    for config in a.configs:
        learners = {}
        for p in a.paths:
            learn, batches = make_learner(config, p, a.batches)
            t = time.perf_counter()
            for i in range(a.warmup): learn.one_step(batches[i % len(batches)])
            learners[p] = (learn, batches, time.perf_counter() - t)
        times = {p: [] for p in a.paths}
        for r in range(0, a.steps, 2):                      # interleaved rounds: load hits every path alike
            for p, (learn, batches, _) in learners.items():
                k = iter(range(r, r + 2))
                times[p] += C.timings(lambda: learn.one_step(batches[next(k) % len(batches)]), 2, warmup=0)
        for p, (learn, batches, warm_s) in learners.items():
            imgs = learn.cfg.data.batch_size * learn.cfg.optim.accum_steps
            s = statistics.median(times[p])
            prof = profile_steps(learn, batches)
            run = dict(path=p, overrides=PATHS[p], images_per_step=imgs, step_s=s, img_s=imgs / s, warmup_s=warm_s,
                       step_s_all=times[p], **prof)
            if not p.endswith('c'):
                with FlopCounterMode(display=False) as fc: learn.one_step(batches[0])
                add_flops(run, fc.get_total_flops() / 1e9, rates)
            res['runs'][f'{config}/{p}'] = run
            print(f"{config:>16} {p:>6}: {run['img_s']:7.1f} img/s  step {1e3 * s:7.1f} ms  matmul {100 * prof['matmul_share']:4.1f}%  "
                  + ' '.join(f"{k} {v:.0f}" for k, v in prof['phases_ms'].items()) + (f"  warm-up {warm_s:.0f} s" if p.endswith('c') else ''), flush=True)
        # FLOPs are the same for every path of a config: give the compiled paths the eager count
        base = next((r for k, r in res['runs'].items() if k.startswith(config + '/') and 'gflop_per_step' in r), None)
        for k, r in res['runs'].items():
            if k.startswith(config + '/') and 'gflop_per_step' not in r and base: add_flops(r, base['gflop_per_step'], rates)
    C.write_results(res, a.out, report)

def report(res: dict) -> str:
    m, n = res['matmul_gflops'], res['bf16_matmul_size']
    L = C.md_header(res, 'One training step, profiled')
    L += [f"Matmul rate measured in the same process: fp32 {m['fp32']:.0f} GFLOP/s (2048^2), bf16 {m['bf16']:.1f} GFLOP/s ({n}^2)"
          + ('' if res['cpu']['native_bf16'] else ': **no native bf16** on this CPU (bf16 is emulated; measured at a small size only)')
          + ". The step is `Learner.one_step` on collated batches of the offline sample at the config's size (data loading "
          "excluded). MFU: achieved GFLOP/s over the matmul rate of the path's dtype.", '',
          '| config | path | img/s | ms/step | vs fp32 | matmul share | GFLOP/step | GFLOP/s | MFU | forward / backward / optimizer+ema ms | warm-up s |',
          '|---|---|---|---|---|---|---|---|---|---|---|']
    for k, r in res['runs'].items():
        cfg, ph = k.split('/')[0], r['phases_ms']
        f32 = res['runs'].get(f'{cfg}/fp32', {}).get('img_s')
        vs = f"{r['img_s'] / f32:.2f}x" if f32 else '-'
        L.append(f"| {cfg} | {r['path']} | {r['img_s']:.1f} | {1e3 * r['step_s']:.0f} | {vs} | "
                 f"{100 * r['matmul_share']:.0f}% | {r.get('gflop_per_step', 0):.1f} | {r.get('achieved_gflops', 0):.0f} | "
                 f"{100 * r.get('mfu', 0):.1f}% | {ph.get('forward', 0):.0f} / {ph.get('backward', 0):.0f} / "
                 f"{ph.get('optimizer', 0) + ph.get('ema', 0):.0f} | {r['warmup_s']:.0f} |")
    for k, r in res['runs'].items():
        L += ['', f"**{k}**: top ops by self CPU time (ms per step; profiler total {r['ms_total']:.0f} ms)", '',
              ' · '.join(f"{n} {t:.1f}" for n, t in r['top_ops_ms'][:12])]
    return '\n'.join(L) + '\n'

if __name__ == '__main__':
    main()
