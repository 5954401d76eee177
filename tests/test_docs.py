"""The documentation site: nbdev's processing of every notebook, then (where Quarto is installed) `nbdev_docs` itself.

Both run on a copy of the checkout in a temporary folder, so nbs/ and the repo root stay as committed (the build writes
nbs/nbdev.yml, nbs/sidebar.yml, _proc/, _docs/ and README.md).

`nbdev_docs` does not run the notebooks: Quarto renders the stored outputs (`--no-execute` / Quarto's default for .ipynb).
What it does execute is nbdev's `exec_show_docs` step: in each notebook, every `#| export` cell, every cell that imports
something, and every `show_doc` cell, in that order and without the other cells. A cell that imports *and* uses a name
made in a cell that is not run there fails the docs build (nbdev's FAQ: keep imports in their own cells), which
`test_docs_processing` catches with the notebook, cell and error named."""
import json, os, re, shutil, subprocess, sys, textwrap, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_PARTS = {'_proc', '_docs', '_site', 'runs', '.git', '__pycache__', '.ipynb_checkpoints', '_output', '.pytest_cache'}

def _checkout_files() -> list[Path]:
    "The checkout's files as git sees them (tracked, and untracked but not ignored); every file when git is not there."
    try:
        out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / p for p in out.decode().split('\0') if p and (ROOT / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob('*') if p.is_file() and not SKIP_PARTS & set(p.relative_to(ROOT).parts)]

def _notebooks() -> list[str]:
    return sorted(p.name for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "A copy of the checkout with nbdev's docs processing done: `nbs/nbdev.yml`, `nbs/sidebar.yml` and `_proc/`."
    repo = tmp_path_factory.mktemp('docs') / 'repo'
    for f in _checkout_files():
        d = repo / f.relative_to(ROOT)
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, d)
    # what `nbdev_docs` does before `quarto render` (nbdev.quarto._pre_docs), less the Quarto install it attempts
    # when `quarto` is not on PATH; notebooks one by one (2 processes) so that every failure is reported, not the first
    worker = textwrap.dedent('''
        import os, time, warnings
        from pathlib import Path
        def proc(name):
            "Process nbs/<name> into _proc/<name> as `nbdev_docs` does; (name, error or None, seconds)."
            warnings.simplefilter('ignore')
            os.environ.setdefault('MPLBACKEND', 'Agg')
            import nbdev.serve_drv
            from nbdev.processors import FilterDefaults
            t = time.time()
            try:
                nbdev.serve_drv.main((Path('nbs') / name, Path('_proc') / name, FilterDefaults))
                return name, None, time.time() - t
            except Exception as e:
                cause = f'{type(e.__cause__).__name__}: {e.__cause__}' if e.__cause__ else ''
                return name, f'{e}\\n{cause}'.strip(), time.time() - t
        ''')
    script = textwrap.dedent('''
        import json, multiprocessing as mp, shutil, sys
        from concurrent.futures import ProcessPoolExecutor
        from pathlib import Path
        from _proc_worker import proc
        if __name__ == '__main__':
            import nbdev.quarto, nbdev.doclinks
            from nbdev.config import get_config
            cfg = get_config()
            nbdev.quarto.refresh_quarto_yml()
            nbdev.doclinks._build_modidx()
            nbdev.quarto.nbdev_sidebar.__wrapped__(path=cfg.nbs_path)
            Path('_proc').mkdir(exist_ok=True)
            for f in cfg.nbs_path.iterdir():
                if f.is_file() and f.suffix != '.ipynb': shutil.copy2(f, Path('_proc') / f.name)
            with ProcessPoolExecutor(2, mp_context=mp.get_context('spawn')) as ex: res = list(ex.map(proc, sys.argv[1:]))
            json.dump(res, open('_proc_result.json', 'w'))
        ''')
    (repo / '_proc_worker.py').write_text(worker)
    (repo / '_proc_docs.py').write_text(script)
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    t0 = time.time()
    r = subprocess.run([sys.executable, '_proc_docs.py', *_notebooks()], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f'nbdev docs processing crashed:\n{r.stderr[-3000:]}'
    res = json.loads((repo / '_proc_result.json').read_text())
    return dict(repo=repo, results=res, seconds=time.time() - t0)

def test_docs_processing(site):
    "nbdev's docs step succeeds on every notebook (this is where `nbdev_docs` runs code), and the site config is complete."
    repo, res = site['repo'], site['results']
    failed = [(n, err) for n, err, _ in res if err]
    assert not failed, ('the docs build (nbdev_docs / nbdev_proc_nbs) fails on the cells below. nbdev runs, from the '
                        'directory nbdev_docs is called in, only the cells that export, import or call show_doc; a test '
                        'cell that also imports (anywhere in it, even inside an if or a def) is run there without the '
                        'cells before it. Move those imports to the notebook\'s imports cell.\n\n'
                        + '\n\n'.join(f'nbs/{n}: {e[:1200]}' for n, e in failed))
    for nb in _notebooks():
        assert (repo / '_proc' / nb).exists(), f'no processed page for nbs/{nb}'
    # the sidebar (generated by nbdev from nbs/) lists every notebook; nbdev.yml carries settings.ini's site settings
    sidebar = (repo / 'nbs' / 'sidebar.yml').read_text()
    missing = [nb for nb in _notebooks() if nb not in sidebar]
    assert not missing, f'sidebar.yml does not list {missing}'
    nbdev_yml = (repo / 'nbs' / 'nbdev.yml').read_text()
    assert 'title: "hjepa_nb"' in nbdev_yml and 'site-url:' in nbdev_yml, nbdev_yml
    qy = (repo / '_proc' / '_quarto.yml').read_text()
    assert 'nbdev.yml' in qy and 'sidebar.yml' in qy, 'nbs/_quarto.yml must load nbdev.yml and sidebar.yml'
    print(f"docs processing of {len(res)} notebooks: {site['seconds']:.1f} s; per notebook: "
          + ', '.join(f'{n.split(".")[0]} {s:.1f}' for n, _, s in res))

def _cells(p: Path) -> list[dict]: return json.loads(p.read_text())['cells']

def _text(cells) -> str:
    "Sources and text outputs of the cells."
    out = []
    for c in cells:
        out.append(''.join(c['source']))
        for o in c.get('outputs', []):
            out.append(''.join(o.get('text', '')))
            for v in o.get('data', {}).values(): out.append(''.join(v) if isinstance(v, list) else str(v))
    return '\n'.join(out)

def test_docs_pages_content(site):
    "The processed pages: a title from each notebook, no nbdev directives left, the index has the install and train commands."
    repo = site['repo']
    done = {n for n, err, _ in site['results'] if not err}
    for nb in _notebooks():
        if nb not in done: continue                       # reported by test_docs_processing
        cells = _cells(repo / '_proc' / nb)
        front = ''.join(cells[0]['source']) if cells and cells[0]['cell_type'] == 'raw' else ''
        assert 'title:' in front, f'nbs/{nb}: no title in the page front matter (first markdown cell "# Title")'
        left = [l for c in cells if c['cell_type'] == 'code' for l in ''.join(c['source']).splitlines()
                if re.match(r'#\|\s*(default_exp|export|exporti|exports|hide|slow|cuda)\b', l)]
        assert not left, f'nbs/{nb}: nbdev directives left in the page (hidden cells shown?): {left[:3]}'
    if 'index.ipynb' in done:
        idx = _text(_cells(repo / '_proc' / 'index.ipynb'))
        for cmd in ('pip install -e ".[dev]"', 'hjepa-train configs/demo.yaml', 'nbdev_test && pytest tests/'):
            assert cmd in idx, f'the index page does not show {cmd!r}'
    if '02_masks.ipynb' in done:                           # API docs are rendered (show_doc ran)
        masks = _text(_cells(repo / '_proc' / '02_masks.ipynb'))
        assert 'MultiBlockMaskCollator' in masks and 'sample_masks' in masks

def test_docs_site_html(site):
    "`nbdev_docs` as a person runs it: an HTML page for every notebook, the index with the commands. Needs Quarto."
    quarto = shutil.which('quarto')
    if not quarto:
        msg = ('Quarto is not installed: `nbdev_docs` cannot render the site here. quarto-cli on PyPI is a source package '
               'that downloads the Quarto binary from GitHub when it is built, which this machine cannot reach.')
        if os.environ.get('HJEPA_REQUIRE_QUARTO'): pytest.fail(msg)
        pytest.skip(msg)
    repo = site['repo']
    t0 = time.time()
    r = subprocess.run(['nbdev_docs'], cwd=repo, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f'nbdev_docs failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}'
    docs = repo / '_docs'
    missing = [nb for nb in _notebooks() if not (docs / nb.replace('.ipynb', '.html')).exists()]
    assert not missing, f'no HTML page for {missing}'
    index = (docs / 'index.html').read_text()
    for cmd in ('pip install -e', 'hjepa-train configs/demo.yaml'):
        assert cmd in index.replace('&quot;', '"'), f'index.html does not show {cmd!r}'
    print(f'nbdev_docs: {time.time() - t0:.1f} s')
