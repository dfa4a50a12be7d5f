"""The README is the front door: short, its links lead somewhere, and every
command in it is one the package and its tools accept as written."""

import pathlib
import re
import shlex

import pytest
from conftest import load_tool

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"
SHELL_BLOCK = re.compile(r"```(?:bash|shell|sh)\n(.*?)```", re.S)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def commands(prefix):
    found = []
    for block in SHELL_BLOCK.findall(README.read_text()):
        for line in block.splitlines():
            if line.startswith(prefix):
                found.append(line)
    return found


def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = README.read_text()
    assert len(text.splitlines()) <= 350
    links = re.findall(r"\]\(((?!https?:)[^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert links, "the README links to its notes"
    for target, anchor in links:
        path = ROOT / target
        assert path.exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, f"{target}#{anchor}"


def test_every_keras_nextvit_command_parses():
    from keras_nextvit.cli import build_parser

    lines = commands("keras-nextvit ")
    assert len(lines) >= 10
    for line in lines:
        argv = shlex.split(line)[1:]
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:  # argparse has printed why
            pytest.fail(f"the README's command does not parse: {line}")
        assert callable(args.run)


def _parser_of(name):
    if name == "validate":  # the same options as keras-nextvit validate
        from keras_nextvit.cli import build_parser

        return lambda argv: build_parser().parse_args(["validate", *argv])
    tool = load_tool(name)
    for attribute in ("parse_args", "parse"):
        if hasattr(tool, attribute):
            return getattr(tool, attribute)
    raise AssertionError(f"tools/{name}.py has no parse_args or parse to check the README's command with")


def test_every_tool_command_parses():
    lines = commands("python tools/")
    assert {shlex.split(line)[1] for line in lines} >= {"tools/train.py", "tools/validate.py",
                                                         "tools/eval_detection.py"}
    for line in lines:
        words = shlex.split(line)
        name = pathlib.Path(words[1]).stem
        assert (ROOT / words[1]).exists(), words[1]
        try:
            _parser_of(name)(words[2:])
        except SystemExit:
            pytest.fail(f"the README's command does not parse: {line}")


def test_python_examples_compile_and_name_the_packages_api():
    import keras_nextvit

    blocks = PYTHON_BLOCK.findall(README.read_text())
    assert len(blocks) >= 5
    for block in blocks:
        compile(block, "README.md", "exec")
        for name in re.findall(r"keras_nextvit\.(\w+)", block):
            assert hasattr(keras_nextvit, name), f"keras_nextvit.{name} (README) does not exist"
