"""The selective scan README's "Environment variables (tuning switches)" section against the code (CPU, no Triton):
every variable the Triton backend reads has a row, no row or mention names a variable the code no longer reads,
and each row's default is the one ``triton_scan._read_config`` gives. ``_ENV_KEYS`` and the defaults are read
from triton_scan.py's source with ``ast``, so nothing is imported."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCAN_DIR = ROOT / "src" / "vision_mamba" / "ops" / "selective_scan"
README = SCAN_DIR / "README.md"
TRITON_SCAN = SCAN_DIR / "triton_scan.py"
BACKEND = ROOT / "src" / "vision_mamba" / "ops" / "backend.py"
HEADING = "## Environment variables (tuning switches)"
# read outside triton_scan: backend.py, fast_launch.py, triton_kernels.py
EXTRA = ("VISION_MAMBA_SCAN", "VISION_MAMBA_TRITON_FAST_LAUNCH", "VISION_MAMBA_TRITON_SPECIALIZE_E")


def _section() -> str:
    """The section's text: from its heading to the next level-2 heading (or the end)."""
    lines = README.read_text().splitlines()
    assert HEADING in lines, f"{README.name} has no section {HEADING!r}"
    start = lines.index(HEADING) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def _rows() -> list:
    """(name, default cell, meaning) of each table row in the section whose first cell is a backticked name."""
    rows = []
    for line in _section().splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(VISION_MAMBA_[A-Z0-9_]+)`", cells[0])
        if m:
            assert len(cells) == 3, f"a row of three cells (name, default, meaning): {line}"
            rows.append((m.group(1), cells[1], cells[2]))
    return rows


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _env_keys() -> tuple:
    """triton_scan._ENV_KEYS, evaluated from its assignment in the source (string constants, +, tuple())."""
    for node in _tree(TRITON_SCAN).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_ENV_KEYS" for t in node.targets):
            code = compile(ast.Expression(node.value), str(TRITON_SCAN), "eval")
            keys = eval(code, {"__builtins__": {}, "tuple": tuple})
            assert keys and all(isinstance(k, str) for k in keys)
            return keys
    raise AssertionError("no _ENV_KEYS assignment in triton_scan.py")


def _is_environ_get(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Attribute)
            and func.value.attr == "environ" and isinstance(func.value.value, ast.Name) and func.value.value.id == "os")


def _code_defaults() -> dict:
    """name -> default literal of every ``_env_int(NAME, DEFAULT)`` / ``os.environ.get(NAME, DEFAULT)`` call in
    triton_scan._read_config."""
    fn = next((n for n in _tree(TRITON_SCAN).body if isinstance(n, ast.FunctionDef) and n.name == "_read_config"),
              None)
    assert fn is not None, "no _read_config in triton_scan.py"
    defaults = {}
    for node in ast.walk(fn):
        if not isinstance(node, ast.Call) or len(node.args) != 2:
            continue
        if not ((isinstance(node.func, ast.Name) and node.func.id == "_env_int") or _is_environ_get(node.func)):
            continue
        name = node.args[0]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            defaults[name.value] = ast.literal_eval(node.args[1])
    return defaults


def _cell_value(cell: str):
    """A default cell as a value: `6144` -> 6144, `"fold"` -> 'fold', unset -> 'unset'."""
    text = cell.strip().strip("`").strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def test_every_variable_has_a_row():
    section = _section()
    names = [name for name, _, _ in _rows()]
    required = list(_env_keys()) + list(EXTRA)
    not_mentioned = [k for k in required if f"`{k}`" not in section]
    assert not not_mentioned, f"variables read by the code but not in the README section: {not_mentioned}"
    no_row = [k for k in required if k not in names]
    assert not no_row, f"variables read by the code without a row in the README section's tables: {no_row}"


def test_no_stale_variables():
    known = set(_env_keys()) | set(EXTRA)
    mentioned = set(re.findall(r"VISION_MAMBA_TRITON_[A-Z0-9_]+", _section()))
    stale = sorted(mentioned - known)
    assert not stale, f"the README section names variables the code does not read: {stale}"
    stale_rows = sorted({name for name, _, _ in _rows()} - known)
    assert not stale_rows, f"rows for variables the code does not read: {stale_rows}"


def test_one_row_each():
    names = [name for name, _, _ in _rows()]
    doubled = sorted({n for n in names if names.count(n) > 1})
    assert not doubled, f"variables with more than one row: {doubled}"
    empty = [name for name, default, meaning in _rows() if not default or not meaning]
    assert not empty, f"rows without a default or a meaning: {empty}"


def test_defaults_match_read_config():
    defaults = _code_defaults()
    keys = set(_env_keys())
    assert defaults, "no _env_int / os.environ.get calls found in _read_config"
    assert set(defaults) <= keys, f"read by _read_config but not in _ENV_KEYS: {sorted(set(defaults) - keys)}"
    wrong = [(name, cell, defaults[name]) for name, cell, _ in _rows()
             if name in defaults and _cell_value(cell) != defaults[name]]
    assert not wrong, "rows whose default is not _read_config's (name, README, code): " + repr(wrong)


def test_scan_row_lists_every_backend():
    backends = None
    for node in _tree(BACKEND).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "BACKENDS" for t in node.targets):
            backends = ast.literal_eval(node.value)
    assert backends, "no BACKENDS in backend.py"
    section = _section()
    intro = section.split("\n### ", 1)[0]
    missing = [b for b in backends if f"`{b}`" not in intro]
    assert not missing, f"VISION_MAMBA_SCAN's values missing from the section's opening: {missing}"
