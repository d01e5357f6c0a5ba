"""README.md and docs/*.md checked against the code, so that a move or a rename fails the build instead of the reader:

- every source path they name (``stunet/...py``, ``nnunet_plugins/...``, ``benchmarks/...py``, ``tests/...py``) and
  every local link exists;
- every ``stunet-<command>`` they name is a console script (or one of the few files that carry the prefix);
- every option given to a ``stunet-<command>`` (in a shell code block, or in an inline ``stunet-x ... --flag``) is an
  option of that command's parser, and every option quoted alone in the prose is an option of a command named in the
  same file (nnU-Net's own commands are not checked);
- every ``STUNET_*`` variable they name is one of :mod:`stunet.settings`;
- the quality-control rules docs/evaluation.md lists are the texts the ``flag`` field holds;
- the commands' own examples (the epilogs of their --help) pass the same option check.
"""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from stunet import settings
from test_startup import console_scripts

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
#: a ``stunet-`` name that is a folder, not a command
NOT_COMMANDS = {"stunet-deploy"}
SOURCE_PATH = re.compile(r"(?<![\w./$-])((?:stunet|benchmarks|tests)/[\w/.-]*?\.py|nnunet_plugins/[\w/.-]*\w)")
COMMAND = re.compile(r"(?<![\w/.=-])(stunet-[a-z]+)(?![\w./-])")
OPTION = re.compile(r"^(--?[A-Za-z][\w-]*)")
SEPARATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


def _options(parser) -> set[str]:
    return set(parser._option_string_actions)


PARSERS = {command: importlib.import_module(module).build_parser() for command, module in console_scripts().items()}
OPTIONS = {command: _options(parser) for command, parser in PARSERS.items()}


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _fences(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _tokens(line: str) -> list[str]:
    line = re.sub(r"(^|\s)#.*", "", line)  # a shell comment
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in an example: split on blanks
        return line.split()


def command_options(line: str) -> list[tuple[str, str]]:
    """(command, option) for each option that follows a ``stunet-<command>`` on one shell line, up to the next
    separator (a pipe, ``&&``, ``;``, a redirection) or the next command of the line."""
    found, command = [], None
    for token in _tokens(line):
        if token in SEPARATORS:
            command = None
            continue
        named = COMMAND.search(token)
        if named and named[1] in OPTIONS and not token.startswith("-"):
            command = named[1]
            continue
        if command and (option := OPTION.match(token)):
            found.append((command, option[1].split("=")[0]))
    return found


def _shell_lines(text: str) -> list[str]:
    """The logical lines of the shell code blocks (continuations joined) and the inline code spans naming a
    command."""
    lines = []
    for language, body in _fences(text):
        if language in SHELL_FENCES:
            lines += body.replace("\\\n", " ").splitlines()
    lines += [span for span in re.findall(r"`([^`\n]+)`", _prose(text)) if COMMAND.search(span)]
    return lines


def anchors(path: Path) -> set[str]:
    """The link targets of a Markdown file's headings, as GitHub names them (a repeated one gets -1, -2, ...)."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _prose(path.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        repeat = sum(1 for a in found if re.fullmatch(re.escape(slug) + r"(-\d+)?", a))
        found.add(f"{slug}-{repeat}" if repeat else slug)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_source_paths_and_links_exist(doc):
    text = doc.read_text()
    missing = sorted({p for p in SOURCE_PATH.findall(text) if not (ROOT / p).exists()})
    for link in sorted(set(re.findall(r"\]\(([^)\s]+)\)", _prose(text)))):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = doc.parent / target if target else doc
        if not path.exists() or anchor and path.suffix == ".md" and anchor not in anchors(path):
            missing.append(link)
    assert not missing, f"{_doc_id(doc)} names what does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_commands_exist(doc):
    unknown = sorted(set(COMMAND.findall(doc.read_text())) - set(OPTIONS) - NOT_COMMANDS)
    assert not unknown, f"{_doc_id(doc)} names commands that are not installed: {unknown} (setup.py)"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_options_given_to_a_command_are_its_own(doc):
    wrong = sorted({f"{command} {option}" for line in _shell_lines(doc.read_text())
                    for command, option in command_options(line) if option not in OPTIONS[command]})
    assert not wrong, f"{_doc_id(doc)} gives commands options they do not have: {wrong}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_options_quoted_alone_belong_to_a_command_of_the_file(doc):
    text = doc.read_text()
    commands = set(COMMAND.findall(text)) & set(OPTIONS)
    known = set().union(OPTIONS["stunet-train"], *(OPTIONS[c] for c in commands))  # stunet-train's: nnUNetv2_train's
    wrong = []
    for paragraph in re.split(r"\n\s*\n", _prose(text)):
        if re.search(r"nnUNetv2_|torchrun|sbatch|srun|pip |python ", paragraph):
            continue  # options of nnU-Net's commands, other tools and scripts are not checked
        for span in re.findall(r"`([^`\n]+)`", paragraph):
            option = OPTION.match(span.strip())
            if option and not COMMAND.search(span) and option[1].split("=")[0] not in known:
                wrong.append(option[1])
    assert not wrong, (f"{_doc_id(doc)} quotes options that no command it names ({sorted(commands)}) has: "
                       f"{sorted(set(wrong))}")


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_settings_exist(doc):
    unknown = sorted(set(re.findall(r"STUNET_[A-Z0-9_]*[A-Z0-9]", doc.read_text())) - set(settings.ALL))
    assert not unknown, f"{_doc_id(doc)} names settings that stunet/settings.py does not have: {unknown}"


def test_the_quality_flags_documented_are_those_written():
    from stunet.clinical.quality import flag

    written = {rule.split(" (")[0] for rule in flag(0.5, 0.5, 3, 0.5, 0.5, 0.9, 0.5).split("; ")}
    documented = set(re.findall(r"`([a-z ]+) \(\.\.\.\)`", (ROOT / "docs" / "evaluation.md").read_text()))
    assert documented == written


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_the_commands_own_examples_use_their_options(command):
    epilog = PARSERS[command].epilog or ""
    wrong = sorted({f"{c} {o}" for line in epilog.replace("\\\n", " ").splitlines()
                    for c, o in command_options(line) if o not in OPTIONS[c]})
    assert not wrong, f"{command} --help shows options that do not exist: {wrong}"


def test_the_checks_find_what_they_look_for():
    assert command_options("torchrun --nproc_per_node=4 $(which stunet-predict) -i cts/ --qc=1 | tee log") == \
        [("stunet-predict", "-i"), ("stunet-predict", "--qc")]
    assert command_options("stunet-plans -d 4 --model stunet_large  # then --not-this && nnUNetv2_train -tr X") == \
        [("stunet-plans", "-d"), ("stunet-plans", "--model")]
    assert SOURCE_PATH.findall("see stunet/weights/pickle_guard.py and nnunet_plugins/stunet_trainers.py, "
                               "not https://x.org/stunet/a.py") == ["stunet/weights/pickle_guard.py",
                                                                    "nnunet_plugins/stunet_trainers.py"]
