"""fp32 matmul GFLOP/s on this CPU: PyTorch's default path (MKL) against the alternatives PyTorch offers,
side by side in one run, plus the MKL vendor-check override (a preloaded shim).

    python bench/matmul.py                     # from the repository root; ~3-4 min on 2 busy cores
    python bench/matmul.py --rounds 1 --quick  # a smoke run (~1 min)

Writes bench/results/matmul.json and bench/results/matmul.md.

How it measures. One *worker* process times every in-process candidate on every shape, interleaved
(candidate A, B, C, A, B, C, ...), `--reps` times, and keeps the median per candidate. The driver starts
workers for each *variant* of the process environment -- {default, MKL shim (LD_PRELOAD)} x {2, 1}
threads -- one after another, and repeats that `--rounds` times, so every variant samples the same
spells of load from other users of the machine. Ratios are taken within a round (variant / default,
same threads, same round), then the median over rounds is reported. Absolute GFLOP/s on a shared
machine are low and noisy; the ratios are the result.

Candidates (in one process):
  default        torch.mm, fp32. On x86 this is MKL sgemm; on AMD CPUs MKL takes a generic code path.
  nt_layout      a @ bT.t() with bT contiguous (the layout nn.Linear uses): does the operand layout matter?
  onednn_flag    torch.backends.mkldnn.matmul.fp32_precision = 'bf16': routes fp32 matmul to oneDNN's
                 brgemm. The flag *allows* bf16 down-conversion; oneDNN only does that on CPUs with AMX,
                 so on this CPU (AVX-512, no AMX) the math stays fp32 -- the relative error column
                 checks this. On an AMX machine the same flag changes numerics.
  mkldnn_linear  oneDNN inner product on mkldnn tensors (inference only: no autograd); for reference.
  bf16           bf16 x bf16 -> bf16 (oneDNN); changes numerics.
Variants (separate processes): the MKL shim `int mkl_serv_intel_cpu_true(void){return 1;}`, compiled
with gcc and preloaded, makes MKL take its Intel (AVX-512) code path. It works only if torch's MKL
calls that symbol through the PLT (checked and reported: `linkage`). It is the library's own shim
(hjepa_nb.fastmath.build_shim), the one `train.cpu_math=fastmath` preloads where
`fastmath_plan('fastmath')` finds it useful (its reason is recorded: `fastmath_plan`).
Extras (one process, default env): inductor's C++ GEMM template (max-autotune, backends='CPP'). It only
applies to constant (frozen, inference) weights, so it is measured on a frozen nn.Linear; training
matmuls in a compiled step still go to ATen (MKL).
"""
from __future__ import annotations
import argparse, glob, json, os, platform, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'bench' / 'results'

SHAPES = {  # name: (M, K, N) of [M,K] @ [K,N]
    'square_1024': (1024, 1024, 1024),
    'square_2048': (2048, 2048, 2048),
    'vit_qkv_224_b8': (8 * 197, 192, 576),        # quick_validation: qkv of ViT-Tiny/16, batch 8
    'vit_fc1_32_b256': (256 * 64, 192, 768),      # cifar10_tiny: MLP fc1, batch 256, 64 tokens
    'vit_fc2_32_b256': (256 * 64, 768, 192),      # cifar10_tiny: MLP fc2
}
QUICK_SHAPES = ['square_1024', 'vit_qkv_224_b8']
CANDIDATES = ['default', 'nt_layout', 'onednn_flag', 'mkldnn_linear', 'bf16']

# ---------------------------------------------------------------------------------------------
def build_shim(dirname: str | None = None) -> str | None:
    "The MKL vendor-check shim `train.cpu_math=fastmath` preloads (hjepa_nb.fastmath.build_shim); its path, or None without a C compiler."
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from hjepa_nb.fastmath import build_shim as _build
    so = _build(dirname)
    return str(so) if so else None


def mkl_linkage() -> dict:
    "How torch's MKL is linked, and whether `mkl_serv_intel_cpu_true` can be interposed with LD_PRELOAD."
    import torch
    lib = Path(torch.__file__).parent / 'lib'
    cpu = lib / 'libtorch_cpu.so'
    sp = Path(torch.__file__).parent.parent
    mkl_so = sorted({os.path.basename(p) for pat in ('libmkl*.so*', '*/libmkl*.so*', '*/lib/libmkl*.so*')
                     for p in glob.glob(str(sp / pat))})
    out = dict(torch_mkl=[l.strip() for l in torch.__config__.show().splitlines() if 'Math Kernel' in l],
               libmkl_shared_objects_in_site_packages=mkl_so, libtorch_cpu=str(cpu))
    def run(cmd):
        try: return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        except Exception as e: return f'ERR {e}'
    if shutil.which('nm'):
        dyn = run(['nm', '-D', '--defined-only', str(cpu)])
        out['mkl_symbols_exported_by_libtorch_cpu'] = sum(1 for l in dyn.splitlines() if ' mkl_' in l)
        out['exports_mkl_serv_intel_cpu_true'] = any(l.endswith(' mkl_serv_intel_cpu_true') for l in dyn.splitlines())
    if shutil.which('readelf'):
        rel = run(['readelf', '-rW', str(cpu)])
        out['plt_relocation_for_mkl_serv_intel_cpu_true'] = any(
            'JUMP_SLOT' in l and l.rstrip().endswith('mkl_serv_intel_cpu_true + 0') for l in rel.splitlines())
    out['verdict'] = (
        'MKL is statically linked into libtorch_cpu.so (no libmkl*.so ships), but its symbols are exported and '
        'called through the PLT, so an LD_PRELOADed definition of mkl_serv_intel_cpu_true is used'
        if not mkl_so and out.get('plt_relocation_for_mkl_serv_intel_cpu_true') else
        'see the fields above: interposition needs a PLT call (JUMP_SLOT relocation) or a shared libmkl')
    return out


# ---------------------------------------------------------------------------------------------
def worker(args):
    "Time every candidate on every shape in this process, interleaved; print one JSON line."
    import torch
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else list(SHAPES)
    g = torch.Generator().manual_seed(0)
    res, relerr = {}, {}
    mm = torch.backends.mkldnn.matmul
    for sname in shapes:
        M, K, N = SHAPES[sname]
        a = torch.randn(M, K, generator=g); b = torch.randn(K, N, generator=g)
        bT = b.t().contiguous()
        am, bTm = a.to_mkldnn(), bT.to_mkldnn()
        a16, b16 = a.bfloat16(), b.bfloat16()
        def onednn():
            old = mm.fp32_precision
            mm.fp32_precision = 'bf16'
            try: return a @ b
            finally: mm.fp32_precision = old
        fns = dict(default=lambda: torch.mm(a, b), nt_layout=lambda: a @ bT.t(), onednn_flag=onednn,
                   mkldnn_linear=lambda: torch._C._nn.mkldnn_linear(am, bTm, None), bf16=lambda: a16 @ b16)
        if sname == shapes[0]:      # accuracy against fp64, once
            ref = a.double() @ b.double()
            for k, f in fns.items():
                r = f(); r = r.to_dense() if r.is_mkldnn else r
                relerr[k] = float((r.double() - ref).norm() / ref.norm())
        for f in fns.values(): f()  # warm-up (oneDNN primitive creation, MKL init)
        ts, tc = {k: [] for k in fns}, {k: [] for k in fns}
        for _ in range(args.reps):
            for k, f in fns.items():
                t0, c0 = time.perf_counter(), time.process_time(); f()
                ts[k].append(time.perf_counter() - t0); tc[k].append(time.process_time() - c0)
        flop = 2 * M * K * N
        res[sname] = {k: flop / statistics.median(v) / 1e9 for k, v in ts.items()}
        res[sname + '@best'] = {k: flop / min(v) / 1e9 for k, v in ts.items()}
        res[sname + '@cpu'] = {k: flop * args.threads / statistics.median(v) / 1e9 for k, v in tc.items()}
    print('RESULT ' + json.dumps(dict(gflops=res, relerr_vs_fp64=relerr, threads=torch.get_num_threads())))


def extras(args):
    "Inductor's C++ GEMM template on a frozen nn.Linear vs eager (default path), and compile times."
    import torch, torch._inductor.config as ic
    torch.set_num_threads(args.threads)
    n = 1024
    out = {}
    ic.freezing = True
    ic.max_autotune = True
    lin = torch.nn.Linear(n, n, bias=False).eval()
    x = torch.randn(n, n)
    ref = x.double() @ lin.weight.double().t()
    fns = {'eager_default': lin}
    for name, backends in (('inductor_autotune_ATEN_CPP', 'ATEN,CPP'), ('inductor_cpp_template', 'CPP')):
        torch._dynamo.reset()
        ic.max_autotune_gemm_backends = backends
        f = torch.compile(lin, mode='max-autotune-no-cudagraphs')
        with torch.no_grad():
            t0 = time.perf_counter(); r = f(x); out[name + '_compile_s'] = time.perf_counter() - t0
        out[name + '_relerr'] = float((r.double() - ref).norm() / ref.norm())
        fns[name] = f
    ts = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(args.reps * 2):
            for k, f in fns.items():
                t0 = time.perf_counter(); f(x); ts[k].append(time.perf_counter() - t0)
    out['gflops'] = {k: 2 * n ** 3 / statistics.median(v) / 1e9 for k, v in ts.items()}
    print('RESULT ' + json.dumps(out))


# ---------------------------------------------------------------------------------------------
def run_worker(mode: str, threads: int, shim: str | None, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop('LD_PRELOAD', None); env.pop('HJEPA_FASTMATH', None)
    if args.omp_wait_policy != 'inherit': env['OMP_WAIT_POLICY'] = args.omp_wait_policy
    if shim: env['LD_PRELOAD'] = shim
    if mode == 'extras': env['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='inductor_')
    cmd = [sys.executable, __file__, '--' + mode, '--threads', str(threads), '--reps', str(args.reps)]
    if args.quick: cmd.append('--quick')
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    if p.returncode or not line:
        return dict(error=(p.stderr or p.stdout)[-2000:])
    return json.loads(line[-1][7:])


def summarize(rounds: list[dict], shapes) -> dict:
    "Median GFLOP/s per (variant, candidate, shape), and the median over rounds of per-round ratios to default."
    variants = list(rounds[0])
    table = {}
    for v in variants:
        table[v] = {}
        for s in shapes:
            table[v][s] = {}
            for c in CANDIDATES:
                vals = [r[v]['gflops'][s][c] for r in rounds if 'gflops' in r[v]]
                best = [r[v]['gflops'][s + '@best'][c] for r in rounds if 'gflops' in r[v]]
                thr = v.split('_t')[-1]
                base = [r[f'default_t{thr}']['gflops'][s]['default'] for r in rounds if 'gflops' in r[v]]
                ratios = [x / y for x, y in zip(vals, base)]
                cpu = [r[v]['gflops'][s + '@cpu'][c] for r in rounds if 'gflops' in r[v]]
                cbase = [r[f'default_t{thr}']['gflops'][s + '@cpu']['default'] for r in rounds if 'gflops' in r[v]]
                table[v][s][c] = dict(gflops_median=statistics.median(vals), gflops_best=max(best),
                                      ratio_to_default_same_threads=statistics.median(ratios), per_round=vals,
                                      gflops_cpu_time=statistics.median(cpu),
                                      ratio_cpu_time=statistics.median(x / y for x, y in zip(cpu, cbase)))
    return table


def markdown(out: dict) -> str:
    t, shapes = out['table'], out['shapes']
    L = ['# fp32 matmul on this CPU: default path vs alternatives', '',
         f"Command: `{out['command']}`  ", f"Date: {out['date']}; torch {out['torch']}; {out['cpu']}; "
         f"{out['rounds']} rounds x {out['reps']} reps; OMP_WAIT_POLICY {out['omp_wait_policy']}; load average at start {out['loadavg_start']}, end {out['loadavg_end']}.", '',
         'Each cell: wall-clock GFLOP/s (median) and, in brackets, the ratio to the default path (same threads, same round; '
         'median over rounds) / the same ratio from process CPU time (threads x FLOP / CPU-seconds: insensitive to time '
         'the process spent preempted by other users). The machine is shared: absolute values are low and vary.', '']
    for s in shapes:
        M, K, N = SHAPES[s]
        L += [f'## {s}: [{M}x{K}] @ [{K}x{N}]', '', '| process | ' + ' | '.join(CANDIDATES) + ' |',
              '|---|' + '---|' * len(CANDIDATES)]
        for v in t:
            cells = [f"{t[v][s][c]['gflops_median']:.0f} ({t[v][s][c]['ratio_to_default_same_threads']:.2f}x / "
                     f"{t[v][s][c]['ratio_cpu_time']:.2f}x)" for c in CANDIDATES]
            L.append(f'| {v} | ' + ' | '.join(cells) + ' |')
        L.append('')
    L += ['## Relative error vs fp64 (first shape)', '', '| process | ' + ' | '.join(CANDIDATES) + ' |', '|---|' + '---|' * len(CANDIDATES)]
    for v, e in out['relerr'].items():
        L.append(f'| {v} | ' + ' | '.join(f'{e.get(c, float("nan")):.1e}' for c in CANDIDATES) + ' |')
    ex = out.get('extras', {})
    if 'gflops' in ex:
        L += ['', '## Inductor C++ GEMM template (frozen nn.Linear 1024, inference, default env, 2 threads)', '',
              '| path | GFLOP/s | compile s | rel. error |', '|---|---|---|---|']
        for k, v in ex['gflops'].items():
            L.append(f"| {k} | {v:.0f} | {ex.get(k + '_compile_s', 0):.1f} | {ex.get(k + '_relerr', float('nan')):.1e} |")
    elif ex: L += ['', f"Inductor extras failed: {ex.get('error', '')[-300:]}"]
    lk = out['linkage']
    L += ['', '## MKL linkage', '', f"- {lk.get('verdict')}",
          f"- libmkl*.so in site-packages: {lk.get('libmkl_shared_objects_in_site_packages') or 'none'}",
          f"- mkl_* symbols exported by libtorch_cpu.so: {lk.get('mkl_symbols_exported_by_libtorch_cpu')}; "
          f"PLT relocation for mkl_serv_intel_cpu_true: {lk.get('plt_relocation_for_mkl_serv_intel_cpu_true')}",
          f"- {'; '.join(lk.get('torch_mkl', []))}",
          f"- `train.cpu_math=fastmath` on this machine: {out.get('fastmath_plan', '?')}", '']
    return '\n'.join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=3, help='repetitions of the whole variant sweep')
    ap.add_argument('--reps', type=int, default=5, help='timed calls per candidate and shape inside a worker')
    ap.add_argument('--threads', type=int, default=2, help='(worker) torch threads')
    ap.add_argument('--quick', action='store_true', help='two shapes only')
    ap.add_argument('--no-extras', action='store_true', help='skip the inductor C++ template measurement')
    ap.add_argument('--out', default=str(RESULTS / 'matmul.json'))
    ap.add_argument('--omp-wait-policy', default='PASSIVE', help="OMP_WAIT_POLICY of the workers ('inherit': leave as is)")
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--extras', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker: return worker(args)
    if args.extras: return extras(args)

    import torch
    t_start = time.time()
    shim = build_shim()
    linkage = mkl_linkage()
    from hjepa_nb.fastmath import fastmath_plan
    plan = fastmath_plan('fastmath').reason             # would train.cpu_math=fastmath preload the shim here, and why
    variants = [('default_t2', 2, None), ('shim_t2', 2, shim), ('default_t1', 1, None), ('shim_t1', 1, shim)]
    variants = [v for v in variants if v[2] or not v[0].startswith('shim')]
    la0 = os.getloadavg()
    rounds = []
    for r in range(args.rounds):
        rounds.append({name: run_worker('worker', thr, so, args) for name, thr, so in variants})
        print(f"round {r + 1}/{args.rounds}: " + ', '.join(
            f"{k} {v['gflops'][QUICK_SHAPES[0]]['default']:.0f}" if 'gflops' in v else f"{k} ERROR" for k, v in rounds[-1].items()),
            flush=True)
    errors = {k: v['error'] for r in rounds for k, v in r.items() if 'error' in v}
    shapes = QUICK_SHAPES if args.quick else list(SHAPES)
    ex = {} if args.no_extras else run_worker('extras', 2, None, args)
    out = dict(command='python bench/matmul.py ' + ' '.join(sys.argv[1:]), date=time.strftime('%Y-%m-%d %H:%M'),
               torch=torch.__version__, cpu=f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
               rounds=args.rounds, reps=args.reps, omp_wait_policy=args.omp_wait_policy, loadavg_start=[round(x, 2) for x in la0],
               loadavg_end=[round(x, 2) for x in os.getloadavg()], shapes=shapes, shim=shim, fastmath_plan=plan, linkage=linkage,
               table=summarize(rounds, shapes), relerr={k: v.get('relerr_vs_fp64', {}) for k, v in rounds[0].items()},
               extras=ex, errors=errors, wall_s=round(time.time() - t_start, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    md = markdown(out)
    Path(args.out).with_suffix('.md').write_text(md)
    print(md)


if __name__ == '__main__':
    main()
