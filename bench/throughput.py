"""The whole training loop's images/s against its step's alone, on one config, side by side in one invocation.

    python bench/throughput.py                                   # configs/cifar10_tiny.yaml -> bench/results/throughput_loop.{json,md}
    python bench/throughput.py --config configs/demo.yaml --steps 3 --rounds 1 --out /tmp/t   # a smoke run

Two measurements of the same config, back to back, in `--rounds` rounds whose order alternates (round 0: step, then
loop; round 1: loop, then step; ...), so that load from other users of the machine hits both alike:
- **one_step**: `Learner.one_step` of the config's Learner (`cbs=[NonFiniteGuard()]`) in this process, on batches
  collated beforehand by the Learner's own loader (the config's data, augmentation, masks and default data workers):
  the step alone, no data loading, no other callbacks.
- **loop**: the whole training loop, `hjepa-train CONFIG train.max_steps=STEPS log.every=1 --quiet` in a fresh process
  (`make_learner(cfg).fit()`: data workers, schedules, metrics, checkpoints and every other callback of the config);
  img/s read from its `metrics.jsonl` (one row per optimizer step; TensorBoard and the progress bar off).
Both sides drop their first `--skip` steps (worker start-up, first-call allocations) and report images / seconds over
the rest. Headline: loop / one_step, the median over rounds of the per-round ratio (issue #24 target: >= 90%).
"""
import argparse, itertools, resource, statistics, time
import common as C

def step_rate(learn, batches, steps: int, skip: int) -> dict:
    "img/s of `steps` calls of `learn.one_step` on `batches` (cycled), the first `skip` dropped."
    k = itertools.count()
    ts = C.timings(lambda: learn.one_step(batches[next(k) % len(batches)]), steps, warmup=0)
    return dict(step_s=ts, img_s=learn.cfg.data.batch_size * learn.cfg.optim.accum_steps * (steps - skip) / sum(ts[skip:]))

def loop_rate(config: str, steps: int, skip: int) -> dict:
    "img/s of a whole `hjepa-train` run of `steps` optimizer steps, from its metrics rows after the first `skip`."
    r = C.hjepa_train(config, [f'train.max_steps={steps}'])
    rows = [x for x in r['rows'] if 'img_s' in x][skip:]
    return dict(img_s=len(rows) / sum(1 / x['img_s'] for x in rows), img_s_rows=[x['img_s'] for x in r['rows'] if 'img_s' in x],
                wall_s=r['wall_s'], loss=r['rows'][-1].get('loss'), maxrss_mib=r['maxrss_children_mib'])

def report(res: dict) -> str:
    c, rr = res['setup'], res['rounds']
    L = C.md_header(res, 'The training loop vs its step alone (images/s, side by side)')
    L += [f"Config `{res['config']}`: batch {c['batch_size']} x accum {c['accum_steps']}, {c['img_size']} px, "
          f"{c['num_workers']} data workers ({c['dataset']}{' at ' + c['root'] if c['root'] else ''}), autocast {c['autocast']}; "
          f"{res['steps']} optimizer steps per measurement, first {res['skip']} dropped; {len(rr)} rounds, back to back, the order alternating from round to round.", '',
          f"**loop / one_step = {100 * res['loop_over_step']:.1f}%** (median over rounds of the per-round ratio; target >= 90%)", '',
          '| round | order | one_step img/s | loop img/s | loop / one_step | loop wall s |', '|---|---|---|---|---|---|']
    for i, r in enumerate(rr):
        L.append(f"| {i} | {r['order']} | {r['one_step']['img_s']:.1f} | {r['loop']['img_s']:.1f} | "
                 f"{100 * r['loop']['img_s'] / r['one_step']['img_s']:.1f}% | {r['loop']['wall_s']:.0f} |")
    L += ['', f"Medians: one_step {res['one_step_img_s']:.1f} img/s, loop {res['loop_img_s']:.1f} img/s. Peak RSS: this process "
          f"(one_step side, holding the datasets and the collated batches) {res['maxrss_mib']:.0f} MiB; the largest hjepa-train process "
          f"{max(r['loop']['maxrss_mib'] for r in rr):.0f} MiB. Setup of the one_step Learner and collation of its batches "
          f"{res['setup_s']:.0f} s (not timed).", '',
          'one_step is the step the loop runs (`Learner.one_step`); the difference is what the loop adds around it: waiting '
          'for the data workers, the callbacks (schedules, metrics row, finite check, checkpoint bookkeeping, monitor).', '']
    return '\n'.join(L)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--config', default='configs/cifar10_tiny.yaml', help='relative to the repository root')
    ap.add_argument('--steps', type=int, default=20, help='optimizer steps per measurement (each side, each round)')
    ap.add_argument('--skip', type=int, default=3, help='first steps dropped on each side')
    ap.add_argument('--rounds', type=int, default=2, help='rounds of (step, loop), order alternating')
    ap.add_argument('--out', default=str(C.RESULTS / 'throughput_loop'), help='result path without suffix (.json and .md)')
    a = ap.parse_args()
    a.skip = min(a.skip, a.steps - 1)
    from hjepa_nb.config import load_config, config_to_dict
    from hjepa_nb.train import Learner
    from hjepa_nb.callbacks import NonFiniteGuard
    res = C.header('throughput.py')
    cfg = load_config(C.ROOT / a.config)
    t0 = time.perf_counter()
    learn = Learner(cfg, cbs=[NonFiniteGuard()])          # writes nothing: no RunFolder, metrics or checkpoints
    learn.setup()
    batches = C.train_batches(learn, min(a.steps, 10))
    d = cfg.data
    res.update(config=a.config, config_values=config_to_dict(cfg), steps=a.steps, skip=a.skip, setup_s=time.perf_counter() - t0,
               setup=dict(batch_size=d.batch_size, accum_steps=cfg.optim.accum_steps, img_size=cfg.model.img_size, dataset=d.dataset,
                          root=d.root, num_workers=d.num_workers, autocast=str(learn.amp or 'none (fp32)')), rounds=[])
    for r in range(a.rounds):
        order = ('one_step', 'loop') if r % 2 == 0 else ('loop', 'one_step')
        row = dict(order=' then '.join(order))
        for side in order:
            row[side] = step_rate(learn, batches, a.steps, a.skip) if side == 'one_step' else loop_rate(a.config, a.steps, a.skip)
        res['rounds'].append(row)
        print(f"round {r} ({row['order']}): one_step {row['one_step']['img_s']:.1f} img/s, loop {row['loop']['img_s']:.1f} img/s", flush=True)
    res.update(one_step_img_s=statistics.median(r['one_step']['img_s'] for r in res['rounds']),
               loop_img_s=statistics.median(r['loop']['img_s'] for r in res['rounds']),
               loop_over_step=C.median_ratio([r['loop']['img_s'] for r in res['rounds']], [r['one_step']['img_s'] for r in res['rounds']]),
               maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    C.write_results(res, a.out, report)

if __name__ == '__main__':
    main()
