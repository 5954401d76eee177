"""The notebooks as a person uses them: a real JupyterLab server driven by a real browser (Playwright + Debian chromium).

Run All on the mask explorer notebook and move a slider; run the live-dashboard training notebook and watch the loss
panel change while it trains; and run a notebook copied away from the checkout (no ../shared/data) headlessly.
Screenshots land in tests/_output/ (gitignored) so a failure can be looked at.
Playwright never downloads a browser here: it drives /usr/bin/chromium (CI installs Debian's `chromium` package)."""
import hashlib, json, os, shutil, socket, subprocess, sys, time, uuid
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
OUT = ROOT / 'tests' / '_output'
CHROMIUM = Path(os.environ.get('HJEPA_CHROMIUM', '/usr/bin/chromium'))
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--disable-dev-shm-usage']

# JupyterLab user settings for the test server (a temporary settings dir, so nothing of the person's own applies):
# never autosave (the notebooks in nbs/ are the source and must stay as committed), render every cell (no windowing,
# so off-screen cells can be inspected), and no news / update checks.
LAB_SETTINGS = {
    '@jupyterlab/docmanager-extension/plugin.jupyterlab-settings': {'autosave': False},
    '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none'},
    '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {'fetchNews': 'false', 'checkForUpdates': False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _snapshot(folder: Path) -> dict:
    "Path -> sha1 of every file under `folder` except runs/ (training output of the live notebook, gitignored)."
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file() and 'runs' not in p.relative_to(folder).parts}


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
    before = _snapshot(NBS)
    log = open(base / 'server.log', 'w')
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={NBS}',
           f'--LabApp.user_settings_dir={settings}', f'--LabApp.workspaces_dir={base / "workspaces"}',
           '--ServerApp.open_browser=False'] + (['--allow-root'] if hasattr(os, 'geteuid') and os.geteuid() == 0 else [])
    proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
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
    # the notebooks were run, not saved: nothing in nbs/ changed or appeared (checkpoints, autosaves, outputs)
    after = _snapshot(NBS)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f'the JupyterLab session changed files in nbs/: {changed}'


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


@pytest.fixture
def page(browser, request):
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


def open_notebook(page, lab, name: str):
    "Open `name` (in nbs/) in JupyterLab and wait until its kernel is idle."
    page.goto(f"{lab['url']}/lab/tree/{name}?token={lab['token']}", timeout=90_000)
    page.wait_for_selector('.jp-NotebookPanel .jp-Notebook .jp-Cell', timeout=90_000)
    wait_kernel_idle(page, 120)

def kernel_status(page) -> str | None:
    "The toolbar's execution indicator: 'idle', 'busy', 'starting', ... (None before the kernel is connected)."
    return page.evaluate("""() => {
        const el = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
        return el ? el.getAttribute('data-status') : null; }""")

def wait_kernel_idle(page, timeout: float):
    page.wait_for_selector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=timeout * 1000)

def cell_prompts(page) -> list[str]:
    "The input prompt of every code cell: '[3]:' once run, '[*]:' while queued or running, '[ ]:' never run."
    return page.eval_on_selector_all('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt', 'els => els.map(e => e.textContent.trim())')

def run_all(page):
    "Run > Run All Cells from the menu bar, as a person would."
    page.click('.lm-MenuBar-item:has-text("Run")')
    page.click('.lm-Menu-item:has-text("Run All Cells")')

def wait_all_run(page, timeout: float):
    "Until every code cell has an execution count and the kernel is idle (or an error output appears: Run All stops there)."
    t0, prompts = time.time(), []
    while time.time() - t0 < timeout:
        prompts = cell_prompts(page)
        if prompts and all(p[1:-2].strip().isdigit() for p in prompts) and kernel_status(page) == 'idle': return prompts
        if error_outputs(page): return prompts
        time.sleep(0.5)
    raise AssertionError(f'cells still not run after {timeout:.0f} s: prompts {prompts}, kernel {kernel_status(page)}')

def error_outputs(page) -> list[str]:
    "Texts of tracebacks shown in the notebook (error outputs render as stderr with a traceback)."
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
        .map(e => e.textContent).filter(t => /Traceback|Error:|Exception/.test(t))""")

def assert_ran_cleanly(page, prompts):
    errs = error_outputs(page)
    assert not errs, 'error output in the notebook:\n' + '\n----\n'.join(e[-1500:] for e in errs)
    assert all(p[1:-2].strip().isdigit() for p in prompts), f'not every code cell ran: {prompts}'
    counts = [int(p[1:-2]) for p in prompts]
    assert counts == list(range(counts[0], counts[0] + len(counts))), f'cells ran out of order: {counts}'


def test_masks_notebook_run_all_and_slider(page, lab):
    "02_masks: Run All without errors, then move the explorer's 'targets' slider with the keyboard: picture and stats change."
    t0 = time.time()
    open_notebook(page, lab, '02_masks.ipynb')
    run_all(page)
    prompts = wait_all_run(page, 150)
    assert_ran_cleanly(page, prompts)
    ran = time.time() - t0

    fig = page.locator('.hjepa-mask-figure').last
    stats = page.locator('.hjepa-mask-stats').last
    fig.wait_for(state='visible', timeout=30_000)
    page.wait_for_function("() => { const i = [...document.querySelectorAll('img.hjepa-mask-figure')].pop();"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    fig.scroll_into_view_if_needed()
    text0 = stats.inner_text()
    assert 'targets of' in text0, text0
    png0 = fig.screenshot(path=str(_out() / 'masks_explorer_before.png'))

    handle = page.locator('.hjepa-slider-num_targets .noUi-handle').last
    readout = page.locator('.hjepa-slider-num_targets .widget-readout').last
    n0 = int(readout.inner_text())
    handle.click()                                  # focus the handle as a person would
    for _ in range(2): handle.press('ArrowRight')   # 4 -> 6 targets
    page.wait_for_function(
        "([t0]) => { const e = [...document.querySelectorAll('.hjepa-mask-stats')].pop(); return e && e.innerText !== t0; }",
        arg=[text0], timeout=30_000)
    n1 = int(readout.inner_text())
    assert n1 > n0, (n0, n1)
    text1 = stats.inner_text()
    assert f'{n1} targets of' in text1, text1
    page.wait_for_function("() => { const i = [...document.querySelectorAll('img.hjepa-mask-figure')].pop();"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    time.sleep(0.5)
    png1 = fig.screenshot(path=str(_out() / 'masks_explorer_after.png'))
    assert png0 != png1, 'the mask figure looks the same after moving the slider'
    assert not error_outputs(page)
    print(f'02_masks: opened and ran all in {ran:.1f} s, slider {n0} -> {n1}')
