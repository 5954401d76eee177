"""What every bench/ script shares: the repository root on sys.path, the CPU a figure came from, the result files
(JSON with the exact command, date, torch and CPU, beside a Markdown summary), side-by-side statistics, collated
training batches, and whole `hjepa-train` runs."""
import json, os, platform, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'bench' / 'results'
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16')   # what decides the fp32 / bf16 math paths


def cpu_info() -> dict:
    "Model name, vendor, family/model, the FLAGS it has, logical cores and native bf16 (hjepa_nb.core.native_bf16)."
    from hjepa_nb.core import native_bf16
    info = {}
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            k, _, v = line.partition(':')
            k = k.strip()
            if k in ('model name', 'vendor_id', 'cpu family', 'model', 'flags') and k not in info: info[k] = v.strip()
    except OSError: pass
    flags = info.get('flags', '').split()
    return dict(model=info.get('model name') or platform.processor() or platform.machine(), vendor=info.get('vendor_id', '?'),
                family=info.get('cpu family', '?'), model_id=info.get('model', '?'), flags=[f for f in FLAGS if f in flags],
                cores=os.cpu_count(), native_bf16=native_bf16())


def cpu_line(c: dict) -> str:
    "One line naming the CPU, e.g. 'AMD EPYC (AuthenticAMD family 23 model 1), 2 cores; avx2; no avx512f, ...; native bf16: none'."
    return (f"{c['model']} ({c['vendor']} family {c['family']} model {c['model_id']}), {c['cores']} cores; "
            + ', '.join(f if f in c['flags'] else f'no {f}' for f in FLAGS) + f"; native bf16: {', '.join(c['native_bf16']) or 'none'}")


def header(script: str) -> dict:
    "The start of every result JSON: the exact command line, date, torch, Python, CPU, threads and load average."
    import torch
    return dict(command=' '.join(['python', f'bench/{script}', *sys.argv[1:]]), date=time.strftime('%Y-%m-%d %H:%M'),
                torch=torch.__version__, python=platform.python_version(), cpu=cpu_info(), threads=torch.get_num_threads(),
                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', '(unset)'), loadavg_start=[round(x, 2) for x in os.getloadavg()])


def md_header(res: dict, title: str) -> list[str]:
    "The first lines of every Markdown summary: title, command, date, torch, CPU, threads, load average."
    return [f'# {title}', '', f"Command: `{res['command']}`  ",
            f"Date {res['date']}, torch {res['torch']}, {res['threads']} threads, OMP_WAIT_POLICY {res['omp_wait_policy']}; "
            f"load average {res['loadavg_start']} -> {res.get('loadavg_end')}  ", f"CPU: **{cpu_line(res['cpu'])}**", '']


def write_results(res: dict, out, report=None):
    "Write `res` to `out`.json and, with `report(res) -> str`, `out`.md (printed); adds the final load average."
    res['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    out = Path(out).with_suffix('.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + '\n')
    if report:
        md = report(res); out.with_suffix('.md').write_text(md); print(md)
    print('wrote', out)


def median_ratio(a, b) -> float:
    "Median over rounds of a[i] / b[i] (the side-by-side figure: both measured in the same round)."
    return statistics.median(x / y for x, y in zip(a, b))


def timings(f, reps: int, warmup: int = 1) -> list[float]:
    "Seconds per call of `f()` for `reps` calls after `warmup` untimed ones."
    for _ in range(warmup): f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return ts


def train_batches(learn, n: int) -> list[list[dict]]:
    """`n` optimizer steps' worth of collated micro-batches (lists of accum_steps) of a Learner's training set, from a
    loader built as `Learner.setup` builds its own (data workers, augmentation, masks), not from `learn.dl`: its workers
    stop when this returns, and setup need not have built one."""
    import itertools
    from hjepa_nb.data import EpochSampler, SeededItems, SeededMasks, build_datasets, build_loader
    from hjepa_nb.masks import MultiBlockMaskCollator
    cfg, ds = learn.cfg, getattr(learn, 'train_ds', None)
    if ds is None: ds = build_datasets(cfg)[0]
    dl = build_loader(cfg, SeededItems(ds, cfg.train.seed), sampler=EpochSampler(len(ds), cfg.data.batch_size, cfg.train.seed),
                      collate_fn=SeededMasks(MultiBlockMaskCollator.from_config(cfg, rank=0)))
    a, it = cfg.optim.accum_steps, iter(dl)
    out = [list(itertools.islice(it, a)) for _ in range(n)]
    if len(out[-1]) < a: raise SystemExit(f'the training set has fewer than {n * a} batches')
    return out


RUN_OVERRIDES = ['log.every=1', 'log.tensorboard=false', 'log.progress=false']   # a metrics row per optimizer step


def hjepa_train(config: str, overrides=(), env=None, timeout: float = 3600) -> dict:
    """Run `hjepa-train config overrides --out TMP --quiet` (the command a user types) in a fresh process from the repository
    root; its metrics rows (`metrics.jsonl`), wall seconds and peak RSS (MiB, largest child process so far)."""
    import resource
    exe = shutil.which('hjepa-train')
    if exe is None: raise SystemExit('hjepa-train is not on PATH: pip install -e .')
    with tempfile.TemporaryDirectory(prefix='bench_run_') as d:
        t0 = time.perf_counter()
        r = subprocess.run([exe, config, *RUN_OVERRIDES, *overrides, '--out', d, '--quiet'], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if r.returncode: raise RuntimeError(f"hjepa-train {config} {' '.join(overrides)}: {r.stderr.strip()[-800:]}")
        rows = [json.loads(l) for l in (Path(d) / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    return dict(rows=rows, wall_s=round(wall, 2), maxrss_children_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
