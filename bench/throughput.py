"""Images per second of one full H-JEPA training step on this CPU, with a breakdown by phase, peak memory,
model FLOP utilisation, the data path alone, and the step against the one it replaced -- using the real library.

    python bench/throughput.py                # quick_validation + cifar10_tiny, step and data path (~5-6 min)
    python bench/throughput.py --options      # speed options side by side -> results/speed_options.json
    python bench/throughput.py --bf16-curve   # ~100 steps fp32 vs bf16 vs oneDNN-fp32 losses -> results/bf16_curve.{json,png}
    python bench/throughput.py --settings quick_validation --rounds 2 --out /tmp/t.json   # a quick look

Run from the repository root. The default run writes bench/results/throughput.{json,md}.

bench/ has no training step of its own: every timed step is `learn.one_step([batch])` of `bench_learner(cfg)`, the
config's Learner with `cbs=[NonFiniteGuard()]` (to_device, forward under autocast, backward, clip, finite check,
fused AdamW, zero_grad, EMA). Images are fixed random tensors (the data path is measured separately); masks are
`MultiBlockMaskCollator.from_config(cfg).sample_masks(B, step=i)` for a fixed cycle of i, the same for every run.

Each setting runs in its own subprocess (separate `ru_maxrss` peaks), which interleaves rounds of [plain step,
phased step, 2048^2 fp32 matmul, old step] and takes medians:
- plain step: `one_step` alone; gives the images/s.
- phased step: `one_step` with PhaseTimer attached. It only takes timestamps (forward pre-hooks on the model, its
  context encoder and predictor; a forward hook on the model; post-accumulate-grad hooks; the before_step/after_step
  events; the optimizer's step pre/post hooks; entry to `update_target`), so it splits the step into PHASES, which
  sum to the step (CPU ops are synchronous).
- old step: the step of `hjepa_nb.train.Trainer` at commit 091c4bf (the last that had it), from that commit's own
  source (`git archive`, imported as `hjepa_nb_091c4bf`, only import lines renamed), training a deep copy of the
  Learner's model (same code and weights: both first losses are recorded) on the same batches. Its loader runs the
  round's other work, then yields the round's batch; the step is timed from there to its `after_step` event.
  `old_over_new`: old / new step time per round, median (1.00: no change; > 1: faster now).
FLOPs: FlopCounterMode around `learn._forward(batch)` (phases from its module totals) and `backward()`, with timm's
`fused_attn=False` (the counter misses the fused CPU SDPA kernel that timing uses). MFU = FLOPs per step / step time
/ the 2048^2 fp32 matmul rate measured in the same process.

Dropped with the Learner redesign: the copies of the forward pass (which also left out the VICReg term) and of the
optimizer step, so `--options` no longer times AdamW for-loop/foreach/fused or the EMA loop (`--micro`); the step
uses fused AdamW and `_foreach_lerp_`, chosen from those timings (kept in results/speed_options.json).
"""
from __future__ import annotations
import argparse, copy, importlib, io, json, os, platform, re, resource, statistics, subprocess, sys, tarfile, tempfile, time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'bench' / 'results'
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'bench'))

SETTINGS = {  # name: (config file, warm-up rounds, timed rounds, data-path batches)
    'quick_validation': ('configs/quick_validation.yaml', 2, 6, 60),
    'cifar10_tiny': ('configs/cifar10_tiny.yaml', 1, 5, 24),
}
DATA_ROOT = '../shared/data/cifar10'      # relative to the repository root
OLD_COMMIT = '091c4bf'                    # the last commit with hjepa_nb.train.Trainer
# one_step split at the timestamps PhaseTimer takes; each phase ends at the mark of its name
PHASES = ('to_device', 'target_fwd', 'context_fwd', 'predictor_loss', 'backward', 'clip', 'finite_check', 'adamw',
          'zero_grad', 'ema')
N_FWD_BWD = 5                             # PHASES[:5] run per micro-batch, PHASES[5:] once per optimizer step


def maxrss_mib() -> float:
    "Peak resident set size of this process so far, MiB (Linux reports KiB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_cfg(setting: str, overrides=()):
    from hjepa_nb.config import load_config
    return load_config(ROOT / SETTINGS[setting][0], list(overrides))


def make_batches(cfg, n_masks: int = 4, seed: int = 0) -> list[dict]:
    "`n_masks` batch dicts sharing one random image tensor, with masks of collator steps 0..n_masks-1."
    import torch
    from hjepa_nb.masks import MultiBlockMaskCollator
    B, S = cfg.data.batch_size, cfg.model.img_size
    images = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(seed))
    coll = MultiBlockMaskCollator.from_config(cfg, seed=seed, rank=0)
    out = []
    for i in range(n_masks):
        ctx, tgt = coll.sample_masks(B, step=i)
        out.append({'images': images, 'labels': torch.zeros(B, dtype=torch.long), 'ctx_idx': ctx, 'tgt_idx': tgt, 'mb': i})
    return out


def bench_learner(cfg, threads: int, amp: str | None = None, model=None):
    """A set-up `Learner` for `cfg` with `cbs=[NonFiniteGuard()]`, on the CPU with `threads` threads (`amp`: train.amp).
    Its data is a small synthetic set that nothing draws from: the benchmark steps it on `make_batches`."""
    from hjepa_nb.config import with_overrides
    from hjepa_nb.train import Learner
    from hjepa_nb.callbacks import NonFiniteGuard
    ov = ['data.dataset=synthetic', f'data.synthetic_size={max(16, cfg.data.batch_size)}', 'data.num_workers=0',
          'train.device=cpu', f'train.threads={threads}'] + ([f'train.amp={amp}'] if amp else [])
    learn = Learner(with_overrides(cfg, ov), cbs=[NonFiniteGuard()], model=model)
    learn.setup(); learn.model.train()                 # as `fit` does
    return learn


def timed_step(learn, batch) -> tuple[float, float]:
    "One `learn.one_step([batch])`: (wall s, process CPU s)."
    t0, c0 = time.perf_counter(), time.process_time()
    learn.one_step([batch])
    return time.perf_counter() - t0, time.process_time() - c0


@contextmanager
def amp_as(learn, dtype):
    "Run the Learner's steps under autocast `dtype` (None: fp32) for a while: what `train.amp` sets at setup."
    old, learn.amp = learn.amp, dtype
    try: yield
    finally: learn.amp = old


@contextmanager
def explicit_attention(model):
    "Temporarily switch timm attention modules to explicit q@k^T / softmax / @v math (countable by FlopCounterMode)."
    mods = [m for m in model.modules() if hasattr(m, 'fused_attn')]
    old = [m.fused_attn for m in mods]
    for m in mods: m.fused_attn = False
    try: yield len(mods)
    finally:
        for m, o in zip(mods, old): m.fused_attn = o


class PhaseTimer:
    """Time one `learn.one_step` by PHASES from hooks and events that only take timestamps (see the module docstring);
    it goes first in `learn.cbs`, so NonFiniteGuard's host sync counts as `finite_check`."""
    def mark(self, name: str):
        if name not in self.t: self.t[name] = time.perf_counter()
    def before_step(self, learn): self.mark('clip')
    def after_step(self, learn): self.mark('ema')

    def step(self, learn, batch) -> dict:
        "Seconds per phase of `learn.one_step([batch])`."
        m, opt, mk = learn.model, learn.opt, self.mark
        def grad_done(p): self.t['backward'] = time.perf_counter()   # the last gradient accumulated ends backward
        def ema(momentum): mk('zero_grad'); return type(m).update_target(m, momentum)
        hs = [m.register_forward_pre_hook(lambda *a: mk('to_device')),
              m.context_encoder.register_forward_pre_hook(lambda *a: mk('target_fwd')),
              m.predictor.register_forward_pre_hook(lambda *a: mk('context_fwd')),
              m.register_forward_hook(lambda *a: mk('predictor_loss')),
              opt.register_step_pre_hook(lambda *a: mk('finite_check')), opt.register_step_post_hook(lambda *a: mk('adamw'))]
        hs += [p.register_post_accumulate_grad_hook(grad_done) for p in m.parameters() if p.requires_grad]
        self.t, m.update_target = {}, ema
        learn.cbs.insert(0, self)
        try:
            t0 = time.perf_counter(); learn.one_step([batch])
        finally:
            learn.cbs.remove(self); del m.update_target
            for h in hs: h.remove()
        ts = [t0] + [self.t[p] for p in PHASES]
        return {p: b - a for p, a, b in zip(PHASES, ts, ts[1:])}


def count_flops(learn, batch, modes=('explicit', 'fused')) -> dict:
    "FLOPs of one step (forward per phase + backward; optimizer and EMA do no matmuls), explicit and fused attention."
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from hjepa_nb.core import to_device
    batch, m, out = to_device(batch, learn.device), learn.model, {}
    for mode in modes:
        with (explicit_attention(m) if mode == 'explicit' else nullcontext()):
            with FlopCounterMode(display=False) as fw: loss, _ = learn._forward(batch)
            with FlopCounterMode(display=False) as bw: loss.backward()
            learn.opt.zero_grad(set_to_none=True)
        per = {k: sum(v.values()) for k, v in fw.get_flop_counts().items()}
        te, ce = (per.get(f'{type(m).__name__}.{k}', 0) for k in ('target_encoder', 'context_encoder'))
        out[mode] = dict(target_fwd=te, context_fwd=ce, predictor_loss=fw.get_total_flops() - te - ce, backward=bw.get_total_flops())
        out[mode]['total'] = sum(out[mode].values())
    return out


def matmul_rate_once(n: int = 2048, a=None, b=None) -> float:
    import torch
    t0 = time.perf_counter(); torch.mm(a, b); return 2 * n ** 3 / (time.perf_counter() - t0) / 1e9


def token_counts(batches) -> dict:
    return dict(context=[int(b['ctx_idx'].shape[1]) for b in batches], target_block=[int(b['tgt_idx'][0].shape[1]) for b in batches],
                targets_per_image=len(batches[0]['tgt_idx']))


def old_trainer_modules(commit: str = OLD_COMMIT):
    "hjepa_nb's `train` and `config` modules as of `commit`, from `git archive` into a temporary folder (package renamed)."
    name = f'hjepa_nb_{commit}'
    if name not in sys.modules:
        d = Path(tempfile.mkdtemp(prefix='hjepa_old_'))
        import atexit, shutil; atexit.register(shutil.rmtree, d, True)
        tar = subprocess.run(['git', 'archive', commit, 'hjepa_nb'], cwd=ROOT, capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(tar)).extractall(d, filter='data')
        (d / 'hjepa_nb').rename(d / name)
        for f in (d / name).glob('*.py'):
            f.write_text(re.sub(r'^(\s*)(from|import) hjepa_nb\b', rf'\1\2 {name}', f.read_text(), flags=re.M))
        sys.path.insert(0, str(d))
    return importlib.import_module(f'{name}.train'), importlib.import_module(f'{name}.config')


def run_rounds(learn, batches, n: int, body, commit: str | None = OLD_COMMIT) -> dict | None:
    """`body(r)` for r in range(n); with `commit`, after each, the old Trainer's step on round r's batch (see the module
    docstring). Returns the old steps' wall and CPU seconds and its first loss (None without `commit`)."""
    if not commit:
        for r in range(n): body(r)
        return None
    from hjepa_nb.config import config_to_dict, apply_overrides
    train, config = old_trainer_modules(commit)
    res, t = dict(wall=[], cpu=[]), {}
    def feed():
        for r in range(n):
            body(r)
            t['w'], t['c'] = time.perf_counter(), time.process_time()
            yield batches[r % len(batches)]
    class Feed:
        def __iter__(self):
            if t: raise RuntimeError('the old Trainer asked for a second epoch')
            return feed()
    class Clock:
        def after_step(self, tr):
            res['wall'].append(time.perf_counter() - t['w']); res['cpu'].append(time.process_time() - t['c'])
    class Fed(train.Trainer):
        def setup(self): super().setup(); self.loader = Feed()
    known, new = config.config_to_dict(config.Config()), config_to_dict(learn.cfg)   # keys added since are left out
    res['config_keys_left_out'] = [f'{s}.{k}' for s, sec in new.items() for k in sec if k not in known.get(s, {}) or k == 'cpu_math']
    ocfg = config.from_dict(apply_overrides({s: {k: v for k, v in sec.items() if k in known.get(s, {}) and k != 'cpu_math'}
                                             for s, sec in new.items()}, [
        f'train.max_steps={n}', 'optim.accum_steps=1', 'log.every=1', 'log.tensorboard=false', 'log.progress=false', 'log.monitor_every=0',
        'eval.every=0', 'train.ckpt_every=1000000', 'train.keep_best=0', 'train.compile=false']))
    out_dir = tempfile.mkdtemp(prefix='old_trainer_')
    tr = Fed(ocfg, callbacks=[Clock()], out_dir=out_dir, model=copy.deepcopy(learn.model),
             datasets=(learn.train_ds, learn.test_ds), quiet=True)
    hist = tr.fit()
    import shutil; shutil.rmtree(out_dir, ignore_errors=True)
    res['first_loss'] = hist[0]['loss']
    return res


# --------------------------------------------------------------------------------- step worker
def worker_step(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    rss_import = maxrss_mib()
    from hjepa_nb.models import param_counts
    from hjepa_nb.config import config_to_dict
    learn = bench_learner(load_cfg(args.setting), args.threads, args.amp)
    cfg, model = learn.cfg, learn.model
    batches = make_batches(cfg)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    warm, rounds = SETTINGS[args.setting][1], args.rounds or SETTINGS[args.setting][2]
    full, full_cpu, phases, mm, first = [], [], {p: [] for p in PHASES}, [], {}
    timer = PhaseTimer()
    def body(r):
        bt = batches[r % len(batches)]
        if r == 0:                                     # before any step: to compare with the old step's first loss
            with torch.no_grad(): first['new'] = float(learn._forward(bt)[0])
        w, c = timed_step(learn, bt)
        ph = timer.step(learn, bt)
        mr = matmul_rate_once(n, a, b)
        if r < warm: return
        full.append(w); full_cpu.append(c); mm.append(mr)
        for p in PHASES: phases[p].append(ph[p])
    t_run = time.perf_counter()
    try: old = run_rounds(learn, batches, warm + rounds, body, args.old_commit)
    except Exception as e:                             # no git history, or the old code does not start: new step alone
        if first: raise                                # ... but not an error during the rounds
        print(f'old step unavailable ({type(e).__name__}: {e}); timing the new step alone', file=sys.stderr, flush=True)
        old = dict(error=f'{type(e).__name__}: {str(e)[-300:]}'); run_rounds(learn, batches, warm + rounds, body, None)
    t_run = time.perf_counter() - t_run
    rss_peak = maxrss_mib()
    # FLOPs: average over the same mask cycle the timed rounds used
    used = [batches[i] for i in sorted({r % len(batches) for r in range(warm, warm + rounds)})]
    fl = [count_flops(learn, bt, modes=('explicit', 'fused') if j == 0 else ('explicit',)) for j, bt in enumerate(used)]
    flops = {p: statistics.mean(f['explicit'][p] for f in fl) for p in fl[0]['explicit']}
    undercount = 1 - fl[0]['fused']['total'] / fl[0]['explicit']['total']      # on the first mask step
    B, A = cfg.data.batch_size, cfg.optim.accum_steps
    step_s = statistics.median(full)
    ph_ms = {p: 1e3 * statistics.median(v) for p, v in phases.items()}
    fb, tail = sum(ph_ms[p] for p in PHASES[:N_FWD_BWD]), sum(ph_ms[p] for p in PHASES[N_FWD_BWD:])
    mm_rate = statistics.median(mm)
    phase_flops = {p: v for p, v in flops.items() if p != 'total'}
    vs_old = None
    if old and 'error' not in old:
        ow, oc = old['wall'][warm:], old['cpu'][warm:]
        ratios = [o / w for o, w in zip(ow, full)]
        vs_old = dict(commit=args.old_commit, old_step_s_all=ow, old_step_cpu_s_all=oc, old_step_s_median=statistics.median(ow),
                      old_img_per_s=B / statistics.median(ow), old_over_new_all=ratios, old_over_new_median=statistics.median(ratios),
                      old_over_new_cpu_time=statistics.median(oc) / statistics.median(full_cpu),
                      first_loss=dict(new=first['new'], old=old['first_loss']), config_keys_left_out=old['config_keys_left_out'])
    elif old: vs_old = old
    return dict(
        setting=args.setting, config=SETTINGS[args.setting][0], config_values=config_to_dict(cfg),
        encoder_depth=len(model.context_encoder.blocks), batch_size=B, img_size=cfg.model.img_size,
        patch_size=cfg.model.patch_size, grid=list(cfg.grid), accum_steps=A, threads=torch.get_num_threads(),
        amp=args.amp, tokens=token_counts(batches), params={k: list(v) for k, v in param_counts(model).items()},
        step_s_median=step_s, step_s_all=full, img_per_s=B / step_s, step_s_best=min(full),
        step_cpu_s_median=statistics.median(full_cpu), step_cpu_s_all=full_cpu,
        img_per_s_idle_estimate=B * torch.get_num_threads() / statistics.median(full_cpu),
        phase_ms_median=ph_ms, phase_sum_ms=sum(ph_ms.values()),
        trainer_img_per_s_with_accum=A * B / ((A * fb + tail) / 1e3), vs_old_step=vs_old,
        flops_per_step_explicit_attention=flops['total'],
        flops_per_step_fused_attention_counted=flops['total'] * (1 - undercount),
        flop_counter_undercount=undercount, flops_per_phase=phase_flops,
        achieved_gflops=flops['total'] / step_s / 1e9,
        matmul_2048_gflops_median=mm_rate, matmul_2048_gflops_all=mm,
        mfu_vs_matmul_2048=flops['total'] / step_s / 1e9 / mm_rate,
        phase_mfu={p: v / (ph_ms[p] / 1e3) / 1e9 / mm_rate for p, v in phase_flops.items()},
        maxrss_after_import_mib=rss_import, maxrss_peak_mib=rss_peak, timed_wall_s=t_run)


# --------------------------------------------------------------------------------- data worker
def worker_data(args) -> dict:
    "Decode-cache, augment and mask-collate as the Learner does; images/s with the config's workers and on one core."
    import torch
    os.environ['HJEPA_CACHE'] = tempfile.mkdtemp(prefix='hjepa_cache_')   # never read or evict others' decoded caches
    from hjepa_nb.data import build_datasets, build_loader, EpochSampler, SeededItems, SeededMasks
    from hjepa_nb.masks import MultiBlockMaskCollator
    overrides = [f'data.root={DATA_ROOT}', 'data.dataset=folder']
    cfg = load_cfg(args.setting, overrides)
    t0 = time.perf_counter()
    train_ds, test_ds = build_datasets(cfg, limit=args.limit, verbose=False)
    decode_s = time.perf_counter() - t0                       # train and test splits are both decoded
    n_img, n_dec = len(train_ds), len(train_ds) + (len(test_ds) if test_ds is not None else 0)
    coll = MultiBlockMaskCollator.from_config(cfg, seed=cfg.train.seed, rank=0)
    B, nb = cfg.data.batch_size, args.batches or SETTINGS[args.setting][3]
    out = dict(setting=args.setting, dataset=cfg.data.dataset, root=cfg.data.root, images_cached=n_img,
               images_decoded_train_and_test=n_dec, limit_per_class=args.limit, decode_and_cache_s=decode_s,
               decode_img_per_s=n_dec / decode_s,
               batch_size=B, img_size=cfg.model.img_size, crop_scale=list(cfg.data.crop_scale), flip=cfg.data.flip,
               color_jitter=cfg.data.color_jitter)
    def rate(workers: int):
        c = copy.deepcopy(cfg); c.data.num_workers = workers
        sampler = EpochSampler(n_img, B, seed=c.train.seed)
        loader = build_loader(c, SeededItems(train_ds, c.train.seed), train=True, collate_fn=SeededMasks(coll), sampler=sampler)
        it, got, t = iter(loader), 0, None
        for epoch in range(1000):
            sampler.set_epoch(epoch)
            it = iter(loader)
            for batch in it:
                if t is None: t = time.perf_counter(); continue        # first batch: worker start-up
                got += len(batch['images'])
                if got >= nb * B: break
            if got >= nb * B: break
        r = got / (time.perf_counter() - t)
        del it, loader
        return r
    out['loader_workers'] = cfg.data.num_workers
    out['img_per_s_workers'] = rate(cfg.data.num_workers)
    torch.set_num_threads(1)
    out['img_per_s_main_process_1_thread'] = rate(0)
    import shutil; shutil.rmtree(os.environ['HJEPA_CACHE'], ignore_errors=True)
    return out


# --------------------------------------------------------------------------------- options worker
OPTION_CANDIDATES = ('fp32', 'bf16', 'onednn_flag', 'channels_last', 'threads1')


@contextmanager
def candidate(name: str, learn, batch):
    "Switch a speed option on for one step of `learn`: yields the batch to step on."
    import torch
    b, mm = batch, torch.backends.mkldnn.matmul
    if name == 'onednn_flag': old = mm.fp32_precision; mm.fp32_precision = 'bf16'
    if name == 'threads1': nt = torch.get_num_threads(); torch.set_num_threads(1)
    convs = []
    if name == 'channels_last':
        cl = torch.channels_last
        convs = [m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d)]
        for m in convs: m.weight.data = m.weight.data.contiguous(memory_format=cl)
        b = dict(batch, images=batch['images'].contiguous(memory_format=cl))
    try:
        with amp_as(learn, torch.bfloat16) if name == 'bf16' else nullcontext(): yield b
    finally:
        if name == 'onednn_flag': mm.fp32_precision = old
        if name == 'threads1': torch.set_num_threads(nt)
        for m in convs: m.weight.data = m.weight.data.contiguous()


def worker_options(args) -> dict:
    "Interleave OPTION_CANDIDATES (in this process) for `rounds` rounds of full training steps."
    import torch
    if args.interop: torch.set_num_interop_threads(args.interop)
    torch.set_num_threads(args.threads)
    from hjepa_nb.config import config_to_dict, with_overrides
    learn = bench_learner(load_cfg(args.setting), args.threads)
    batches = make_batches(learn.cfg)
    cands = args.cands.split(',')
    out = dict(setting=args.setting, config_values=config_to_dict(learn.cfg), encoder_depth=len(learn.model.context_encoder.blocks),
               batch_size=learn.cfg.data.batch_size, threads=args.threads, interop=torch.get_num_interop_threads(),
               candidates=cands, shim=os.environ.get('LD_PRELOAD', ''))
    comp = None
    if args.compile:     # a second Learner with train.compile=true on the same model: its `fwd` is what setup compiles
        comp = bench_learner(with_overrides(learn.cfg, ['train.compile=true']), args.threads, model=learn.model)
        t0 = time.perf_counter()
        for i in range(2): timed_step(comp, batches[i])          # 2 shapes: static, then dynamic
        out['compile_s'] = time.perf_counter() - t0
    for c in cands:             # warm-up every candidate
        with candidate(c, learn, batches[0]) as b: timed_step(learn, b)
    ts = {c: [] for c in cands + (['compiled'] if comp else [])}
    tc = {c: [] for c in ts}
    for r in range(args.rounds):
        order = cands[r % len(cands):] + cands[:r % len(cands)]
        for c in order:
            with candidate(c, learn, batches[r % len(batches)]) as b:
                w, cp = timed_step(learn, b); ts[c].append(w); tc[c].append(cp)
        if comp:
            w, cp = timed_step(comp, batches[r % len(batches)]); ts['compiled'].append(w); tc['compiled'].append(cp)
    out['step_s'] = ts
    out['step_cpu_s'] = tc
    out['step_s_median'] = {c: statistics.median(v) for c, v in ts.items()}
    out['ratio_to_fp32_median'] = {c: statistics.median(x / y for x, y in zip(ts['fp32'], v)) for c, v in ts.items()} \
        if 'fp32' in ts else {}
    out['maxrss_mib'] = maxrss_mib()
    return out
# --------------------------------------------------------------------------------- driver helpers
OMP_ENV: dict = {}      # set by the drivers from --omp-wait-policy


def run_sub_script(script, argv: list[str], threads: int = 2, preload: str | None = None, extra_env=None) -> dict:
    "Run `script argv` in a fresh process (threads, optional LD_PRELOAD, env); parse its `RESULT {json}` line."
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS='ignore')
    env.pop('LD_PRELOAD', None)
    if preload: env['LD_PRELOAD'] = preload
    env.update(OMP_ENV)
    for k, v in (extra_env or {}).items():
        if v is None: env.pop(k, None)
        else: env[k] = v
    t0 = time.perf_counter()
    la = os.getloadavg()[0]
    p = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True, cwd=ROOT)
    line = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    if p.returncode or not line:
        return dict(error=(p.stderr or p.stdout)[-3000:], argv=argv)
    d = json.loads(line[-1][7:])
    d.update(wall_s=round(time.perf_counter() - t0, 1), loadavg_1min_start=round(la, 2), loadavg_1min_end=round(os.getloadavg()[0], 2),
             omp_wait_policy=env.get('OMP_WAIT_POLICY', '(unset)'))
    return d


def run_sub(argv: list[str], threads: int = 2, preload: str | None = None, extra_env=None) -> dict:
    return run_sub_script(__file__, argv, threads, preload, extra_env)


def header(cmd: str) -> dict:
    import torch
    return dict(command=cmd, date=time.strftime('%Y-%m-%d %H:%M'), torch=torch.__version__,
                cpu=f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
                loadavg_start=[round(x, 2) for x in os.getloadavg()])


def old_step_lines(d: dict) -> list[str]:
    o = d.get('vs_old_step')
    if not o: return []
    if 'error' in o: return [f"- old step (Trainer at {OLD_COMMIT}): not measured ({o['error'][:200]})"]
    r = sorted(o['old_over_new_all'])
    return [f"- **new step vs old step** (`Learner.one_step` vs `Trainer` at {o['commit']}, same process, interleaved): old "
            f"{1e3 * o['old_step_s_median']:.0f} ms, new {1e3 * d['step_s_median']:.0f} ms; old/new time per round "
            f"**{o['old_over_new_median']:.3f}** (median; rounds {r[0]:.3f}-{r[-1]:.3f}), CPU time {o['old_over_new_cpu_time']:.3f}; "
            f"first loss new {o['first_loss']['new']:.6f}, old {o['first_loss']['old']:.6f}"]


def fmt_md_step(d: dict) -> list[str]:
    if 'error' in d: return [f"**{d.get('argv')}: failed** ```{d['error'][-800:]}```", '']
    ph = d['phase_ms_median']
    tok = d['tokens']
    L = [f"### {d['setting']} ({d['config']}: {d['img_size']} px, patch {d['patch_size']}, {d.get('encoder_depth')} encoder blocks, batch {d['batch_size']}, "
         f"{d['threads']} threads, OMP_WAIT_POLICY {d.get('omp_wait_policy')}, amp {d['amp']})", '',
         f"- tokens: context {tok['context']} (per mask step), {tok['targets_per_image']} target blocks of {tok['target_block']}",
         f"- **{d['img_per_s']:.1f} img/s** ({1e3 * d['step_s_median']:.0f} ms per step, median of {len(d['step_s_all'])}; "
         f"fastest {1e3 * d['step_s_best']:.0f} ms)" + (
             f"; with accum_steps={d['accum_steps']} (one clip+AdamW+EMA per {d['accum_steps']} micro-batches, as the Learner; "
             f"from the phase medians): {d['trainer_img_per_s_with_accum']:.1f} img/s" if d['accum_steps'] > 1 else ''),
         f"- process CPU time per step {1e3 * d['step_cpu_s_median']:.0f} ms: {d['img_per_s_idle_estimate']:.1f} img/s if the "
         f"{d['threads']} threads were never preempted by other users (an upper bound for an idle machine)",
         f"- FLOPs per step (fwd+bwd, explicit attention): {d['flops_per_step_explicit_attention'] / 1e9:.1f} GFLOP; "
         f"FlopCounterMode with the fused SDPA kernel counts {d['flops_per_step_fused_attention_counted'] / 1e9:.1f} "
         f"({100 * d['flop_counter_undercount']:.0f}% missed)",
         f"- achieved {d['achieved_gflops']:.0f} GFLOP/s; 2048^2 fp32 matmul in the same process {d['matmul_2048_gflops_median']:.0f} "
         f"GFLOP/s; **MFU {100 * d['mfu_vs_matmul_2048']:.0f}%**",
         *old_step_lines(d),
         f"- peak RSS {d['maxrss_peak_mib']:.0f} MiB (after `import torch, timm, hjepa_nb`: {d['maxrss_after_import_mib']:.0f} MiB)",
         f"- load average (1 min) {d.get('loadavg_1min_start')} -> {d.get('loadavg_1min_end')}", '',
         '| phase | ms (median) | share | GFLOP | MFU |', '|---|---|---|---|---|']
    tot = d['phase_sum_ms']
    for p in ph:
        fl = d['flops_per_phase'].get(p)
        L.append(f"| {p} | {ph[p]:.1f} | {100 * ph[p] / tot:.0f}% | {fl / 1e9:.2f} | {100 * d['phase_mfu'][p]:.0f}% |" if fl is not None
                 else f"| {p} | {ph[p]:.1f} | {100 * ph[p] / tot:.0f}% | - | - |")
    L += [f"| sum | {tot:.1f} | | {d['flops_per_step_explicit_attention'] / 1e9:.2f} | |", '']
    return L


# --------------------------------------------------------------------------------- drivers
def main_default(args):
    out = header('python bench/throughput.py ' + ' '.join(sys.argv[1:]))
    out['settings'] = {}
    for s in args.settings.split(','):
        print(f'[{s}] training step ...', flush=True)
        st = run_sub(['--worker-step', s, '--threads', str(args.threads), '--old-commit', args.old_commit]
                     + (['--rounds', str(args.rounds)] if args.rounds else []), args.threads)
        print(f'[{s}] data path ...', flush=True)
        da = run_sub(['--worker-data', s, '--limit', str(args.limit)], args.threads)
        ratio = (da['img_per_s_workers'] / st['img_per_s']) if 'error' not in da and 'error' not in st else None
        out['settings'][s] = dict(step=st, data=da, data_to_step_ratio=ratio)
        print(json.dumps({k: (v.get('img_per_s', v.get('img_per_s_workers', v.get('error', '')[-800:])) if isinstance(v, dict) else v)
                          for k, v in out['settings'][s].items()}), flush=True)
        if (st.get('vs_old_step') or {}).get('old_over_new_median'):
            print(f"[{s}] old/new step time {st['vs_old_step']['old_over_new_median']:.3f}", flush=True)
    out['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    path = Path(args.out or RESULTS / 'throughput.json')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    L = ['# Training-step throughput on this CPU', '', f"Command: `{out['command']}`  ",
         f"Date {out['date']}, torch {out['torch']}, {out['cpu']}; load average {out['loadavg_start']} -> {out['loadavg_end']} "
         '(the machine is shared: absolute figures vary by tens of percent between runs).', '']
    for s, d in out['settings'].items():
        L += fmt_md_step(d['step'])
        da = d['data']
        if 'error' in da: L += [f"data path failed: ```{da['error'][-800:]}```", '']; continue
        L += [f"Data path ({da['dataset']} at {da['root']}, first {da['limit_per_class']} images per class = {da['images_cached']} "
              f"training images ({da['images_decoded_train_and_test']} with the test split) decoded into the uint8 cache in "
              f"{da['decode_and_cache_s']:.1f} s, {da['decode_img_per_s']:.0f} img/s; "
              f"RandomResizedCrop{da['crop_scale']} to {da['img_size']} px, flip {da['flip']}, colour jitter {da['color_jitter']}, "
              f"mask collation in the workers, batch {da['batch_size']}):", '',
              f"- {da['loader_workers']} DataLoader workers: **{da['img_per_s_workers']:.0f} img/s** = "
              f"**{d['data_to_step_ratio']:.1f}x** the training step",
              f"- main process, 1 thread (the CPU cost of the data path): {da['img_per_s_main_process_1_thread']:.0f} img/s per core, "
              f"i.e. feeding the step takes {100 * d['step']['img_per_s'] / da['img_per_s_main_process_1_thread'] / 2:.1f}% "
              f"of the 2-core machine", '']
    path.with_suffix('.md').write_text('\n'.join(L))
    print('\n'.join(L))


def main_options(args):
    """Speed options side by side: in-process candidates interleaved; MKL shim, OMP wait policy, inter-op threads and
    torch.compile in separate processes that alternate with default processes (`--alternations` times)."""
    from matmul import build_shim
    parts = set(args.parts.split(',')) | ({'compile'} if args.compile else set())
    shim = build_shim() if 'shim' in parts else None
    out = header('python bench/throughput.py ' + ' '.join(sys.argv[1:]))
    out.update(shim=shim, parts=sorted(parts), runs={})
    plan = []
    for s in args.settings.split(','):
        per = args.rounds or (3 if s == 'quick_validation' else 2)       # timed rounds per process
        cands = (OPTION_CANDIDATES if s == 'quick_validation' else ('fp32', 'bf16', 'onednn_flag', 'threads1')) \
            if 'inproc' in parts else ('fp32', 'bf16')
        w = lambda c, extra=(): ['--worker-options', s, '--rounds', str(per), '--cands', ','.join(c), *extra]
        for rep in range(args.alternations):
            plan.append((f'{s}/default/{rep}', w(cands), None, {}))
            if shim: plan.append((f'{s}/shim/{rep}', w(('fp32', 'bf16', 'onednn_flag') if 'inproc' in parts else ('fp32', 'bf16')), shim, {}))
            if 'omp' in parts: plan.append((f'{s}/omp_unset/{rep}', w(('fp32', 'threads1')), None, {'OMP_WAIT_POLICY': None}))
        if 'interop' in parts: plan.append((f'{s}/interop1', w(('fp32',), ['--interop', '1']), None, {}))
        if 'compile' in parts: plan.append((f'{s}/compile', w(('fp32',), ['--compile']), None, {}))
    for name, argv, pre, env in plan:
        print(f'[{name}] ...', flush=True)
        out['runs'][name] = run_sub(argv + ['--threads', str(args.threads)], args.threads, pre, env)
        r = out['runs'][name]
        print('   ', json.dumps(r.get('ratio_to_fp32_median', r.get('error', '')[-500:])), flush=True)
    out['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    out['summary'] = summarize_options(out)
    path = Path(args.out or RESULTS / 'speed_options.json')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out['summary'], indent=1))


def summarize_options(out: dict) -> dict:
    "Per setting and option: median step ms and the ratio to fp32 default (same process; shim rows vs default processes)."
    summ = {}
    runs = out['runs']
    for s in sorted({k.split('/')[0] for k in runs}):
        d = [v for k, v in runs.items() if k.startswith(f'{s}/default/') and 'error' not in v]
        sh = [v for k, v in runs.items() if k.startswith(f'{s}/shim/') and 'error' not in v]
        row = {}
        if not d: continue
        base = [t for v in d for t in v['step_s']['fp32']]
        bmed = statistics.median(base)
        bcpu = statistics.median(t for v in d for t in v['step_cpu_s']['fp32'])
        for c in d[0]['step_s']:
            ts = [t for v in d for t in v['step_s'][c]]
            rat = [x / y for v in d for x, y in zip(v['step_s']['fp32'], v['step_s'][c])]
            ratc = [x / y for v in d for x, y in zip(v['step_cpu_s']['fp32'], v['step_cpu_s'][c])]
            row[c] = dict(step_ms=1e3 * statistics.median(ts), speedup=statistics.median(rat), speedup_cpu_time=statistics.median(ratc),
                          n=len(ts), how='same process, interleaved')
        for c in (sh[0]['step_s'] if sh else {}):
            ts = [t for v in sh for t in v['step_s'][c]]
            tcs = [t for v in sh for t in v['step_cpu_s'][c]]
            row[f'shim+{c}'] = dict(step_ms=1e3 * statistics.median(ts), speedup=bmed / statistics.median(ts),
                                    speedup_cpu_time=bcpu / statistics.median(tcs), n=len(ts),
                                    how='shim process vs default processes (alternating)')
        om = [v for k, v in runs.items() if k.startswith(f'{s}/omp_unset/') and 'error' not in v]
        for c in (om[0]['step_s'] if om else {}):
            ts = [t for v in om for t in v['step_s'][c]]
            tcs = [t for v in om for t in v['step_cpu_s'][c]]
            ref_ms = statistics.median(t for v in d for t in v['step_s'][c]) if c in d[0]['step_s'] else bmed
            row[f'omp_unset+{c}'] = dict(step_ms=1e3 * statistics.median(ts), speedup=ref_ms / statistics.median(ts),
                                         speedup_cpu_time=(statistics.median(t for v in d for t in v['step_cpu_s'][c]) if c in d[0]['step_s']
                                                           else bcpu) / statistics.median(tcs), n=len(ts),
                                         how='OMP_WAIT_POLICY unset (libgomp default spin) process vs PASSIVE processes (alternating)')
        for tag in ('interop1', 'compile'):
            v = runs.get(f'{s}/{tag}')
            if v and 'error' not in v:
                for c, ts in v['step_s'].items():
                    tcs = v['step_cpu_s'][c]
                    if tag == 'interop1':
                        row[f'interop1:{c}'] = dict(step_ms=1e3 * statistics.median(ts), speedup=bmed / statistics.median(ts),
                                                    speedup_cpu_time=bcpu / statistics.median(tcs), n=len(ts),
                                                    how='process with 1 inter-op thread vs default processes')
                        continue
                    row['compile' if c == 'compiled' else 'compile-process:fp32'] = dict(
                        step_ms=1e3 * statistics.median(ts),
                        speedup=statistics.median(x / y for x, y in zip(v['step_s']['fp32'], ts)),
                        speedup_cpu_time=statistics.median(x / y for x, y in zip(v['step_cpu_s']['fp32'], tcs)),
                        n=len(ts), how='same process, interleaved with its own fp32 steps', compile_s=v.get('compile_s'))
            elif v: row[tag] = dict(error=v['error'][-400:])
        summ[s] = row
    return summ


def main_bf16_curve(args):
    "Train the cifar10_tiny model shape on synthetic data with make_learner(cfg).fit(): fp32, bf16 autocast, oneDNN-fp32; compare losses."
    out = header('python bench/throughput.py ' + ' '.join(sys.argv[1:]))
    runs = {}
    for name in ('fp32', 'bf16', 'onednn_flag'):
        print(f'[{name}] {args.steps} steps ...', flush=True)
        runs[name] = run_sub(['--worker-curve', name, '--steps', str(args.steps), '--batch', str(args.batch)], args.threads)
        if 'error' in runs[name]: print(runs[name]['error'][-1500:])
    out['runs'] = runs
    ok = {k: v for k, v in runs.items() if 'error' not in v}
    if 'fp32' in ok:
        f = ok['fp32']['loss']
        cmp = {}
        for k, v in ok.items():
            if k == 'fp32': continue
            g = v['loss']; n = min(len(f), len(g))
            d = [abs(x - y) for x, y in zip(f[:n], g[:n])]
            last = slice(max(0, n - 20), n)
            cmp[k] = dict(mean_abs_diff=statistics.mean(d), max_abs_diff=max(d),
                          mean_abs_diff_last20=statistics.mean(d[last]),
                          rel_diff_last20=statistics.mean(d[last]) / statistics.mean(f[last]),
                          final_loss_fp32=statistics.mean(f[last]), final_loss_other=statistics.mean(g[last]),
                          speed_ratio_other_over_fp32=statistics.median(v['img_s'][1:]) / statistics.median(ok['fp32']['img_s'][1:]))
        out['compare_to_fp32'] = cmp
        # step-to-step noise of the fp32 curve itself (loss differences between neighbouring steps, last 20)
        out['fp32_step_to_step_noise_last20'] = statistics.mean(abs(f[i] - f[i - 1]) for i in range(max(1, len(f) - 20), len(f)))
    out['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    path = Path(args.out or RESULTS / 'bf16_curve.json')
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out.get('compare_to_fp32'), indent=1))
    plot_curve(out, path.with_suffix('.png'))


def plot_curve(out: dict, png):
    "Loss curves of the bf16-curve runs, and their difference from fp32."
    try:
        import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
        ok = {k: v for k, v in out['runs'].items() if 'error' not in v}
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
        for k, v in ok.items(): ax.plot(range(1, len(v['loss']) + 1), v['loss'], label=k, lw=1)
        ax.set_xlabel('optimizer step'); ax.set_ylabel('loss'); ax.legend(); ax.set_title('cifar10_tiny shape, synthetic data')
        if 'fp32' in ok:
            f = ok['fp32']['loss']
            for k, v in ok.items():
                if k != 'fp32': bx.plot(range(1, len(v['loss']) + 1), [a - b for a, b in zip(v['loss'], f)], label=f'{k} - fp32', lw=1)
            bx.axhline(0, color='k', lw=0.5); bx.legend(); bx.set_xlabel('optimizer step'); bx.set_title('loss difference from fp32')
        fig.tight_layout(); fig.savefig(png, dpi=90); plt.close(fig)
    except Exception as e: print('no plot:', e)


def worker_curve(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    if args.variant == 'onednn_flag': torch.backends.mkldnn.matmul.fp32_precision = 'bf16'
    from hjepa_nb.callbacks import make_learner
    cfg = load_cfg('cifar10_tiny', [
        'data.dataset=synthetic', 'data.synthetic_size=2048', f'data.batch_size={args.batch}', 'data.num_workers=0',
        f'train.max_steps={args.steps}', f"train.amp={'bf16' if args.variant == 'bf16' else 'none'}", 'train.ckpt_every=100000',
        'train.keep_best=0', 'log.every=1', 'log.tensorboard=false', 'log.progress=false', 'log.monitor_every=0', 'eval.every=0'])
    out_dir = tempfile.mkdtemp(prefix=f'curve_{args.variant}_')
    t0 = time.perf_counter()
    hist = make_learner(cfg, quiet=True, out_dir=out_dir).fit()
    import shutil; shutil.rmtree(out_dir, ignore_errors=True)
    from hjepa_nb.config import config_to_dict
    return dict(variant=args.variant, config_values=config_to_dict(cfg), batch=args.batch, steps=args.steps, fit_s=time.perf_counter() - t0,
                img_s=[h['img_s'] for h in hist], loss=[h['loss'] for h in hist], loss_l0=[h.get('loss_l0') for h in hist], loss_l1=[h.get('loss_l1') for h in hist],
                maxrss_mib=maxrss_mib())


# --------------------------------------------------------------------------------- the training loop, threads and wait policy
TRAINER_VARIANTS = {   # name: (torch threads, OMP_WAIT_POLICY or None for libgomp's default)
    't2_omp_default': (2, None), 't2_passive': (2, 'PASSIVE'), 't1': (1, None)}


def worker_trainer(args) -> dict:
    "make_learner(cfg).fit() for a few optimizer steps on the real CIFAR-10 folder (first --limit images per class), DataLoader workers on."
    import torch
    os.environ['HJEPA_CACHE'] = tempfile.mkdtemp(prefix='hjepa_cache_')
    from hjepa_nb.data import build_datasets
    from hjepa_nb.callbacks import make_learner
    cfg = load_cfg(args.setting, [f'data.root={DATA_ROOT}', 'data.dataset=folder', f'train.threads={args.threads}',
                                  f'train.max_steps={args.steps}', 'train.ckpt_every=100000', 'train.keep_best=0', 'log.every=1',
                                  'log.tensorboard=false', 'log.progress=false', 'log.monitor_every=0', 'eval.every=0'])
    ds = build_datasets(cfg, limit=args.limit, verbose=False)
    learn = make_learner(cfg, quiet=True, out_dir=tempfile.mkdtemp(prefix='trainer_ab_'), datasets=ds)
    c0 = time.process_time()
    hist = learn.fit()
    import shutil; shutil.rmtree(os.environ['HJEPA_CACHE'], ignore_errors=True)
    img_s = [h['img_s'] for h in hist]
    from hjepa_nb.config import config_to_dict
    return dict(setting=args.setting, config_values=config_to_dict(cfg), threads=torch.get_num_threads(), workers=cfg.data.num_workers,
                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', '(unset)'), steps=args.steps,
                images_per_step=cfg.data.batch_size * cfg.optim.accum_steps, img_s=img_s,
                img_s_median_after_first=statistics.median(img_s[1:]) if len(img_s) > 1 else img_s[0],
                main_process_cpu_s=time.process_time() - c0, maxrss_mib=maxrss_mib())


def main_trainer_ab(args):
    "The real training loop (DataLoader workers included) with 2 threads + libgomp default, 2 threads + PASSIVE, and 1 thread, alternating."
    out = header('python bench/throughput.py ' + ' '.join(sys.argv[1:]))
    out['runs'] = {}
    for s in args.settings.split(','):
        steps = args.steps if args.steps != 100 else (4 if s == 'quick_validation' else 3)
        for rep in range(args.alternations):
            for v, (th, pol) in TRAINER_VARIANTS.items():
                key = f'{s}/{v}/{rep}'
                print(f'[{key}] ...', flush=True)
                out['runs'][key] = r = run_sub(['--worker-trainer', s, '--threads', str(th), '--steps', str(steps),
                                                '--limit', str(args.limit)], th, extra_env={'OMP_WAIT_POLICY': pol})
                print('   ', r.get('img_s', r.get('error', '')[-600:]), flush=True)
    summ = {}
    for s in args.settings.split(','):
        summ[s] = {}
        for v in TRAINER_VARIANTS:
            rs = [r for k, r in out['runs'].items() if k.startswith(f'{s}/{v}/') and 'error' not in r]
            if rs:
                vals = [x for r in rs for x in r['img_s'][1:]]
                summ[s][v] = dict(img_s_median=statistics.median(vals), img_s_all=vals)
        b = summ[s].get('t2_omp_default', {}).get('img_s_median')
        for v in summ[s]:
            if b: summ[s][v]['ratio_to_t2_omp_default'] = summ[s][v]['img_s_median'] / b
    out['summary'] = summ
    out['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    path = Path(args.out or RESULTS / 'trainer_threads.json')
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({s: {v: {k: x for k, x in d.items() if k != 'img_s_all'} for v, d in r.items()} for s, r in summ.items()}, indent=1))


# --------------------------------------------------------------------------------- speed_options.md
NOTES_MARK = '<!-- notes: everything below this line is kept when the report is regenerated -->'


def _load(name):
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def main_report(args):
    "Write results/speed_options.md from matmul.json, speed_options.json, bf16_curve.json and refstep.json."
    mm, cu, ta = (_load(n) for n in ('matmul.json', 'bf16_curve.json', 'trainer_threads.json'))
    rss = [x for x in (_load('refstep.json'), _load('refstep_fastpaths.json')) if x]
    sos = [json.loads(f.read_text()) for f in sorted(RESULTS.glob('speed_options*.json'))]
    path = RESULTS / 'speed_options.md'
    notes = ''
    if path.exists() and NOTES_MARK in path.read_text(): notes = path.read_text().split(NOTES_MARK, 1)[1]
    L = ['# Speed options for training on this 2-core CPU', '',
         'Generated by `python bench/throughput.py --report` from the result files named below (recommendations at the end '
         'are written by hand). The machine was shared with other jobs while measuring (load averages are in each JSON), so '
         'every figure is a ratio measured side by side: in one process with the candidates interleaved, or in processes '
         'that alternate. "CPU-time" ratios use process CPU seconds and are insensitive to time lost to other users; '
         'compare them only between candidates with the same thread count.', '']
    if mm:
        t = mm['table']
        L += [f"## 1. fp32 matmul paths (`{mm['command']}`, {mm['date']}, OMP_WAIT_POLICY {mm.get('omp_wait_policy')})", '',
              'GFLOP/s (wall, median) and speed-up vs the default path in the same round: wall / CPU-time.', '',
              '| shape | threads | default (MKL) | MKL shim | oneDNN flag | oneDNN flag + shim | bf16 |', '|---|---|---|---|---|---|---|']
        for s in mm['shapes']:
            for th in ('2', '1'):
                d, sh = t.get(f'default_t{th}', {}).get(s), t.get(f'shim_t{th}', {}).get(s)
                if not d: continue
                f = lambda c: f"{c['gflops_median']:.0f} ({c['ratio_to_default_same_threads']:.2f}x / {c['ratio_cpu_time']:.2f}x)"
                L.append(f"| {s} | {th} | {f(d['default'])} | {f(sh['default']) if sh else '-'} | {f(d['onednn_flag'])} | "
                         f"{f(sh['onednn_flag']) if sh else '-'} | {f(d['bf16'])} |")
        e = mm['relerr'].get('default_t2', {}); es = mm['relerr'].get('shim_t2', {})
        L += ['', f"Relative error vs fp64 (1024^2): default {e.get('default', 0):.1e}, shim {es.get('default', 0):.1e}, "
                  f"oneDNN flag {e.get('onednn_flag', 0):.1e} (fp32 math: this CPU has no AMX, so oneDNN does not down-convert), "
                  f"bf16 {e.get('bf16', 0):.1e}.", '']
        ex = mm.get('extras', {})
        if 'gflops' in ex:
            L += [f"Inductor C++ GEMM template (max-autotune, only for frozen/constant weights, i.e. inference): "
                  f"{ex['gflops'].get('inductor_cpp_template', 0):.0f} GFLOP/s vs eager {ex['gflops'].get('eager_default', 0):.0f} "
                  f"(1024^2, 2 threads); autotuning ATEN vs CPP compiled in {ex.get('inductor_autotune_ATEN_CPP_compile_s', 0):.0f} s. "
                  f"Training matmuls (non-constant weights) are not eligible for the template.", '']
        lk = mm.get('linkage', {})
        L += [f"MKL linkage: {lk.get('verdict')}.", '']
    for j, so in enumerate(sos):
        L += [f"## 2{'abcdefgh'[j]}. Full training step (`{so['command']}`, {so['date']}, load average {so['loadavg_start']} -> "
              f"{so.get('loadavg_end')})", '',
              'Speed-up = fp32 default step time / option step time (higher is better). Default processes: 2 threads, '
              'OMP_WAIT_POLICY=PASSIVE, MKL default path, fp32.', '']
        for s, row in so['summary'].items():
            L += [f"### {s}", '', '| option | step ms (median) | speed-up (wall) | speed-up (CPU time) | steps | how measured |',
                  '|---|---|---|---|---|---|']
            for k, v in row.items():
                if k == 'micro_ms': continue
                if 'error' in v: L.append(f"| {k} | failed | | | | {v['error'][-120:]!r} |"); continue
                extra = f", compile {v['compile_s']:.0f} s" if v.get('compile_s') else ''
                L.append(f"| {k} | {v['step_ms']:.0f} | {v['speedup']:.2f}x | {v.get('speedup_cpu_time', float('nan')):.2f}x | {v['n']} | {v['how']}{extra} |")
            m = row.get('micro_ms')
            if m:
                L += ['', f"Optimizer and EMA alone (ms, median of 10, same gradients): AdamW for-loop (CPU default) "
                          f"{m['adamw_default']:.1f}, foreach {m['adamw_foreach']:.1f}, fused {m['adamw_fused']:.1f}; "
                          f"EMA `_foreach_lerp_` {m['ema_foreach_lerp']:.1f} vs a per-parameter mul_/add_ loop {m['ema_param_loop']:.1f}; "
                          f"the finite-loss check (a host sync) {m['isfinite_sync']:.3f}."]
            L.append('')
    if ta:
        L += [f"## 2t. The real training loop with DataLoader workers: threads and OpenMP wait policy (`{ta['command']}`, {ta['date']})", '',
              'fit() on the CIFAR-10 folder (first 500 images per class), 2 DataLoader workers, a few optimizer steps per '
              'process; processes alternate. img/s from the loop\'s own metrics, first step excluded. (Trainer.fit before the '
              'Learner redesign; make_learner(cfg).fit() since.)', '',
              '| setting | variant | img/s (median) | vs 2 threads + libgomp default | steps |', '|---|---|---|---|---|']
        for s, row in ta['summary'].items():
            for v, d in row.items():
                L.append(f"| {s} | {v} | {d['img_s_median']:.2f} | {d.get('ratio_to_t2_omp_default', float('nan')):.2f}x | {len(d['img_s_all'])} |")
        L.append('')
    if cu and cu.get('compare_to_fp32'):
        plot_curve(cu, RESULTS / 'bf16_curve.png')
        r = cu['runs']
        L += [f"## 3. bf16 autocast numerics (`{cu['command']}`, {cu['date']})", '',
              f"The real training loop, cifar10_tiny model shape (32 px, patch 4, ViT-Tiny width, predictor depth 4), synthetic data, "
              f"batch {r['fp32']['batch']}, {r['fp32']['steps']} steps, same seed; fp32 vs bf16 autocast vs the oneDNN fp32 path "
              f"(a different fp32 GEMM: its distance from fp32 is the noise floor of fp32 itself).", '',
              '| run vs fp32 | mean abs loss diff | max | mean abs diff, last 20 | relative, last 20 | final loss (last 20 mean) | speed vs fp32 |',
              '|---|---|---|---|---|---|---|']
        for k, c in cu['compare_to_fp32'].items():
            L.append(f"| {k} | {c['mean_abs_diff']:.4f} | {c['max_abs_diff']:.4f} | {c['mean_abs_diff_last20']:.4f} | "
                     f"{100 * c['rel_diff_last20']:.2f}% | {c['final_loss_other']:.4f} (fp32 {c['final_loss_fp32']:.4f}) | "
                     f"{c['speed_ratio_other_over_fp32']:.2f}x |")
        L += ['', f"fp32 step-to-step loss change (last 20 steps): {cu['fp32_step_to_step_noise_last20']:.4f}. "
                  f"Curves: bf16_curve.png.", '']
    for rs in rss:
        L += [f"## 4. Against the reference-style step (`{rs['command']}`, {rs['date']})", '',
              '| run | hjepa_nb img/s | reference-style img/s | speed-up (wall) | CPU-time ratio | ours bf16 vs ref | ours shim vs ref (no shim) |',
              '|---|---|---|---|---|---|---|']
        for k, d in rs['runs'].items():
            if 'error' in d: L.append(f"| {k} | failed | | | | | |"); continue
            b = d.get('ours_bf16_vs_ref') or {}
            L.append(f"| {k} | {d['ours_img_per_s']:.1f} | {d['ref_img_per_s']:.1f} | {d['speedup_median_of_ratios']:.2f}x | "
                     f"{d['speedup_cpu_time']:.2f}x | {b.get('speedup_median_of_ratios', float('nan')):.2f}x | "
                     f"{d.get('ours_shim_vs_ref_default_across_processes') or float('nan'):.2f}x |")
        L.append('')
    L += [NOTES_MARK, notes.strip('\n') and '\n' + notes.strip('\n') + '\n' or '']
    path.write_text('\n'.join(L))
    print('\n'.join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--settings', default='quick_validation,cifar10_tiny')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=0, help='timed rounds per setting (0: the setting default)')
    ap.add_argument('--old-commit', default=OLD_COMMIT, help="time the step against the Trainer of this commit ('': not at all)")
    ap.add_argument('--limit', type=int, default=500, help='data path: images per class decoded into the cache')
    ap.add_argument('--out', default=None)
    ap.add_argument('--omp-wait-policy', default='PASSIVE',
                    help="OMP_WAIT_POLICY for the measuring processes ('inherit': leave the environment's)")
    ap.add_argument('--options', action='store_true', help='speed options suite')
    ap.add_argument('--compile', action='store_true', help='with --options: also torch.compile the model (slow to compile)')
    ap.add_argument('--parts', default='inproc,shim,omp,interop',
                    help='with --options: inproc (bf16, oneDNN flag, channels_last, 1 thread), shim, omp, interop, compile')
    ap.add_argument('--alternations', type=int, default=2, help='with --options: default/variant process pairs per setting')
    ap.add_argument('--bf16-curve', action='store_true', help='fp32 vs bf16 vs oneDNN loss curves with make_learner(cfg).fit()')
    ap.add_argument('--trainer-ab', action='store_true', help='real training loop: 2 threads (libgomp default / PASSIVE) vs 1 thread')
    ap.add_argument('--report', action='store_true', help='write results/speed_options.md from the result JSON files')
    ap.add_argument('--steps', type=int, default=100)
    ap.add_argument('--batch', type=int, default=32)
    # worker modes (internal)
    ap.add_argument('--worker-step', dest='setting_step', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--worker-data', dest='setting_data', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--worker-options', dest='setting_opts', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--worker-curve', dest='variant', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--worker-trainer', dest='setting_trainer', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--amp', default='none', help=argparse.SUPPRESS)
    ap.add_argument('--batches', type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument('--cands', default=','.join(OPTION_CANDIDATES), help=argparse.SUPPRESS)
    ap.add_argument('--interop', type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for attr, fn in (('setting_step', worker_step), ('setting_data', worker_data), ('setting_opts', worker_options),
                     ('variant', worker_curve), ('setting_trainer', worker_trainer)):
        if getattr(args, attr):
            if attr != 'variant': args.setting = getattr(args, attr)
            print('RESULT ' + json.dumps(fn(args)), flush=True)
            return
    if args.omp_wait_policy != 'inherit': OMP_ENV['OMP_WAIT_POLICY'] = args.omp_wait_policy
    if args.report: return main_report(args)
    if args.trainer_ab: return main_trainer_ab(args)
    if args.options: return main_options(args)
    if args.bf16_curve: return main_bf16_curve(args)
    return main_default(args)


if __name__ == '__main__':
    main()
