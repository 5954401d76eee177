"""fp32 matmul GFLOP/s on this CPU: PyTorch's default path (MKL) against the alternatives PyTorch offers and the MKL
vendor-check shim (`train.cpu_math=fastmath`), side by side.

    python bench/matmul.py                     # ~3-4 min on 2 busy cores -> bench/results/matmul.{json,md}
    python bench/matmul.py --rounds 1 --quick --out /tmp/m   # a smoke run

A *worker* process times every candidate on every shape, interleaved (A, B, C, A, B, C, ...), `--reps` times, and
keeps the median. The driver runs one worker per *variant* of the process -- {default, MKL shim (LD_PRELOAD)} x {2, 1}
threads -- one after another, `--rounds` times; ratios are taken within a round (candidate / default, same threads,
same round), then the median over rounds is reported. Also from process CPU time (threads x FLOP / CPU seconds:
insensitive to time lost to other users of the machine).

Candidates: `default` (torch.mm, MKL sgemm; on AMD CPUs MKL takes a generic code path), `nt_layout` (a @ bT.t(), the
layout nn.Linear uses), `onednn_flag` (torch.backends.mkldnn.matmul.fp32_precision='bf16': oneDNN's brgemm; it only
down-converts on AMX CPUs, the relative error column checks that), `bf16` (bf16 x bf16: only with native bf16 or
`--bf16`, it is emulated elsewhere and takes minutes). The shim is the library's (hjepa_nb.fastmath.build_shim);
`fastmath_plan('fastmath')` says whether `train.cpu_math=fastmath` would preload it here (recorded).
"""
import argparse, json, os, statistics, subprocess, sys, time
import common as C

SHAPES = {  # name: (M, K, N) of [M,K] @ [K,N]
    'square_1024': (1024, 1024, 1024),
    'square_2048': (2048, 2048, 2048),
    'vit_qkv_224_b8': (8 * 197, 192, 576),        # quick_validation: qkv of ViT-Tiny/16, batch 8
    'vit_fc1_32_b256': (256 * 64, 192, 768),      # cifar10_tiny: MLP fc1, batch 256, 64 tokens
    'vit_fc2_32_b256': (256 * 64, 768, 192),      # cifar10_tiny: MLP fc2
}
QUICK_SHAPES = ['square_1024', 'vit_qkv_224_b8']

def worker(a):
    "Time every candidate on every shape in this process, interleaved; print one RESULT line."
    import torch
    torch.set_num_threads(a.threads)
    g, mm, res, relerr = torch.Generator().manual_seed(0), torch.backends.mkldnn.matmul, {}, {}
    for s in a.shapes:
        M, K, N = SHAPES[s]
        x, y = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
        yT, x16, y16 = y.t().contiguous(), x.bfloat16(), y.bfloat16()
        def onednn():
            old, mm.fp32_precision = mm.fp32_precision, 'bf16'
            try: return x @ y
            finally: mm.fp32_precision = old
        fns = dict(default=lambda: torch.mm(x, y), nt_layout=lambda: x @ yT.t(), onednn_flag=onednn, bf16=lambda: x16 @ y16)
        fns = {k: fns[k] for k in a.cands}
        if s == a.shapes[0]:                               # accuracy against fp64, once
            ref = x.double() @ y.double()
            relerr = {k: float((f().double() - ref).norm() / ref.norm()) for k, f in fns.items()}
        for f in fns.values(): f()                         # warm-up (oneDNN primitives, MKL init)
        ts, tc = {k: [] for k in fns}, {k: [] for k in fns}
        for _ in range(a.reps):
            for k, f in fns.items():
                t0, c0 = time.perf_counter(), time.process_time(); f()
                ts[k].append(time.perf_counter() - t0); tc[k].append(time.process_time() - c0)
        flop = 2 * M * K * N
        res[s] = {k: flop / statistics.median(v) / 1e9 for k, v in ts.items()}
        res[s + '@cpu'] = {k: flop * a.threads / statistics.median(v) / 1e9 for k, v in tc.items()}
    print('RESULT ' + json.dumps(dict(gflops=res, relerr_vs_fp64=relerr)))

def run_worker(threads: int, shim, a) -> dict:
    "One worker process with `threads` threads (and the shim preloaded); its RESULT, or the error."
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop('LD_PRELOAD', None); env.pop('HJEPA_FASTMATH', None)
    if a.omp_wait_policy != 'inherit': env['OMP_WAIT_POLICY'] = a.omp_wait_policy
    if shim: env['LD_PRELOAD'] = shim
    p = subprocess.run([sys.executable, __file__, '--worker', '--threads', str(threads), '--reps', str(a.reps),
                        '--shapes', *a.shapes, '--cands', *a.cands], env=env, capture_output=True, text=True)
    line = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    return json.loads(line[-1][7:]) if line and not p.returncode else dict(error=(p.stderr or p.stdout)[-2000:])

def summarize(rounds: list[dict], shapes, cands) -> dict:
    "Per (variant, shape, candidate): median GFLOP/s, and medians over rounds of the ratios to default (wall, CPU time)."
    table = {}
    for v in rounds[0]:
        ok = [r for r in rounds if 'gflops' in r[v] and 'gflops' in r[f"default_t{v.split('_t')[-1]}"]]
        if not ok: continue
        base = [r[f"default_t{v.split('_t')[-1]}"]['gflops'] for r in ok]
        table[v] = {s: {c: dict(gflops_median=statistics.median(r[v]['gflops'][s][c] for r in ok),
                                per_round=[r[v]['gflops'][s][c] for r in ok],
                                ratio_to_default_same_threads=C.median_ratio([r[v]['gflops'][s][c] for r in ok], [b[s]['default'] for b in base]),
                                ratio_cpu_time=C.median_ratio([r[v]['gflops'][s + '@cpu'][c] for r in ok], [b[s + '@cpu']['default'] for b in base]))
                        for c in cands} for s in shapes}
    return table

def report(res: dict) -> str:
    t, cands = res['table'], res['cands']
    L = C.md_header(res, 'fp32 matmul on this CPU: default path vs alternatives')
    L += [f"{res['rounds']} rounds x {res['reps']} reps; workers' OMP_WAIT_POLICY {res['worker_omp_wait_policy']}. "
          "Each cell: wall-clock GFLOP/s (median) and, in brackets, the ratio to the "
          "default path (same threads, same round; median over rounds) / the same ratio from process CPU time.", '',
          f"`train.cpu_math=fastmath` here: {res['fastmath_plan']}." + ('' if 'bf16' in cands else
          ' bf16 not timed (no native bf16 on this CPU; `--bf16` times it anyway).'), '']
    for s in res['shapes']:
        M, K, N = SHAPES[s]
        L += [f'## {s}: [{M}x{K}] @ [{K}x{N}]', '', '| process | ' + ' | '.join(cands) + ' |', '|---|' + '---|' * len(cands)]
        for v in t:
            L.append(f'| {v} | ' + ' | '.join(f"{t[v][s][c]['gflops_median']:.0f} ({t[v][s][c]['ratio_to_default_same_threads']:.2f}x / "
                                             f"{t[v][s][c]['ratio_cpu_time']:.2f}x)" for c in cands) + ' |')
        L.append('')
    L += ['## Relative error vs fp64 (first shape)', '', '| process | ' + ' | '.join(cands) + ' |', '|---|' + '---|' * len(cands)]
    L += [f'| {v} | ' + ' | '.join(f"{e.get(c, float('nan')):.1e}" for c in cands) + ' |' for v, e in res['relerr'].items()]
    L += ['', *(f"- {v}: failed: {e[-300:]!r}" for v, e in res['errors'].items())]
    return '\n'.join(L) + '\n'

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=3, help='repetitions of the whole variant sweep')
    ap.add_argument('--reps', type=int, default=5, help='timed calls per candidate and shape inside a worker')
    ap.add_argument('--quick', action='store_true', help='two shapes only')
    ap.add_argument('--bf16', action='store_true', help='time bf16 even without native bf16 (slow: emulated)')
    ap.add_argument('--out', default=str(C.RESULTS / 'matmul'))
    ap.add_argument('--omp-wait-policy', default='PASSIVE', help="OMP_WAIT_POLICY of the workers ('inherit': leave as is)")
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--threads', type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument('--shapes', nargs='*', help=argparse.SUPPRESS)
    ap.add_argument('--cands', nargs='*', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: return worker(a)
    from hjepa_nb.core import native_bf16
    from hjepa_nb.fastmath import build_shim, fastmath_plan
    a.shapes = QUICK_SHAPES if a.quick else list(SHAPES)
    a.cands = ['default', 'nt_layout', 'onednn_flag'] + (['bf16'] if a.bf16 or native_bf16() else [])
    shim = build_shim()
    shim = str(shim) if shim else None
    variants = [(n, th, so) for n, th, so in (('default_t2', 2, None), ('shim_t2', 2, shim), ('default_t1', 1, None), ('shim_t1', 1, shim))
                if so or n.startswith('default')]
    res = C.header('matmul.py')
    res.update(worker_omp_wait_policy=a.omp_wait_policy, rounds=a.rounds, reps=a.reps, shapes=a.shapes, cands=a.cands, shim=shim,
               fastmath_plan=fastmath_plan('fastmath').reason)
    rounds = []
    for r in range(a.rounds):
        rounds.append({n: run_worker(th, so, a) for n, th, so in variants})
        print(f"round {r + 1}/{a.rounds}: " + ', '.join(f"{k} {v['gflops'][a.shapes[0]]['default']:.0f}" if 'gflops' in v else f"{k} ERROR"
                                                        for k, v in rounds[-1].items()), flush=True)
    res.update(table=summarize(rounds, a.shapes, a.cands), relerr={k: v.get('relerr_vs_fp64', {}) for k, v in rounds[0].items()},
               errors={k: v['error'] for r in rounds for k, v in r.items() if 'error' in v})
    C.write_results(res, a.out, report)

if __name__ == '__main__':
    main()
