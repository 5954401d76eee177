"""`hjepa-export` as a user runs it: a checkpoint from a short `hjepa-train` run, exported and loaded back by plain timm in a
fresh Python that never imports the kit, with the kit's features to 1e-5 for both encoders; and bad input, one line each."""
import json, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from conftest import cli
from hjepa_nb.config import TINY_OVERRIDES
from hjepa_nb.checkpoint import load_checkpoint
from hjepa_nb.config import from_dict
from hjepa_nb.hjepa import HJEPA
from hjepa_nb.data import SyntheticShapes, eval_transform
from hjepa_nb.export import load_encoder

# What a user of the export runs: torch and timm only (the check at the end fails if anything pulled the kit in).
PLAIN_TIMM = textwrap.dedent('''
    import sys, torch, timm
    folder, images, out = sys.argv[1:]
    model = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=0).eval()
    with torch.no_grad(): torch.save(model(torch.load(images)), out)
    assert not any(m.startswith('hjepa_nb') for m in sys.modules), 'the kit was imported'
''')

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A 4-step `hjepa-train` run on the offline sample: (checkpoint, fixed test images, the kit's model)."
    d = tmp_path_factory.mktemp('export')
    r = cli('hjepa-train', 'configs/demo.yaml', *TINY_OVERRIDES, 'train.max_steps=4', '--out', d / 'run', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = d / 'run' / 'last.pt'
    st = load_checkpoint(ckpt)
    cfg = from_dict(st['cfg'])
    model = HJEPA.from_config(cfg); model.load_state_dict(st['model']); model.eval()
    ds = SyntheticShapes(16, cfg.model.img_size, seed=1, transform=eval_transform(cfg))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.save(images, d / 'images.pt')
    return ckpt, d / 'images.pt', model

def _plain_timm_features(folder: Path, images: Path, tmp: Path) -> torch.Tensor:
    out = tmp / f'{folder.name}_feats.pt'
    r = subprocess.run([sys.executable, '-c', PLAIN_TIMM, str(folder), str(images), str(out)], capture_output=True, text=True,
                       cwd=tmp, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return torch.load(out)

@pytest.mark.parametrize('encoder', ['target', 'context'])
def test_plain_timm_reproduces_the_kit(run, tmp_path, encoder):
    ckpt, images, model = run
    out = tmp_path / encoder
    r = cli('hjepa-export', ckpt, '--out', out, '--encoder', encoder)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{encoder} encoder of {ckpt} (step 4)" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']
    feats = _plain_timm_features(out, images, tmp_path)
    with torch.no_grad(): ref = model.embed(torch.load(images), encoder)
    assert feats.shape == ref.shape == (16, 192)
    assert (feats - ref).abs().max().item() < 1e-5
    # the library loader gives the same, from the folder and straight from the checkpoint
    x = torch.load(images)
    with torch.no_grad():
        assert (load_encoder(out)(x) - ref).abs().max().item() < 1e-5
        assert (load_encoder(ckpt, encoder)(x) - ref).abs().max().item() < 1e-5

def test_config_json_and_default_encoder(run, tmp_path):
    ckpt, images, model = run
    r = cli('hjepa-export', ckpt, '--out', tmp_path / 'e')
    assert r.returncode == 0, r.stderr[-2000:]
    conf = json.loads((tmp_path / 'e' / 'config.json').read_text())
    assert conf['architecture'] == 'vit_tiny_patch16_224' and conf['global_pool'] == 'avg' and conf['num_classes'] == 0
    assert conf['model_args'] == dict(img_size=32, patch_size=8, class_token=False, global_pool='avg', fc_norm=False, depth=2)
    assert conf['pretrained_cfg']['input_size'] == [3, 32, 32]
    h = conf['hjepa']
    assert (h['encoder'], h['step'], h['images_seen'], h['config']['train']['max_steps']) == ('target', 4, 4 * 32, 4)
    from hjepa_nb import __version__
    assert h['version'] == __version__
    # the default is the target encoder: its features, not the context encoder's
    x = torch.load(images)
    with torch.no_grad():
        assert (load_encoder(tmp_path / 'e')(x) - model.embed(x, 'target')).abs().max().item() < 1e-5
        assert (model.embed(x, 'target') - model.embed(x, 'context')).abs().max().item() > 1e-3

def _one_line_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('hjepa-export: error: '), r.stderr
    for f in fragments: assert f in lines[0], (f, lines[0])

def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / 'notes.pt'; bad.write_text('hello')
    _one_line_error(cli('hjepa-export', bad, '--out', tmp_path / 'o'), str(bad), 'not a hjepa_nb checkpoint')
    _one_line_error(cli('hjepa-export', tmp_path / 'missing.pt', '--out', tmp_path / 'o'), 'checkpoint not found', 'missing.pt')
    _one_line_error(cli('hjepa-export', tmp_path, '--out', tmp_path / 'o'), 'is a folder; expected a checkpoint file')
    assert not (tmp_path / 'o').exists()

def test_missing_encoder_weights(run, tmp_path):
    ckpt, *_ = run
    st = torch.load(ckpt, weights_only=True)
    st['model'] = {k: v for k, v in st['model'].items() if not k.startswith('context_encoder.')}
    torch.save(st, tmp_path / 'partial.pt')
    _one_line_error(cli('hjepa-export', tmp_path / 'partial.pt', '--out', tmp_path / 'o', '--encoder', 'context'),
                    'partial.pt', "no 'context_encoder.*' weights")

def test_out_folder_not_empty_needs_overwrite(run, tmp_path):
    ckpt, *_ = run
    out = tmp_path / 'out'; out.mkdir()
    (out / 'keep.txt').write_text('mine')
    _one_line_error(cli('hjepa-export', ckpt, '--out', out), str(out), 'not empty (keep.txt)', '--overwrite')
    assert sorted(p.name for p in out.iterdir()) == ['keep.txt'] and (out / 'keep.txt').read_text() == 'mine'
    r = cli('hjepa-export', ckpt, '--out', out, '--overwrite')
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'keep.txt', 'model.safetensors']
    _one_line_error(cli('hjepa-export', ckpt, '--out', out / 'keep.txt'), 'keep.txt is a file')

def test_unknown_encoder_and_missing_out(run, tmp_path):
    ckpt, *_ = run
    _one_line_error(cli('hjepa-export', ckpt, '--out', tmp_path / 'o', '--encoder', 'student'), "got 'student'", 'target or context')
    _one_line_error(cli('hjepa-export', ckpt), '--out DIR is required')
    assert not (tmp_path / 'o').exists()

def test_images_seen_from_the_checkpoint(run, tmp_path):
    "The checkpoint itself says how many images the run had seen; an old one (without it) falls back to metrics.jsonl."
    ckpt, *_ = run
    st = torch.load(ckpt, weights_only=True)
    assert st['images_seen'] == 4 * 32
    alone = tmp_path / 'alone'; alone.mkdir()
    torch.save(st, alone / 'last.pt')                                  # no metrics.jsonl beside it
    assert cli('hjepa-export', alone / 'last.pt', '--out', tmp_path / 'a').returncode == 0
    assert json.loads((tmp_path / 'a' / 'config.json').read_text())['hjepa']['images_seen'] == 4 * 32
    old = {k: v for k, v in st.items() if k != 'images_seen'}
    torch.save(old, ckpt.parent / 'old.pt')                            # an old checkpoint, beside its run's metrics.jsonl
    assert cli('hjepa-export', ckpt.parent / 'old.pt', '--out', tmp_path / 'b').returncode == 0
    assert json.loads((tmp_path / 'b' / 'config.json').read_text())['hjepa']['images_seen'] == 4 * 32

def test_options_in_any_order_and_help(run, tmp_path):
    "One CLI style: options before, between or after the checkpoint; --help lists every option and ends with examples."
    ckpt, *_ = run
    r = cli('hjepa-export', '--encoder', 'context', '--out', tmp_path / 'o', ckpt, '--overwrite')
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / 'o' / 'config.json').read_text())['hjepa']['encoder'] == 'context'
    h = cli('hjepa-export', '--help')
    assert h.returncode == 0 and h.stdout.startswith('usage: hjepa-export '), h.stdout
    for opt in ('--out DIR', '--encoder NAME', '--overwrite', 'checkpoint', 'examples:', '  hjepa-export runs/demo/last.pt --out'):
        assert opt in h.stdout, (opt, h.stdout)
