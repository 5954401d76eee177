"Unreadable images (data.bad_images=error|skip) and a decoded cache that cannot go stale, through Python and the CLI."
import os, shutil, warnings
from pathlib import Path
import pytest, torch
from conftest import one_line_error as _one_line_error
from conftest import SHARED_CIFAR, cli
from hjepa_nb.config import TINY_OVERRIDES, load_config
from hjepa_nb.data import DataError, build_datasets, decode_file, image_folder

pytestmark = pytest.mark.skipif(not SHARED_CIFAR.exists(), reason='needs ../shared/data/cifar10 beside the checkout')
CLASSES = ('airplane', 'bird', 'cat')

@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    "A cache folder of the test's own, so the real decoded cache is never touched."
    monkeypatch.setenv('HJEPA_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'

def _real(cls, n=4): return sorted((SHARED_CIFAR / 'test' / cls).iterdir())[:n]

@pytest.fixture
def bad_root(tmp_path):
    "train/ and test/ of 3 classes x 4 real CIFAR-10 JPEGs, plus a garbage file and a truncated JPEG in train/."
    root = tmp_path / 'data'
    for split in ('train', 'test'):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for f in _real(c): shutil.copy(f, root / split / c / f.name)
    junk, cut = root / 'train' / 'bird' / 'junk.jpg', root / 'train' / 'cat' / 'cut.jpg'
    junk.write_bytes(b'this is not a JPEG ' * 20)
    full = sorted((SHARED_CIFAR / 'test' / 'cat').iterdir())[-1].read_bytes()
    cut.write_bytes(full[:len(full) // 2])
    return root, junk, cut

def _cfg(root, *more): return load_config(None, ['data.dataset=folder', f'data.root={root}', *more])

def _bad_warnings(w): return [str(x.message) for x in w if 'data.bad_images' in str(x.message)]

# --- Python: build_datasets and image_folder --------------------------------------------------------

def test_error_names_each_bad_file(bad_root):
    root, junk, cut = bad_root
    for _ in range(2):              # the second time the decoded cache answers: it remembers the bad files
        with pytest.raises(DataError) as e: build_datasets(_cfg(root), verbose=False)
        msg = str(e.value)
        for part in (str(junk), 'not an image', str(cut), 'truncated', 'data.bad_images=skip'): assert part in msg, (part, msg)
        assert '\n' not in msg

def test_skip_keeps_good_images_labels_aligned_one_warning(bad_root):
    root, junk, cut = bad_root
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        tr, te = build_datasets(_cfg(root, 'data.bad_images=skip'), train_augment=False, verbose=False)
    msgs = _bad_warnings(w)
    assert len(msgs) == 1 and 'left out 2 unreadable images' in msgs[0] and str(junk) in msgs[0] and str(cut) in msgs[0], msgs
    assert (len(tr), len(te)) == (12, 12)
    assert tr.classes == list(CLASSES) and torch.bincount(tr.labels).tolist() == [4, 4, 4]
    plain = image_folder(root / 'train', bad_images='skip', report=False, verbose=False)
    for i, c in enumerate(CLASSES):          # image k of class c is the k-th good file of c, with label i
        for k, f in enumerate(_real(c)):
            j = 4 * i + k
            assert int(plain.labels[j]) == i
            assert torch.equal(plain.image(j), decode_file(f))

def test_empty_file_and_empty_class_folder(bad_root):
    root, _, _ = bad_root
    (root / 'test' / 'cat' / 'zero.jpg').write_bytes(b'')
    with pytest.raises(DataError, match='zero.jpg .an empty file'): image_folder(root / 'test', verbose=False)
    (root / 'test' / 'cat' / 'zero.jpg').unlink()
    (root / 'test' / 'frog').mkdir()
    with pytest.raises(DataError, match='empty class folder'): image_folder(root / 'test', verbose=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = image_folder(root / 'test', verbose=False, bad_images='skip')
    assert ds.classes == list(CLASSES) and len(ds) == 12
    assert len(_bad_warnings(w)) == 1 and 'frog' in _bad_warnings(w)[0]

def test_lazy_decoding_names_or_skips(bad_root):
    root, junk, cut = bad_root
    lazy = image_folder(root / 'train', cache=False)
    assert len(lazy) == 14                   # not decoded yet: the bad files are found when asked for
    with pytest.raises(DataError, match=str(junk)): [lazy[i] for i in range(len(lazy))]
    lazy = image_folder(root / 'train', cache=False, bad_images='skip')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        items = [lazy[i] for i in range(len(lazy))]
    assert len(_bad_warnings(w)) == 2
    files = lazy.files
    for i, (img, y) in enumerate(items):     # an unreadable file's place goes to the next readable item, label and all
        j = i if files[i] not in (str(junk), str(cut)) else (i + 1) % len(files)
        assert torch.equal(img, decode_file(files[j])) and y == int(lazy.labels[j])

# --- the decoded cache is keyed on the files ---------------------------------------------------------

def test_cache_follows_an_image_edited_in_place(tmp_path, own_cache):
    root = tmp_path / 'data'
    for split in ('train', 'test'):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for f in _real(c, 2): shutil.copy(f, root / split / c / f.name)
    cfg = _cfg(root)
    tr, _ = build_datasets(cfg, verbose=False)
    p = root / 'train' / 'bird' / _real('bird', 1)[0].name
    before = decode_file(p)
    assert torch.equal(tr.images[2], before)
    again, _ = build_datasets(cfg, verbose=False)
    assert again.source.endswith('(decoded cache)')
    other = _real('cat', 3)[2]               # a JPEG with other pixels, written over the bird under its name
    mt = p.stat().st_mtime_ns
    p.write_bytes(other.read_bytes())
    os.utime(p, ns=(mt + 10**9, mt + 10**9))
    new, _ = build_datasets(cfg, verbose=False)
    assert not new.source.endswith('(decoded cache)')
    assert torch.equal(new.images[2], decode_file(other)) and not torch.equal(new.images[2], before)
    assert len(list((own_cache / 'decoded').glob('data_train-*.pt'))) == 1    # the stale cache was removed
    # the same size and contents but only a new modification time: decoded again too (cheap, and never stale)
    os.utime(p, ns=(mt + 2 * 10**9, mt + 2 * 10**9))
    assert not build_datasets(cfg, verbose=False)[0].source.endswith('(decoded cache)')

# --- the CLI: one line naming the file, exit 2; skip trains ------------------------------------------

def _train(root, out, *more, cache):
    tiny = [o for o in TINY_OVERRIDES if not o.startswith(('data.dataset=', 'data.synthetic_size='))]
    return cli('hjepa-train', 'configs/demo.yaml', 'data.dataset=folder', f'data.root={root}', *tiny, 'train.max_steps=2',
               'data.batch_size=4', *more, '--out', out, '--quiet', env={'HJEPA_CACHE': str(cache)})

def test_cli_bad_image(bad_root, tmp_path, own_cache):
    root, junk, cut = bad_root
    _one_line_error(_train(root, tmp_path / 'o1', cache=own_cache), str(junk), str(cut), 'data.bad_images=skip')
    r = _train(root, tmp_path / 'o2', 'data.bad_images=skip', cache=own_cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count('data.bad_images=skip: left out 2 unreadable images') == 1, r.stderr[-2000:]

def test_cli_bad_image_lazy_in_a_worker(bad_root, tmp_path, own_cache):
    "Decoding per item in a DataLoader worker: still one line naming the file."
    root, junk, cut = bad_root
    (root / 'train' / 'cat' / 'cut.jpg').unlink()
    r = _train(root, tmp_path / 'o', 'data.cache=false', 'data.num_workers=1', 'data.batch_size=13', cache=own_cache)
    _one_line_error(r, str(junk), 'data.bad_images=skip', 'DataLoader worker')

# --- issue #25.8: a truncated image with lazy reading is never used silently ------------------------

def _pngs_with_truncated(root: Path):
    "train/ of 20 small PNGs (2 classes) plus one cut to its first 300 bytes; test/ of 4 PNGs; returns the cut file."
    import io
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (('train', 21), ('test', 4)):
        for i in range(n):
            d = root / split / ('a' if i % 2 else 'b'); d.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(buf, 'PNG')
            data = buf.getvalue()
            (d / f'{i}.png').write_bytes(data[:300] if (split, i) == ('train', 20) else data)
    return root / 'train' / 'b' / '20.png'

def test_lazy_truncated_png_is_named_or_counted(tmp_path):
    "Lazily read (data.cache=false), the cut PNG is never decoded partially: drawn, it stops the run naming it; not drawn, the end says how many files were never opened."
    cut = _pngs_with_truncated(tmp_path / 'data')
    base = ['data.dataset=folder', f'data.root={tmp_path / "data"}', 'data.cache=false', 'data.num_workers=0', 'eval.every=0',
            'log.tensorboard=false', 'log.monitor_every=0', 'model.depth=1', 'model.pred_depth=1', 'train.max_steps=2']
    r = cli('hjepa-train', 'configs/demo.yaml', *base, 'data.batch_size=4', '--out', tmp_path / 'run1', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'read at most 8 of the 21 training images' in r.stderr and '13 were never opened' in r.stderr, r.stderr[-2000:]
    r = cli('hjepa-train', 'configs/demo.yaml', *base, 'data.batch_size=21', 'train.max_steps=1', '--out', tmp_path / 'run2', '--quiet')
    _one_line_error(r, str(cut), 'truncated or incomplete: 300 bytes')
