"""The package layering holds: light client imports, no import cycles, nothing below `matrl` imports it."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["graph_executor", "policy", "reward_service", "learner", "rollout_workers", "matrl"]  # low -> high


def test_reward_client_imports_no_ray_torch_pool_server_or_worker():
    code = ("import sys, reward_service.client\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch') or m in "
            "('reward_service.pool', 'reward_service.server', 'reward_service.worker'))\n"
            "print(heavy)\nsys.exit(1 if heavy else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"reward_service.client loads {result.stdout.strip()} {result.stderr[-400:]}"


def _imports(path: Path) -> set[str]:
    """Top-level project packages imported anywhere in a module (also inside functions)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


def test_dependencies_point_down():
    upward = []
    for rank, package in enumerate(LAYERS):
        for path in sorted((ROOT / package).rglob("*.py")):
            for imported in _imports(path):
                if LAYERS.index(imported) > rank:
                    upward.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not upward, "\n".join(upward)


def test_no_import_cycles_in_graph_executor():
    """Imports between graph_executor modules, at any level (lazy ones inside functions too), form no
    cycle: node modules import `schema`, and only `registry` imports the node modules."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "graph_executor").rglob("*.py")}
    modules = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graph_executor"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(paths)  # `from pkg import submodule`
                deps.update(subs or {node.module})
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("graph_executor"))
        modules[name] = deps - {name}
    state: dict[str, int] = {}

    def visit(name, stack):
        if state.get(name) == 1:
            raise AssertionError("import cycle: " + " -> ".join(stack + [name]))
        if state.get(name) == 2 or name not in modules:
            return
        state[name] = 1
        for dep in modules[name]:
            visit(dep, stack + [name])
        state[name] = 2

    for name in modules:
        visit(name, [])
