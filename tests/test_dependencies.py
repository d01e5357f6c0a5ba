"""Dependencies as declared (issue 24, point 6): every third-party module that stunet imports (anywhere in stunet/ and
nnunet_plugins/, at module level or inside a function) comes from a distribution that setup.py requires or that a named
extra holds; an extra's modules are imported only inside functions, behind the module's ``require()``, which names the
extra in a one-line ImportError; and setup.py requires nothing that stunet does not import. The tests' own imports come
from the requirements or the ``test`` extra.
"""
from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("stunet", "nnunet_plugins")

# import name -> distribution name (as setup.py spells it, compared after PEP 503 normalisation). Every third-party
# module stunet imports must be here: a new import fails test_every_import_is_mapped until it is added.
DISTRIBUTIONS = {
    "torch": "torch",
    "nnunetv2": "nnunetv2",
    "acvl_utils": "acvl-utils",
    "batchgenerators": "batchgenerators",
    "batchgeneratorsv2": "batchgeneratorsv2",
    "huggingface_hub": "huggingface_hub",
    "httpx2": "httpx2",
    "matplotlib": "matplotlib",
    "SimpleITK": "SimpleITK",
    "nibabel": "nibabel",
    "numpy": "numpy",
    "skimage": "scikit-image",
    "surface_distance": "surface-distance",
    "scipy": "scipy",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "highdicom": "highdicom",
    "pydicom": "pydicom",
    "pytest": "pytest",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip()).group(0))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(install_requires, extras_require) of setup.py as normalised distribution names, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    keywords = {k.arg: k.value for k in call.keywords}
    required = {_requirement_name(s) for s in ast.literal_eval(keywords["install_requires"])}
    extras = {name: {_requirement_name(s) for s in specs}
              for name, specs in ast.literal_eval(keywords["extras_require"]).items()}
    return required, extras


def third_party_imports(folders, local: set[str] = frozenset()) -> dict[str, list[tuple[Path, int, bool]]]:
    """top-level module -> [(file, line, at module level)] of every import of a module that is neither the standard
    library's nor stunet's (nor in ``local``)."""
    found: dict[str, list[tuple[Path, int, bool]]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            top_level = {id(n) for n in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top == "stunet" or top in local:
                        continue
                    found.setdefault(top, []).append((path.relative_to(ROOT), node.lineno, id(node) in top_level))
    return found


IMPORTS = third_party_imports(PACKAGE_FOLDERS)
REQUIRED, EXTRAS = declared()


def _where(uses) -> str:
    return ", ".join(f"{path}:{line}" for path, line, _ in uses[:4]) + (" ..." if len(uses) > 4 else "")


def _extras_of(distribution: str) -> list[str]:
    return sorted(name for name, members in EXTRAS.items() if name != "test" and distribution in members)


def test_the_walk_sees_the_known_imports():
    assert {"torch", "nnunetv2", "numpy", "huggingface_hub", "highdicom"} <= set(IMPORTS)


def test_every_import_is_mapped():
    unmapped = {m: _where(u) for m, u in IMPORTS.items() if m not in DISTRIBUTIONS}
    assert not unmapped, (f"third-party imports without a distribution in tests/test_dependencies.py DISTRIBUTIONS "
                          f"(add it there, and to setup.py): {unmapped}")


def test_every_imported_package_is_required_or_in_an_extra():
    undeclared = {m: _where(u) for m, u in IMPORTS.items()
                  if m in DISTRIBUTIONS and normalise(DISTRIBUTIONS[m]) not in REQUIRED
                  and not _extras_of(normalise(DISTRIBUTIONS[m]))}
    assert not undeclared, f"imported but neither in install_requires nor in a named extra of setup.py: {undeclared}"


def test_every_requirement_is_imported():
    imported = {normalise(DISTRIBUTIONS[m]) for m in IMPORTS if m in DISTRIBUTIONS}
    unused = sorted(REQUIRED - imported)
    assert not unused, f"setup.py requires {unused}, which stunet never imports: drop them (or import them)"


def test_the_mapping_names_the_installed_distributions():
    """Where a mapped module is installed, the distribution that provides it is the one named here."""
    from importlib.metadata import packages_distributions
    provided = {module: {normalise(d) for d in dists} for module, dists in packages_distributions().items()}
    wrong = {m: sorted(provided[m]) for m, d in DISTRIBUTIONS.items()
             if m in provided and normalise(d) not in provided[m]}
    assert not wrong, f"DISTRIBUTIONS names the wrong distribution for {wrong}"


# -- extras: imported lazily, behind require(), which names the extra ---------------------------------------------
EXTRA_MODULES = sorted(m for m in IMPORTS if m in DISTRIBUTIONS and normalise(DISTRIBUTIONS[m]) not in REQUIRED)


def test_some_imports_are_extras():
    assert "highdicom" in EXTRA_MODULES


def test_pydicom_is_required():
    """DICOM input reads every header with pydicom before GDCM reads the pixels (issue 25): a requirement, imported at
    module level by stunet.clinical.dicom; highdicom (DICOM-SEG output) stays in the ``dicom`` extra."""
    assert "pydicom" in REQUIRED and "pydicom" not in EXTRA_MODULES
    assert any(str(path) == "stunet/clinical/dicom.py" and top for path, _, top in IMPORTS["pydicom"])
    assert "highdicom" not in REQUIRED and "highdicom" in EXTRAS["dicom"]


@pytest.mark.parametrize("module", EXTRA_MODULES)
def test_an_extra_is_imported_only_inside_functions(module):
    at_top = [f"{path}:{line}" for path, line, top in IMPORTS[module] if top]
    assert not at_top, f"{module} comes with an extra, so it must not be imported at module level: {at_top}"


def _imports_behind_require(module: str) -> list[str]:
    """``file:line`` of each import of ``module`` inside a function (other than require itself) that does not call
    ``require()`` before it."""
    unguarded = []
    for path in sorted({p for p, _, _ in IMPORTS[module]}):
        tree = ast.parse((ROOT / path).read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            if function.name == "require":
                continue
            calls = [n.lineno for n in ast.walk(function) if isinstance(n, ast.Call)
                     and getattr(n.func, "id", getattr(n.func, "attr", None)) == "require"]
            for node in ast.walk(function):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                if any(n.split(".")[0] == module for n in names) and not any(c < node.lineno for c in calls):
                    unguarded.append(f"{path}:{node.lineno} (in {function.name})")
    return unguarded


@pytest.mark.parametrize("module", EXTRA_MODULES)
def test_an_extra_is_imported_after_require(module):
    unguarded = _imports_behind_require(module)
    assert not unguarded, f"{module} comes with an extra: call require() before importing it: {unguarded}"


def _importing_modules(module: str) -> list[str]:
    names = set()
    for path, _, _ in IMPORTS[module]:
        parts = path.with_suffix("").parts
        names.add(".".join(("stunet", *parts[1:]) if parts[0] == "nnunet_plugins" else parts))
    return sorted(names)


@pytest.mark.parametrize("module", EXTRA_MODULES)
def test_a_missing_extra_is_named_in_one_line(module, monkeypatch):
    """With the extra's package absent, the importing module's require() raises an ImportError that says which pip
    install brings it."""
    extras = _extras_of(normalise(DISTRIBUTIONS[module]))
    for name in _importing_modules(module):
        imported = importlib.import_module(name)  # works without the extra: its imports are inside functions
        assert hasattr(imported, "require"), f"{name} imports {module} (extra {extras}) but has no require()"
        with monkeypatch.context() as patch:
            for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
                patch.delitem(sys.modules, key)
            patch.setitem(sys.modules, module, None)  # import of it raises ImportError
            with pytest.raises(ImportError) as error:
                imported.require()
        message = str(error.value)
        assert "\n" not in message and module in message, message
        assert any(f'pip install "stunet[{extra}]"' in message for extra in extras), message


def test_the_tests_need_only_the_requirements_and_the_test_extra():
    local = {p.stem for folder in ("tests", "benchmarks") for p in (ROOT / folder).glob("*.py")}  # their own modules
    allowed = REQUIRED | EXTRAS.get("test", set())
    missing = {m: _where(u) for m, u in third_party_imports(["tests"], local).items()
               if m not in DISTRIBUTIONS or normalise(DISTRIBUTIONS[m]) not in allowed}
    assert not missing, f"the tests import packages that neither setup.py's requirements nor its test extra hold: " \
                        f"{missing}"
