"The package's shape, as the Learner redesign left it: imports run forward along the notebook order, and functions stay short."
import ast, json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _modules() -> dict:
    "`{module: notebook}` in notebook order, from each notebook's `default_exp`."
    out = {}
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            m = re.search(r'#\|\s*default_exp\s+(\S+)', ''.join(c['source']))
            if m: out[m.group(1)] = nb.name
    return out

def _imports(mod: str):
    "`(imported module, line, at top level)` for each import of a package module in `mod`."
    tree = ast.parse((ROOT / 'hjepa_nb' / f'{mod}.py').read_text())
    top = {id(n) for n in tree.body}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.level or (n.module or '').startswith('hjepa_nb')):
            name = (n.module or '').removeprefix('hjepa_nb').lstrip('.') or n.names[0].name
            yield name.split('.')[0], n.lineno, id(n) in top

def test_imports_run_forward():
    mods = _modules()
    rank = {m: i for i, m in enumerate(mods)}
    assert len(mods) >= 20, mods
    bad = [f"{m}:{line} imports {t} ({'backward' if rank[t] >= rank[m] else 'inside a function'})"
           for m in mods for t, line, top in _imports(m) if t in rank and (rank[t] >= rank[m] or not top)]
    assert not bad, bad

# The one import inside a function the package allows: the console scripts' front (`14_cli`) loads their heavy half,
# `17_commands` (torch, timm), by name only after the arguments and the config have passed its checks, so that a
# mistake is reported in well under a second. Importing it at the top would load torch first, which is the point.
LATE_IMPORTS = {('cli', 'commands'): 'hjepa_nb.commands'}

def _late_imports(mod: str):
    "`(function, module name or None, line)` for each `importlib.import_module` / `__import__` call in `mod`."
    tree = ast.parse((ROOT / 'hjepa_nb' / f'{mod}.py').read_text())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
              for t in n.targets if isinstance(t, ast.Name)}
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for c in ast.walk(fn):
            if not isinstance(c, ast.Call): continue
            f = c.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', '')
            if name not in ('import_module', '__import__'): continue
            a = c.args[0] if c.args else None
            target = a.value if isinstance(a, ast.Constant) else consts.get(a.id) if isinstance(a, ast.Name) else None
            yield fn.name, target, c.lineno

def test_only_the_named_late_import():
    found = {(m, fn): target for m in _modules() for fn, target, _ in _late_imports(m)}
    assert found == LATE_IMPORTS, found

def test_front_and_config_load_no_torch():
    "What a bad command line meets first imports neither torch nor timm (nor numpy)."
    import subprocess, sys
    code = "import sys, hjepa_nb.cli; print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == '[]', (r.stdout, r.stderr[-2000:])

def test_no_function_over_60_lines():
    long = [f"{p.name}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in sorted((ROOT / 'hjepa_nb').glob('*.py')) for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long
