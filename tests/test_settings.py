"""Nothing global (issue 24, point 4): every STUNET_* variable is read by stunet.settings alone, documented in one
table (docs/settings.md repeats settings.py's), parsed by one yes/no parser, and no library module writes os.environ."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from stunet import settings

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "stunet").rglob("*.py")) + sorted((ROOT / "nnunet_plugins").glob("*.py"))


def _rows(text: str) -> list[str]:
    return [re.sub(r"[`\s]", "", line) for line in text.splitlines() if line.startswith(("| `STUNET_", "| ``STUNET_"))]


def test_the_docs_table_is_the_settings_table():
    assert _rows((ROOT / "docs" / "settings.md").read_text()) == _rows(settings.__doc__)
    assert len(_rows(settings.__doc__)) == len(settings.ALL)


def test_only_settings_reads_stunet_variables():
    for path in SOURCES:
        if path.name == "settings.py":
            continue
        text = path.read_text()
        names = set(re.findall(r"[\"']STUNET_[A-Z_]+[\"']", text))
        assert not names, f"{path.relative_to(ROOT)} names {names}: read it through stunet.settings"


def _writes_environ(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value).endswith("os.environ"):
                lines.append(node.lineno)
        if isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called in ("os.environ.update", "os.environ.setdefault", "os.environ.pop", "os.putenv",
                          "os.environ.__setitem__", "os.unsetenv") or called.endswith("environ.__setitem__"):
                lines.append(node.lineno)
        if isinstance(node, ast.Delete) and any(ast.unparse(t).startswith("os.environ[") for t in node.targets):
            lines.append(node.lineno)
    return lines


def test_no_library_module_writes_the_environment():
    found = {str(p.relative_to(ROOT)): lines for p in SOURCES if (lines := _writes_environ(ast.parse(p.read_text())))}
    assert not found, f"os.environ written at {found}: pass the value on instead"


@pytest.mark.parametrize("value, expected", [("1", True), ("Yes", True), (" on ", True), ("0", False), ("off", False),
                                             ("", False), (None, False)])
def test_one_yes_no_parser(value, expected):
    assert settings.yes_no(value, "STUNET_X") is expected


def test_a_value_that_is_neither_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(settings.TRUST_CHECKPOINT, "maybe")
    with pytest.raises(ValueError, match="STUNET_TRUST_CHECKPOINT='maybe' is neither yes nor no"):
        settings.trust_checkpoint()
