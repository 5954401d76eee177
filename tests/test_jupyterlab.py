"""The notebooks as a person uses them: a real JupyterLab server driven by a real browser (Playwright + Debian chromium).

Run All on the mask explorer notebook and move a slider; run the live-dashboard training notebook and watch the loss
panel change while it trains; and run a notebook copied away from the checkout (no ../shared/data) headlessly.
Screenshots land in tests/_output/ (gitignored) so a failure can be looked at.
Playwright never downloads a browser here: it drives /usr/bin/chromium (CI installs Debian's `chromium` package)."""
import hashlib, json, os, re, shutil, socket, subprocess, sys, time, uuid
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
OUT = ROOT / 'tests' / '_output'
CHROMIUM = Path(os.environ.get('HJEPA_CHROMIUM', '/usr/bin/chromium'))
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--disable-dev-shm-usage']

# JupyterLab user settings for the test server (a temporary settings dir, so nothing of the person's own applies):
# never autosave (the notebooks in nbs/ are the source and must stay as committed), start the notebook's kernel without
# asking, render every cell (no windowing, so off-screen cells can be inspected), and no news / update checks.
LAB_SETTINGS = {
    '@jupyterlab/docmanager-extension/plugin.jupyterlab-settings': {'autosave': False},
    '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none', 'autoStartDefaultKernel': True},
    '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {'fetchNews': 'false', 'checkForUpdates': False},
}


PANEL = '.jp-NotebookPanel:not(.lm-mod-hidden)'   # the notebook in the current tab


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _die_with_parent():
    "In the child (Linux): get SIGTERM when pytest dies, so a killed test run leaves no server or kernel behind."
    try:
        import ctypes, signal
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception: pass

def _sha1(p: Path) -> str: return hashlib.sha1(p.read_bytes()).hexdigest()

def _strays(folder: Path) -> set:
    "Files a Jupyter session can leave beside the notebooks: checkpoints, LSP shadow copies, temporary saves."
    return {str(p.relative_to(folder)) for pat in ('.ipynb_checkpoints', '.virtual_documents', '.~*', '*.ipynb.tmp*')
            for p in folder.rglob(pat)}


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A JupyterLab server on 127.0.0.1 (free port, token, temporary runtime/settings dirs) serving the repo's nbs/."
    base = tmp_path_factory.mktemp('lab')
    settings = base / 'settings'
    for name, value in LAB_SETTINGS.items():
        f = settings / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    port, token = _free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ('MPLBACKEND', 'HJEPA_DATA')}  # as in a person's session
    env.update(JUPYTER_RUNTIME_DIR=str(base / 'runtime'), JUPYTER_DATA_DIR=str(base / 'data'),
               JUPYTER_CONFIG_DIR=str(base / 'config'), JUPYTER_PLATFORM_DIRS='1', PYTHONUNBUFFERED='1')
    strays = _strays(NBS)
    log = open(base / 'server.log', 'w')
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={NBS}',
           f'--LabApp.user_settings_dir={settings}', f'--LabApp.workspaces_dir={base / "workspaces"}',
           f'--FileCheckpoints.checkpoint_dir={base / "checkpoints"}',   # not beside the notebooks
           '--ServerApp.open_browser=False'] + (['--allow-root'] if hasattr(os, 'geteuid') and os.geteuid() == 0 else [])
    proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent if sys.platform.startswith('linux') else None)
    url = f'http://127.0.0.1:{port}'
    try:
        import urllib.request
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise AssertionError(f'JupyterLab exited with {proc.returncode}:\n' + (base / 'server.log').read_text()[-3000:])
            try:
                with urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() - t0 > 90:
                raise AssertionError('JupyterLab did not answer within 90 s:\n' + (base / 'server.log').read_text()[-3000:])
            time.sleep(0.3)
        yield dict(url=url, token=token, log=base / 'server.log')
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()
        shutil.copy(base / 'server.log', _out() / 'jupyterlab_server.log')
    new = sorted(_strays(NBS) - strays)
    assert not new, f'the JupyterLab session left files in nbs/: {new}'


def _out() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@pytest.fixture(scope='module')
def browser():
    "Debian's chromium driven by Playwright; a clear failure (never a skip) when it is missing."
    assert CHROMIUM.exists(), (f'{CHROMIUM} not found: the JupyterLab tests need Debian\'s chromium '
                               f'(apt-get install chromium; .ci/run does this). Playwright must not download a browser.')
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _api(lab, method: str, path: str):
    import urllib.request
    req = urllib.request.Request(f"{lab['url']}{path}", method=method, headers={'Authorization': f"token {lab['token']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None

@pytest.fixture
def page(browser, lab, request):
    ctx = browser.new_context(viewport={'width': 1400, 'height': 1000})
    pg = ctx.new_page()
    msgs = []
    pg.on('console', lambda m: msgs.append(f'{m.type}: {m.text}'))
    pg.on('pageerror', lambda e: msgs.append(f'pageerror: {e}'))
    yield pg
    name = request.node.name
    try: pg.screenshot(path=str(_out() / f'{name}_final.png'), full_page=False)
    except Exception: pass
    (_out() / f'{name}_console.log').write_text('\n'.join(msgs))
    ctx.close()
    for sess in _api(lab, 'GET', '/api/sessions'):        # close the notebook's kernel, as closing its tab would
        _api(lab, 'DELETE', f"/api/sessions/{sess['id']}")


def open_notebook(page, lab, name: str) -> str:
    "Open `name` (in nbs/) in JupyterLab and wait until its kernel is idle; returns the file's hash (see `assert_unsaved`)."
    sha = _sha1(NBS / name)
    ws = 'test-' + uuid.uuid4().hex[:8]                # a fresh workspace: no tabs restored from an earlier test
    page.goto(f"{lab['url']}/lab/workspaces/{ws}/tree/{name}?token={lab['token']}", timeout=90_000)
    page.wait_for_selector(f'{PANEL} .jp-Notebook .jp-Cell', timeout=90_000)
    t0 = time.time()
    while kernel_status(page) != 'idle':
        dlg = page.locator('.jp-Dialog .jp-mod-accept')   # 'Select Kernel' (older settings): accept the preferred kernel
        if dlg.count(): dlg.first.click()
        assert time.time() - t0 < 120, f'the kernel of {name} did not start within 120 s (status {kernel_status(page)})'
        time.sleep(0.3)
    return sha

def assert_unsaved(name: str, sha: str):
    "The notebook in nbs/ is as it was before the browser ran it (JupyterLab neither saved nor autosaved it)."
    assert _sha1(NBS / name) == sha, f'nbs/{name} changed on disk while the browser ran it (autosave?)'

def kernel_status(page) -> str:
    "The kernel's state as the status bar shows it ('Python 3 (ipykernel) | Idle'): 'idle', 'busy', ..., or 'no kernel'."
    return page.evaluate("""() => {
        const t = [...document.querySelectorAll('.jp-StatusBar-TextItem')].map(e => e.textContent.trim())
                  .find(s => / \\| [A-Za-z ]+$/.test(s));
        if (!t) return 'unknown';
        if (t.startsWith('No Kernel')) return 'no kernel';
        return t.split('|').pop().trim().toLowerCase(); }""")

def cell_prompts(page) -> list[str]:
    "The input prompt of every code cell: '[3]:' once run, '[*]:' while queued or running, '[ ]:' never run."
    return page.eval_on_selector_all(f'{PANEL} .jp-CodeCell .jp-InputPrompt', 'els => els.map(e => e.textContent.trim())')

def menu(page, top: str, item: str):
    "Click `top` in the menu bar, then the item labelled exactly `item`, as a person would."
    page.locator('.lm-MenuBar-itemLabel', has_text=re.compile(f'^{re.escape(top)}$')).click()
    page.locator('.lm-Menu-item').filter(
        has=page.locator('.lm-Menu-itemLabel', has_text=re.compile(f'^{re.escape(item)}$'))).first.click()

def run_all(page): menu(page, 'Run', 'Run All Cells')

def wait_all_run(page, timeout: float, upto: int | None = None) -> list[str]:
    "Until the first `upto` (default all) code cells have an execution count and the kernel is idle, or an error shows."
    t0, prompts = time.time(), []
    while time.time() - t0 < timeout:
        prompts = cell_prompts(page)[:upto]
        if prompts and all(p[1:-2].strip().isdigit() for p in prompts) and kernel_status(page) == 'idle': return prompts
        if error_outputs(page): return prompts
        time.sleep(0.5)
    raise AssertionError(f'cells still not run after {timeout:.0f} s: prompts {prompts}, kernel {kernel_status(page)}')

def error_outputs(page) -> list[str]:
    "Texts of tracebacks shown in the notebook (error outputs render as stderr with a traceback)."
    return page.eval_on_selector_all(f'{PANEL} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
                                     "els => els.map(e => e.textContent).filter(t => /Traceback|Error:|Exception/.test(t))")

def assert_ran_cleanly(page, prompts):
    errs = error_outputs(page)
    assert not errs, 'error output in the notebook:\n' + '\n----\n'.join(e[-1500:] for e in errs)
    assert all(p[1:-2].strip().isdigit() for p in prompts), f'not every code cell ran: {prompts}'
    counts = [int(p[1:-2]) for p in prompts]
    assert counts == list(range(counts[0], counts[0] + len(counts))), f'cells ran out of order: {counts}'


def _js_last(css: str) -> str:
    "JS expression: the last element matching `css` in the current notebook tab."
    return f"[...document.querySelectorAll('{PANEL} {css}')].pop()"

def wait_image(page, css: str, timeout: float = 30):
    "Until the last `img` matching `css` in the current tab has loaded a picture."
    page.wait_for_function(f"() => {{ const i = {_js_last('img' + css)}; return !!(i && i.complete && i.naturalWidth > 0); }}",
                           timeout=timeout * 1000)

def inner_text(page, css: str) -> str:
    return page.evaluate(f"() => {{ const e = {_js_last(css)}; return e ? e.innerText : ''; }}")


def test_show_notebook_run_all_and_slider(page, lab):
    "08a_show (where the mask explorer lives): Run All without errors, then move the explorer's 'targets' slider with the keyboard: picture and stats change."
    t0 = time.time()
    sha = open_notebook(page, lab, '08a_show.ipynb')
    run_all(page)
    prompts = wait_all_run(page, 180)
    assert_ran_cleanly(page, prompts)
    ran = time.time() - t0

    fig = page.locator(f'{PANEL} .hjepa-mask-figure').last
    fig.wait_for(state='visible', timeout=30_000)
    wait_image(page, '.hjepa-mask-figure')
    fig.scroll_into_view_if_needed()
    text0 = inner_text(page, '.hjepa-mask-stats')
    assert 'targets of' in text0, f'no statistics line under the explorer: {text0!r}'
    png0 = fig.screenshot(path=str(_out() / 'masks_explorer_before.png'))

    handle = page.locator(f'{PANEL} .hjepa-slider-num_targets .noUi-handle').last
    readout = page.locator(f'{PANEL} .hjepa-slider-num_targets .widget-readout').last
    n0 = int(readout.inner_text())
    handle.click()                                  # focus the handle as a person would (a click on it does not move it)
    for _ in range(2): handle.press('ArrowRight')   # 4 -> 6 targets
    n1 = int(readout.inner_text())
    assert n1 == n0 + 2, f'two presses of ArrowRight on the targets slider: {n0} -> {n1}'
    # each key press is a change, redrawn by the kernel in turn; wait for the redraw of the last one
    page.wait_for_function(f"([n]) => {{ const e = {_js_last('.hjepa-mask-stats')}; return !!(e && e.innerText.includes(n)); }}",
                           arg=[f'{n1} targets of'], timeout=60_000)
    text1 = inner_text(page, '.hjepa-mask-stats')
    assert text1 != text0 and 'cannot sample' not in text1, text1
    wait_image(page, '.hjepa-mask-figure')
    time.sleep(0.5)
    png1 = fig.screenshot(path=str(_out() / 'masks_explorer_after.png'))
    assert png0 != png1, 'the mask figure looks the same after moving the slider'
    assert not error_outputs(page)
    assert_unsaved('08a_show.ipynb', sha)
    print(f'08a_show: open + Run All {ran:.1f} s, slider {n0} -> {n1}, total {time.time() - t0:.1f} s')


def _redraws(status: str) -> int:
    import re
    m = re.search(r'\((\d+) redraws?\)', status)
    return int(m.group(1)) if m else -1

def _done(status: str) -> bool: return 'done' in [p.strip() for p in status.split('·')]

def select_first_slow_cell(page) -> int | None:
    "Select (click the prompt of) the first code cell whose first line is `#| slow`; its index among code cells, or None."
    firsts = page.eval_on_selector_all(f'{PANEL} .jp-CodeCell .jp-InputArea-editor',
                                       "els => els.map(e => (e.innerText || '').trim().split('\\n')[0].trim())")
    idx = next((i for i, l in enumerate(firsts) if re.match(r'#\|\s*slow\b', l)), None)
    if idx is not None: page.locator(f'{PANEL} .jp-CodeCell .jp-InputPrompt').nth(idx).click()
    return idx

def test_live_dashboard_notebook(page, lab):
    "11_live: run it; the dashboard's loss panel appears and changes while the model trains; the run ends without error."
    name = '11_live.ipynb'
    assert (NBS / name).exists(), f'nbs/{name} (the notebook that trains with the live dashboard) is missing'
    t0 = time.time()
    sha = open_notebook(page, lab, name)
    # `#| slow` cells (timings, benchmarks) are left out as nbdev_test leaves them out: Run > Run All Above Selected Cell
    slow = select_first_slow_cell(page)
    menu(page, 'Run', 'Run All Cells' if slow is None else 'Run All Above Selected Cell')
    fig = page.locator(f'{PANEL} .hjepa-live-figure').first
    fig.wait_for(state='visible', timeout=240_000)             # the training cell has started
    t_dash = time.time() - t0
    live = f"[...document.querySelectorAll('{PANEL} .hjepa-live-status')][0]"
    img_ready = f"() => {{ const i = document.querySelector('{PANEL} img.hjepa-live-figure'); return !!(i && i.complete && i.naturalWidth > 0); }}"
    # first picture: a loss has been logged and drawn, training still going
    page.wait_for_function(f"() => {{ const e = {live}; return !!(e && /loss [0-9]/.test(e.innerText) && /redraw/.test(e.innerText)); }}",
                           timeout=180_000)
    page.wait_for_function(img_ready, timeout=30_000)
    fig.scroll_into_view_if_needed()
    s0 = page.evaluate(f"() => {live}.innerText")
    png0 = fig.screenshot(path=str(_out() / 'live_dashboard_1.png'))
    assert not _done(s0), f'training already over at the first look; status: {s0}'
    # second picture: after at least one more redraw
    page.wait_for_function(f"([n]) => {{ const e = {live}; if (!e) return false;"
                           " const m = e.innerText.match(/\\((\\d+) redraws?\\)/); return !!(m && +m[1] > n); }",
                           arg=[_redraws(s0)], timeout=180_000)
    page.wait_for_function(img_ready, timeout=30_000)
    time.sleep(0.3)
    s1 = page.evaluate(f"() => {live}.innerText")
    png1 = fig.screenshot(path=str(_out() / 'live_dashboard_2.png'))
    assert png0 != png1, f'the dashboard did not change during training ({s0!r} -> {s1!r})'
    # the run ends, and so does every cell run with it, without an error
    prompts = wait_all_run(page, 400, upto=slow)
    page.screenshot(path=str(_out() / 'live_notebook_end.png'))
    assert_ran_cleanly(page, prompts)
    s2 = page.evaluate(f"() => {live}.innerText")
    assert _done(s2), f'the dashboard does not say the run is done: {s2!r}'
    fig.screenshot(path=str(_out() / 'live_dashboard_final.png'))
    assert not _done(s1), f'the second picture was taken after training ended ({s1!r}): no update seen while it ran'
    assert_unsaved(name, sha)
    print(f'11_live: {time.time() - t0:.1f} s (dashboard shown after {t_dash:.1f} s; '
          f'{"all cells" if slow is None else f"{slow} code cells, up to the first #| slow one"}); '
          f'during training {s0!r} -> {s1!r}; end {s2!r}')


def test_masks_notebook_without_shared_data(tmp_path):
    "A checkout with no ../shared/data beside it: 02_masks still runs top to bottom, on the synthetic sample, and says so once."
    proj = tmp_path / 'clone'                      # nbs/ and configs/ as in a clone, nothing else above: no shared/data
    (proj / 'nbs').mkdir(parents=True)
    shutil.copy(NBS / '02_masks.ipynb', proj / 'nbs')
    shutil.copytree(ROOT / 'configs', proj / 'configs')
    assert not any((p / 'shared' / 'data').exists() for p in (proj / 'nbs', *(proj / 'nbs').parents)), 'tmp is under a shared/data'
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}
    env.update(HJEPA_DATA=str(tmp_path / 'no-such-data'), HJEPA_CACHE=str(tmp_path / 'empty-cache'), PYTHONUNBUFFERED='1')
    t0 = time.time()
    r = subprocess.run([sys.executable, '-m', 'nbconvert', '--to', 'notebook', '--execute', '--ExecutePreprocessor.timeout=300',
                        '--ExecutePreprocessor.kernel_name=python3', '--output', 'executed.ipynb', '02_masks.ipynb'],
                       cwd=proj / 'nbs', env=env, capture_output=True, text=True, timeout=400)
    (_out() / 'masks_without_data_nbconvert.log').write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f'02_masks failed without ../shared/data:\n{r.stderr[-3000:]}'
    nb = json.loads((proj / 'nbs' / 'executed.ipynb').read_text())
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert all(c.get('execution_count') for c in code), 'not every code cell ran'
    outs = [o for c in code for o in c.get('outputs', [])]
    assert not [o for o in outs if o['output_type'] == 'error'], 'an error output'
    text = ''.join(''.join(o.get('text', '')) for o in outs if o['output_type'] == 'stream')
    lines = [l for l in text.splitlines() if l.startswith('demo_images:')]
    assert lines and all('synthetic' in l for l in lines), f'no fallback message about the synthetic sample; stream output:\n{text[-2000:]}'
    assert len(lines) == 1, f'the fallback is to be said once, not {len(lines)} times: {lines}'
    assert 'CIFAR-10 image folder' not in text
    print(f'02_masks without data: {time.time() - t0:.1f} s; said: {lines[0]!r}')
