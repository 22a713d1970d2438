"""The one direction of flow: the core never imports the orchestration engines."""

import ast
import pathlib
import subprocess
import sys

PKG = pathlib.Path(__file__).resolve().parents[1] / "sal_ray"
CORE = ["config", "budget", "layers", "models", "rules", "trainer", "checkpoint", "data", "paper", "fs",
        "pack",
        "cli", "__init__"]
ALLOWED_THIRD_PARTY = {"torch", "numpy", "sklearn", "torchvision", "scipy", "h5py", "PIL"}
ENGINES = {"ray", "optuna", "mlflow"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def core_files():
    for name in CORE:
        p = PKG / f"{name}.py"
        yield from ([p] if p.exists() else sorted((PKG / name).rglob("*.py")))


def test_core_imports_only_torch_numpy_sklearn_torchvision():
    stdlib = set(sys.stdlib_module_names)
    for path in core_files():
        third = imported_roots(path) - stdlib - {"sal_ray"}
        assert third <= ALLOWED_THIRD_PARTY, f"{path.name} imports {third - ALLOWED_THIRD_PARTY}"


def test_the_trainer_core_never_imports_the_layouts():
    """Parallelism is applied from outside: the layouts import the core's loop,
    never the other way round."""
    for name in ("config", "layers", "models", "rules", "trainer", "checkpoint", "data"):
        for path in ([PKG / f"{name}.py"] if (PKG / f"{name}.py").exists()
                     else sorted((PKG / name).rglob("*.py"))):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    assert "distributed" not in (node.module or ""), path.name
                    assert all("distributed" not in a.name for a in node.names), path.name


def test_import_sal_ray_loads_neither_torch_nor_an_engine():
    """The package loads its trainer (torch) on first use: the CLI's messages and
    dashboards/ import sal_ray.tracking.store and sal_ray.paper without it."""
    code = ("import sys, sal_ray, sal_ray.tracking.store, sal_ray.paper\n"
            "bad = [m for m in ('torch', 'ray', 'optuna', 'mlflow') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "assert callable(sal_ray.train) and sal_ray.fit.__module__ == 'sal_ray.trainer'\n"
            "assert 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_core_trains_with_the_engines_unimportable():
    code = ("import sys\n"
            "for m in ('ray', 'optuna', 'mlflow'): sys.modules[m] = None\n"
            "import sal_ray\n"
            "r = sal_ray.train(epochs=1, width=16, verbose=False)\n"
            "assert r.status == 'completed'\n"
            "assert not any(m.split('.')[0] in ('ray', 'optuna', 'mlflow') and sys.modules[m]\n"
            "               for m in list(sys.modules))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
