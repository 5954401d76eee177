"""Where one training step's time goes on this CPU, and how fast each numeric path trains, side by side in one process.

    python bench/profile_step.py                                   # cifar10_tiny + quick_validation -> bench/results/profile_step.{json,md}
    python bench/profile_step.py --configs cifar10_tiny --paths fp32 bf16 --steps 4   # a quick look

For each config and path it builds the kit's own `Learner` (the step timed is `Learner.one_step`, the one training runs)
on the offline synthetic sample at the config's image size, collates a fixed set of batches with the config's masks,
and then:
- times `--steps` optimizer steps (after `--warmup` untimed ones; compile time is reported separately), paths
  interleaved round by round so that machine load hits them alike;
- profiles a few steps with `torch.profiler`: milliseconds per phase (the `record_function` labels of `one_step`:
  forward, backward, clip, optimizer, ema) and per op (self CPU time), and the share of the step spent in matmul ops;
- counts the step's matmul FLOPs (`torch.utils.flop_counter`) and divides by the step time: model FLOP utilisation
  against the bf16 and fp32 matmul rates measured in the same process (2048^2 matmuls, the step's thread count).

Paths (`--paths`): `fp32` (train.amp=none), `bf16` (train.amp=bf16 with PyTorch's fused attention kernel: the bf16 step
as the kit shipped it), `bf16m` (bf16 with attention as plain matmuls: what train.attention=auto does on a CPU in bf16),
`bf16mc` (bf16m + train.compile=true: inductor fuses the elementwise work; dynamic shapes, since token counts change
from batch to batch), `fp32c` (fp32 + compile).
"""
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hjepa_nb.core import native_bf16
from hjepa_nb.config import load_config
from hjepa_nb.train import Learner

PATHS = dict(fp32=['train.amp=none', 'train.attention=fused'],            # the kit's fp32 step
             bf16=['train.amp=bf16', 'train.attention=fused'],            # bf16 autocast as the kit shipped it (fused attention)
             bf16m=['train.amp=bf16', 'train.attention=math'],            # + attention as plain matmuls (train.attention=auto on a CPU)
             bf16mc=['train.amp=bf16', 'train.attention=math', 'train.compile=true'],   # + torch.compile (inductor)
             fp32c=['train.amp=none', 'train.compile=true'])
MATMUL = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::_scaled_dot_product_flash_attention_for_cpu',
          'aten::_scaled_dot_product_flash_attention_for_cpu_backward', 'aten::_weight_int8pack_mm', 'mkldnn::_linear_pointwise')
PHASES = ('forward', 'backward', 'clip', 'optimizer', 'ema')

def cpu_name() -> str:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
        if line.startswith('model name'): return line.split(':', 1)[1].strip()
    return platform.processor()

def matmul_rate(dtype, n: int = 2048, reps: int = 5) -> float:
    "Best GFLOP/s of an n x n matmul in `dtype`."
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2): a @ b
    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9

def make_learner(config: str, path: str, n_batches: int):
    "A Learner for `config` on the synthetic sample at the config's size, and `n_batches` collated batches."
    cfg0 = load_config(ROOT / 'configs' / f'{config}.yaml')
    n = cfg0.data.batch_size * cfg0.optim.accum_steps * n_batches
    cfg = load_config(ROOT / 'configs' / f'{config}.yaml',
                      ['data.dataset=synthetic', f'data.synthetic_size={max(n, 64)}', 'data.num_workers=0', 'train.max_steps=1000000',
                       'log.monitor_every=0', 'eval.every=0', *PATHS[path]])
    learn = Learner(cfg, out_dir=ROOT / 'runs' / 'profile_step')
    learn.setup()
    it, a = iter(learn.dl), cfg.optim.accum_steps
    batches = [[next(it) for _ in range(a)] for _ in range(n_batches)]
    return learn, batches

def step_flops(learn, micro) -> int:
    with FlopCounterMode(display=False) as fc: learn.one_step(micro)
    return fc.get_total_flops()

def profile_steps(learn, batches, k: int = 3) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(k): learn.one_step(batches[i % len(batches)])
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev) / k / 1e3
    phases = {e.key: e.cpu_time_total / k / 1e3 for e in ev if e.key in PHASES}
    ops = sorted(((e.key, e.self_cpu_time_total / k / 1e3) for e in ev if e.key not in PHASES), key=lambda t: -t[1])
    mm = sum(t for name, t in ops if name in MATMUL)
    return dict(ms_total=total, phases_ms=phases, matmul_ms=mm, matmul_share=mm / max(total, 1e-9), top_ops_ms=ops[:15])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--configs', nargs='+', default=['cifar10_tiny', 'quick_validation'])
    ap.add_argument('--paths', nargs='+', default=['fp32', 'bf16', 'bf16m'], choices=list(PATHS))
    ap.add_argument('--steps', type=int, default=12, help='timed optimizer steps per path (interleaved rounds of 2)')
    ap.add_argument('--warmup', type=int, default=3, help='untimed steps first (compiles, for the compiled paths)')
    ap.add_argument('--batches', type=int, default=6, help='distinct collated batches cycled through')
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: as is)')
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'profile_step'))
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    res = dict(command='python bench/profile_step.py ' + ' '.join(sys.argv[1:]), date=time.strftime('%Y-%m-%d %H:%M'),
               cpu=cpu_name(), native_bf16=native_bf16(),
               threads=torch.get_num_threads(), torch=torch.__version__,
               matmul_gflops=dict(fp32=matmul_rate(torch.float32), bf16=matmul_rate(torch.bfloat16)), runs={})
    print(f"{res['cpu']}, {res['threads']} threads; 2048^2 matmul: fp32 {res['matmul_gflops']['fp32']:.0f} GFLOP/s, "
          f"bf16 {res['matmul_gflops']['bf16']:.0f} GFLOP/s", flush=True)
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
                for i in range(2):
                    t = time.perf_counter(); learn.one_step(batches[(r + i) % len(batches)]); times[p].append(time.perf_counter() - t)
        for p, (learn, batches, warm_s) in learners.items():
            imgs = learn.cfg.data.batch_size * learn.cfg.optim.accum_steps
            s = statistics.median(times[p])
            flops = step_flops(learn, batches[0]) if not p.endswith('c') else None
            prof = profile_steps(learn, batches)
            run = dict(path=p, overrides=PATHS[p], images_per_step=imgs, step_s=s, img_s=imgs / s, warmup_s=warm_s,
                       step_s_all=times[p], **prof)
            if flops: run.update(gflop_per_step=flops / 1e9, achieved_gflops=flops / s / 1e9,
                                 mfu_bf16=flops / s / 1e9 / res['matmul_gflops']['bf16'],
                                 mfu_fp32=flops / s / 1e9 / res['matmul_gflops']['fp32'])
            res['runs'][f'{config}/{p}'] = run
            print(f"{config:>16} {p:>6}: {run['img_s']:7.1f} img/s  step {1e3 * s:7.1f} ms  matmul {100 * prof['matmul_share']:4.1f}%  "
                  + ' '.join(f"{k} {v:.0f}" for k, v in prof['phases_ms'].items()) + (f"  warm-up {warm_s:.0f} s" if p.endswith('c') else ''), flush=True)
        # FLOPs are the same for every path of a config: give the compiled paths the eager count
        base = next((r for k, r in res['runs'].items() if k.startswith(config + '/') and 'gflop_per_step' in r), None)
        for k, r in res['runs'].items():
            if k.startswith(config + '/') and 'gflop_per_step' not in r and base:
                g = base['gflop_per_step']
                r.update(gflop_per_step=g, achieved_gflops=g / r['step_s'], mfu_bf16=g / r['step_s'] / res['matmul_gflops']['bf16'],
                         mfu_fp32=g / r['step_s'] / res['matmul_gflops']['fp32'])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(res, indent=1))
    out.with_suffix('.md').write_text(report(res))
    print(report(res))

def report(res: dict) -> str:
    m = res['matmul_gflops']
    L = [f"# One training step, profiled (`{res['command']}`, {res['date']})", '',
         f"CPU: **{res['cpu']}**, {res['threads']} threads, native bf16: {', '.join(res['native_bf16']) or 'none'}; torch {res['torch']}. "
         f"Matmul rate measured in the same process (2048^2): fp32 {m['fp32']:.0f} GFLOP/s, bf16 {m['bf16']:.0f} GFLOP/s. "
         "The step is `Learner.one_step` on collated batches of the offline sample at the config's size (data loading excluded).", '',
         '| config | path | img/s | ms/step | vs fp32 | vs bf16 | matmul share | GFLOP/step | GFLOP/s | MFU (bf16 rate) | forward / backward / optimizer+ema ms | warm-up s |',
         '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for k, r in res['runs'].items():
        cfg = k.split('/')[0]
        ref = lambda p: res['runs'].get(f'{cfg}/{p}', {}).get('img_s')
        ph = r['phases_ms']
        L.append(f"| {cfg} | {r['path']} | {r['img_s']:.1f} | {1e3 * r['step_s']:.0f} | "
                 f"{r['img_s'] / ref('fp32'):.2f}x | " if ref('fp32') else f"| {cfg} | {r['path']} | {r['img_s']:.1f} | {1e3 * r['step_s']:.0f} | - | ")
        L[-1] += (f"{r['img_s'] / ref('bf16'):.2f}x | " if ref('bf16') else '- | ') + \
                 f"{100 * r['matmul_share']:.0f}% | {r.get('gflop_per_step', 0):.1f} | {r.get('achieved_gflops', 0):.0f} | " \
                 f"{100 * r.get('mfu_bf16', 0):.1f}% | {ph.get('forward', 0):.0f} / {ph.get('backward', 0):.0f} / " \
                 f"{ph.get('optimizer', 0) + ph.get('ema', 0):.0f} | {r['warmup_s']:.0f} |"
    for k, r in res['runs'].items():
        L += ['', f"**{k}**: top ops by self CPU time (ms per step; profiler total {r['ms_total']:.0f} ms)", '',
              ' · '.join(f"{n} {t:.1f}" for n, t in r['top_ops_ms'][:12])]
    return '\n'.join(L) + '\n'

if __name__ == '__main__':
    main()
