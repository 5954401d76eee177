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

def test_no_function_over_60_lines():
    long = [f"{p.name}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in sorted((ROOT / 'hjepa_nb').glob('*.py')) for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long
