"""A reference-style H-JEPA training step (how jonwiggins/H-JEPA computes one step; REFERENCE.md section 1),
timed side by side with hjepa_nb's step on the same images, masks, thread settings and process.

    python bench/refstep.py                         # quick_validation and cifar10_tiny, fp32 (~3-5 min on 2 busy cores)
    python bench/refstep.py --settings quick_validation --threads 1

Writes bench/results/refstep.{json,md}. Written here from the description of that code base, not copied.
hjepa_nb's side is `Learner.one_step` (throughput.bench_learner: the config's Learner with NonFiniteGuard); bench/
defines no step of hjepa_nb's. `--phases` splits it with throughput.PhaseTimer, summed into this file's PHASES.

What the reference-style step does (and hjepa_nb does not):
- context encoder: timm ViT over ALL tokens (class token + every patch); masked patches are zeroed after
  the position embedding (x * (1 - mask)), so masking saves no compute;
- prediction mask = the union (OR) of the target blocks; the per-image number of masked patches varies,
  so indices are padded per batch to the longest (a Python loop over the batch, a host sync for the max)
  and a validity mask is kept for the loss;
- predictor at full encoder width (192 for ViT-Tiny), blocks of nn.MultiheadAttention (pre-norm computed
  three times, for q, k and v) + MLP; its input is all N context-encoder patch tokens + one mask token per
  padded target index (+ the encoder's position embedding); final LayerNorm + Linear head;
- hierarchy: per level a Linear + LayerNorm projection of predictions and targets, coarse levels by 1-D
  AvgPool1d(2^l) over the list of gathered target tokens;
- loss: L2-normalised predictions and targets, Smooth L1, masked mean over valid tokens, weights per level;
- AdamW (default CPU implementation), gradient clipping, EMA as a Python loop of mul_/add_ per parameter.
Same timm encoder (cfg.model.encoder at cfg img_size/patch_size, with class token and learned position
table as in the reference); predictor depth and heads from the config (quick_validation: depth 2, 3 heads).
At 224/16 its parameter count equals the reference run's: 12,051,264 total, 6,526,848 trainable (checked).
"""
from __future__ import annotations
import argparse, copy, json, math, os, statistics, sys, time
from contextlib import nullcontext
from pathlib import Path

import torch, torch.nn as nn, torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'bench'))
import throughput as T  # noqa: E402

REF_PARAMS_224 = dict(total=12_051_264, trainable=6_526_848)
ROUNDS = {'quick_validation': 8, 'cifar10_tiny': 8}      # timed rounds (each: one step of each side) per setting
MOMENTUM = 0.996
PHASES = ('target_fwd', 'context_fwd', 'predictor_loss', 'backward', 'clip_adamw', 'ema')   # the reference-style step's
# hjepa_nb's step is `Learner.one_step`, split by throughput.PhaseTimer into finer phases; summed into PHASES here
OURS = dict(target_fwd=('to_device', 'target_fwd'), context_fwd=('context_fwd',), predictor_loss=('predictor_loss',),
            backward=('backward',), clip_adamw=('clip', 'finite_check', 'adamw', 'zero_grad'), ema=('ema',))


class Clock:
    "Accumulate perf_counter time per phase name (one step at a time)."
    def __init__(self): self.t, self.last = {}, None
    def start(self): self.last = time.perf_counter()
    def lap(self, name):
        now = time.perf_counter(); self.t[name] = self.t.get(name, 0.) + now - self.last; self.last = now


class RefEncoder(nn.Module):
    "timm ViT with class token; `forward(x, mask)` zeroes masked patch tokens and encodes all tokens."
    def __init__(self, name: str, img_size: int, patch_size: int, depth: int = 0, embed_dim: int = 0, num_heads: int = 0):
        super().__init__()
        import timm
        kw = {k: v for k, v in dict(depth=depth, embed_dim=embed_dim, num_heads=num_heads).items() if v}   # 0: timm's own
        self.vit = timm.create_model(name, pretrained=False, img_size=img_size, patch_size=patch_size, num_classes=0, **kw)
        self.embed_dim = self.vit.embed_dim

    def forward(self, x, mask=None):                      # mask: [B, N] bool, True = masked (to predict)
        v = self.vit
        x = v.patch_embed(x)
        x = torch.cat([v.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = v.pos_drop(x + v.pos_embed)
        if mask is not None:
            m = torch.cat([torch.zeros(mask.shape[0], 1, dtype=torch.bool, device=mask.device), mask], 1)
            x = x * (1 - m.float()).unsqueeze(-1)
        return v.norm(v.blocks(x))                         # [B, N+1, D]


class RefPredictorBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        h = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, h), nn.GELU(), nn.Dropout(0.), nn.Linear(h, dim), nn.Dropout(0.))

    def forward(self, x):
        x = x + self.attn(self.norm1(x), self.norm1(x), self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class RefPredictor(nn.Module):
    "Full-width predictor: [all context tokens, mask tokens + position] -> blocks -> norm -> head."
    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed_predictor = nn.Parameter(torch.randn(1, 1, dim) * 0.02)   # unused when positions are given
        self.blocks = nn.ModuleList([RefPredictorBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, ctx, mask_indices, pos_embed):      # ctx [B, N, D], mask_indices [B, M], pos_embed [B, N, D]
        B, Nc, D = ctx.shape
        m = self.mask_token.expand(B, mask_indices.shape[1], -1)
        m = m + torch.gather(pos_embed, 1, mask_indices[..., None].expand(-1, -1, D))
        x = torch.cat([ctx, m], 1)
        for blk in self.blocks: x = blk(x)
        return self.head(self.norm(x[:, Nc:]))


class RefHJEPA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        self.context_encoder = RefEncoder(m.encoder, m.img_size, m.patch_size, m.depth, m.embed_dim, m.num_heads)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        D = self.context_encoder.embed_dim
        self.predictor = RefPredictor(D, m.pred_depth, m.pred_heads, m.pred_mlp_ratio)
        self.levels = m.levels
        self.hierarchy_projections = nn.ModuleList([nn.Sequential(nn.Linear(D, D), nn.LayerNorm(D)) for _ in range(m.levels)])
        self.weights = list(cfg.loss.hierarchy_weights)

    def forward(self, images, mask, clock=None):          # mask: [B, N] bool union of target blocks
        if clock: clock.start()
        with torch.no_grad():
            tgt = self.target_encoder(images)
        if clock: clock.lap('target_fwd')
        ctx = self.context_encoder(images, mask)
        if clock: clock.lap('context_fwd')
        B = images.shape[0]
        counts = mask.sum(1)
        M = int(counts.max().item())                       # host sync, as in the reference
        idx = torch.zeros(B, M, dtype=torch.long)
        valid = torch.zeros(B, M, dtype=torch.bool)
        for i in range(B):                                 # per-sample padding loop
            nz = mask[i].nonzero(as_tuple=True)[0]
            idx[i, :len(nz)] = nz; valid[i, :len(nz)] = True
        pos = self.context_encoder.vit.pos_embed[:, 1:].expand(B, -1, -1)
        pred = self.predictor(ctx[:, 1:], idx, pos)
        D = pred.shape[-1]
        tgt_m = torch.gather(tgt[:, 1:], 1, idx[..., None].expand(-1, -1, D))
        loss = 0.
        for l in range(self.levels):
            p, t, w = self.hierarchy_projections[l](pred), self.hierarchy_projections[l](tgt_m), valid.float()
            if l > 0:
                k = 2 ** l
                p = F.avg_pool1d(p.transpose(1, 2), k, k).transpose(1, 2)
                t = F.avg_pool1d(t.transpose(1, 2), k, k).transpose(1, 2)
                w = F.avg_pool1d(w[:, None], k, k)[:, 0]
            p, t = F.normalize(p, dim=-1), F.normalize(t, dim=-1).detach()
            e = F.smooth_l1_loss(p, t, reduction='none').mean(-1)
            loss = loss + self.weights[l] * (e * w).sum() / w.sum().clamp_min(1e-8)
        if clock: clock.lap('predictor_loss')
        return loss

    @torch.no_grad()
    def ema(self, momentum: float):
        for pt, pc in zip(self.target_encoder.parameters(), self.context_encoder.parameters()):
            pt.data.mul_(momentum).add_(pc.data, alpha=1 - momentum)


def union_mask(batch, n_patches: int) -> torch.Tensor:
    "The reference's prediction mask: OR of the target blocks -> [B, N] bool."
    B = batch['ctx_idx'].shape[0]
    m = torch.zeros(B, n_patches, dtype=torch.bool)
    for t in batch['tgt_idx']: m.scatter_(1, t, True)
    return m


def ref_step(model, opt, images, mask, clip: float, amp=None, clock=None):
    "One reference-style training step; (wall s, process CPU s)."
    t0, c0 = time.perf_counter(), time.process_time()
    clock = clock or Clock()
    ctx = torch.autocast('cpu', dtype=amp) if amp is not None else nullcontext()
    with ctx: loss = model(images, mask, clock)
    loss.backward(); clock.lap('backward')
    if clip > 0: torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    opt.step(); opt.zero_grad(); clock.lap('clip_adamw')
    model.ema(MOMENTUM); clock.lap('ema')
    return time.perf_counter() - t0, time.process_time() - c0


def count_ref_flops(model, images, mask) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with T.explicit_attention(model), FlopCounterMode(display=False) as fc:
        model(images, mask).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    learn = T.bench_learner(T.load_cfg(args.setting), args.threads, args.amp)     # hjepa_nb's side: Learner.one_step
    cfg, ours = learn.cfg, learn.model
    amp = torch.bfloat16 if args.amp == 'bf16' else None
    torch.manual_seed(0)
    ref = RefHJEPA(cfg).train()
    opt_r = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=cfg.optim.lr,
                              betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    n_tot = sum(p.numel() for p in ref.parameters()); n_tr = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    if (cfg.model.img_size, cfg.model.patch_size, cfg.model.depth, cfg.model.embed_dim) == (224, 16, 0, 0) \
            and cfg.model.encoder == 'vit_tiny_patch16_224' \
            and (n_tot, n_tr) != (REF_PARAMS_224['total'], REF_PARAMS_224['trainable']):
        raise AssertionError(f'reference-style model has {n_tot:,} / {n_tr:,} parameters, expected the reference run\'s '
                             f"{REF_PARAMS_224['total']:,} / {REF_PARAMS_224['trainable']:,}")
    batches = T.make_batches(cfg)
    N = cfg.grid[0] * cfg.grid[1]
    masks = [union_mask(b, N) for b in batches]
    clip = cfg.optim.clip_grad
    warm, rounds = T.SETTINGS[args.setting][1], args.rounds or ROUNDS[args.setting]
    for i in range(warm):
        T.timed_step(learn, batches[i]); ref_step(ref, opt_r, batches[i]['images'], masks[i], clip, amp)
    sides = ['ours', 'ref'] + (['ours_bf16'] if args.with_bf16 else [])
    if args.with_bf16:
        with T.amp_as(learn, torch.bfloat16): T.timed_step(learn, batches[0])
    ts = {k: [] for k in sides}
    tc = {k: [] for k in sides}
    add = lambda k, wc: (ts[k].append(wc[0]), tc[k].append(wc[1]))
    ph_ref, ph_ours, timer = {p: [] for p in PHASES}, {p: [] for p in PHASES}, T.PhaseTimer()
    for r in range(rounds):
        i = r % len(batches)
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            if side == 'ours':
                add('ours', T.timed_step(learn, batches[i]))
            elif side == 'ours_bf16':
                with T.amp_as(learn, torch.bfloat16): add('ours_bf16', T.timed_step(learn, batches[i]))
            else:
                c = Clock(); add('ref', ref_step(ref, opt_r, batches[i]['images'], masks[i], clip, amp, c))
                for p in PHASES: ph_ref[p].append(c.t[p])
        if args.phases:
            ph = timer.step(learn, batches[i])
            for p in PHASES: ph_ours[p].append(sum(ph[q] for q in OURS[p]))
    used = sorted({r % len(batches) for r in range(rounds)})          # FLOPs of the mask steps that were timed
    fl_ours = statistics.mean(T.count_flops(learn, batches[i], modes=('explicit',))['explicit']['total'] for i in used)
    fl_ref = statistics.mean(count_ref_flops(ref, batches[i]['images'], masks[i]) for i in used)
    B = cfg.data.batch_size
    mo, mr = statistics.median(ts['ours']), statistics.median(ts['ref'])
    from hjepa_nb.config import config_to_dict
    return dict(setting=args.setting, config=config_to_dict(cfg), encoder_depth=len(ours.context_encoder.blocks),
                ref_encoder_depth=len(ref.context_encoder.vit.blocks), batch_size=B, img_size=cfg.model.img_size,
                patch_size=cfg.model.patch_size,
                threads=torch.get_num_threads(), amp=args.amp, omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', '(unset)'),
                ref_params=dict(total=n_tot, trainable=n_tr),
                ours_params=dict(total=sum(p.numel() for p in ours.parameters()),
                                 trainable=sum(p.numel() for p in ours.parameters() if p.requires_grad)),
                tokens=dict(ours_context=[int(b['ctx_idx'].shape[1]) for b in batches],
                            ours_targets=[len(b['tgt_idx']) * int(b['tgt_idx'][0].shape[1]) for b in batches],
                            ref_encoded=N + 1, ref_masked_padded=[int(m.sum(1).max()) for m in masks],
                            ref_masked_mean=[float(m.sum(1).float().mean()) for m in masks]),
                step_s=ts, step_cpu_s=tc, ours_step_s_median=mo,
                speedup_cpu_time=statistics.median(tc['ref']) / statistics.median(tc['ours']), ref_step_s_median=mr, ours_img_per_s=B / mo, ref_img_per_s=B / mr,
                speedup_median_of_ratios=statistics.median(r_ / o_ for o_, r_ in zip(ts['ours'], ts['ref'])),
                speedup_ratio_of_medians=mr / mo, speedup_best=min(ts['ref']) / min(ts['ours']),
                ours_bf16_vs_ref=dict(speedup_median_of_ratios=statistics.median(r_ / o_ for o_, r_ in zip(ts['ours_bf16'], ts['ref'])),
                                      ours_bf16_img_per_s=B / statistics.median(ts['ours_bf16'])) if args.with_bf16 else None,
                shim=os.environ.get('LD_PRELOAD', ''),
                ref_phase_ms={p: 1e3 * statistics.median(v) for p, v in ph_ref.items()},
                ours_phase_ms={p: 1e3 * statistics.median(v) for p, v in ph_ours.items()} if args.phases else None,
                flops_per_step=dict(ours=fl_ours, ref=fl_ref, ratio=fl_ref / fl_ours), maxrss_mib=T.maxrss_mib())


def markdown(out) -> str:
    L = ['# hjepa_nb step vs a reference-style step (jonwiggins/H-JEPA way), same process, interleaved', '',
         f"Command: `{out['command']}`  ", f"Date {out['date']}, torch {out['torch']}, {out['cpu']}; load average "
         f"{out['loadavg_start']} -> {out['loadavg_end']}.", '',
         'Speed-up = reference-style step time / hjepa_nb step time, per round (the steps alternate), median over rounds. '
         'best/best: ratio of the fastest steps. CPU-time ratio: ratio of median process CPU seconds per step (insensitive to '
         'time the process spent preempted by other users of the machine).', '',
         '| setting | threads | OMP_WAIT_POLICY | MKL shim | amp | ours img/s | ref-style img/s | **speed-up** | best/best | CPU-time ratio | FLOP ratio (ref/ours) | rounds |',
         '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for k, d in out['runs'].items():
        if 'error' in d: L.append(f"| {k} | failed: {d['error'][-200:]!r} |"); continue
        L.append(f"| {d['setting']} | {d['threads']} | {d['omp_wait_policy']} | {'yes' if d.get('shim') else 'no'} | {d['amp']} | {d['ours_img_per_s']:.1f} | "
                 f"{d['ref_img_per_s']:.1f} | **{d['speedup_median_of_ratios']:.2f}x** | {d['speedup_best']:.2f}x | {d['speedup_cpu_time']:.2f}x | "
                 f"{d['flops_per_step']['ratio']:.2f} ({d['flops_per_step']['ref'] / 1e9:.1f} / {d['flops_per_step']['ours'] / 1e9:.1f} GFLOP) | "
                 f"{len(d['step_s']['ours'])} |")
    L.append('')
    extra = []
    for k, d in out['runs'].items():
        if 'error' in d: continue
        if d.get('ours_bf16_vs_ref'):
            extra.append(f"- {k}: hjepa_nb with bf16 autocast {d['ours_bf16_vs_ref']['ours_bf16_img_per_s']:.1f} img/s vs the "
                         f"reference-style step in {d['amp']}: **{d['ours_bf16_vs_ref']['speedup_median_of_ratios']:.2f}x** (same process)")
        if d.get('ours_shim_vs_ref_default_across_processes'):
            extra.append(f"- {k}: hjepa_nb with the MKL shim vs the reference-style step without it (median step times of two "
                         f"processes run one after the other): **{d['ours_shim_vs_ref_default_across_processes']:.2f}x**")
    if extra: L += ['Our step with a fast math path against the reference-style step as that code base runs on CPU (fp32, no shim):', ''] + extra + ['']
    for k, d in out['runs'].items():
        if 'error' in d: continue
        t = d['tokens']
        L += [f"## {k}", '', f"- config: {d['config']['model']['encoder']} with {d['encoder_depth']} blocks (reference-style: "
              f"{d['ref_encoder_depth']}), {d['img_size']} px, patch {d['patch_size']}, batch {d['batch_size']}, predictor width "
              f"{d['config']['model']['pred_dim']} depth {d['config']['model']['pred_depth']}",
              f"- tokens: ours encode context {t['ours_context']} and predict {t['ours_targets']} per image; the reference-style "
              f"step encodes {t['ref_encoded']} and predicts the union of the target blocks, padded to {t['ref_masked_padded']} "
              f"(mean {[round(x, 1) for x in t['ref_masked_mean']]})",
              f"- parameters: reference-style {d['ref_params']['total']:,} total / {d['ref_params']['trainable']:,} trainable; "
              f"hjepa_nb {d['ours_params']['total']:,} / {d['ours_params']['trainable']:,}",
              f"- peak RSS of the process holding both models: {d['maxrss_mib']:.0f} MiB", '',
              '| phase (ms, median) | ' + ' | '.join(PHASES) + ' |', '|---|' + '---|' * len(PHASES),
              '| reference-style | ' + ' | '.join(f"{d['ref_phase_ms'][p]:.0f}" for p in PHASES) + ' |']
        if d.get('ours_phase_ms'):
            L.append('| hjepa_nb | ' + ' | '.join(f"{d['ours_phase_ms'][p]:.0f}" for p in PHASES) + ' |')
        L.append('')
    return '\n'.join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--settings', default='quick_validation,cifar10_tiny')
    ap.add_argument('--threads', default='2', help='comma-separated thread counts, each run in its own process')
    ap.add_argument('--omp-wait-policy', default='PASSIVE', help="OMP_WAIT_POLICY for the workers ('inherit': leave as is)")
    ap.add_argument('--amp', default='none', choices=('none', 'bf16'), help='autocast for both steps')
    ap.add_argument('--rounds', type=int, default=0)
    ap.add_argument('--with-bf16', action='store_true', help='also time hjepa_nb with bf16 autocast against the fp32 reference-style step')
    ap.add_argument('--shim', action='store_true', help='also run with the MKL vendor-check shim preloaded (both steps)')
    ap.add_argument('--phases', action='store_true', help='also time hjepa_nb phase by phase (one more step per round)')
    ap.add_argument('--out', default=None)
    ap.add_argument('--worker', dest='setting', default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.setting:
        args.threads = int(args.threads)
        print('RESULT ' + json.dumps(worker(args)), flush=True); return
    out = T.header('python bench/refstep.py ' + ' '.join(sys.argv[1:]))
    out['runs'] = {}
    env = {} if args.omp_wait_policy == 'inherit' else {'OMP_WAIT_POLICY': args.omp_wait_policy}
    shim = None
    if args.shim:
        from matmul import build_shim
        shim = build_shim()
    for s in args.settings.split(','):
        for th in args.threads.split(','):
            for pre in ([None, shim] if shim else [None]):
                key = f"{s}/t{th}/{args.amp}" + ('/shim' if pre else '')
                print(f'[{key}] ...', flush=True)
                argv = ['--worker', s, '--threads', th, '--amp', args.amp] + (['--rounds', str(args.rounds)] if args.rounds else []) \
                    + (['--phases'] if args.phases else []) + (['--with-bf16'] if args.with_bf16 else [])
                out['runs'][key] = d = T.run_sub_script(__file__, argv, int(th), preload=pre, extra_env=env)
                print('   ', {k: d.get(k) for k in ('ours_img_per_s', 'ref_img_per_s', 'speedup_median_of_ratios', 'ours_bf16_vs_ref', 'error')},
                      flush=True)
            if shim and 'error' not in out['runs'][f"{s}/t{th}/{args.amp}"] and 'error' not in d:
                base = out['runs'][f"{s}/t{th}/{args.amp}"]
                out['runs'][f"{s}/t{th}/{args.amp}/shim"]['ours_shim_vs_ref_default_across_processes'] = \
                    base['ref_step_s_median'] / d['ours_step_s_median']
    out['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    path = Path(args.out or T.RESULTS / 'refstep.json')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    md = markdown(out)
    path.with_suffix('.md').write_text(md)
    print(md)


if __name__ == '__main__':
    main()
