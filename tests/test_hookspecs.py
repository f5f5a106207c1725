"""Every plugin hook is documented and tested (datasette-style).

The hooks are found by introspection — functions of ``xai_recipes.hookspecs`` carrying pluggy's
hookspec marker — so a new hook fails these tests until it has a docstring that names its
arguments, a ``## name(args)`` section in docs/hooks.md, and a test that mentions it.
"""

import inspect
import re
from pathlib import Path

import pytest

from xai_recipes import hookspecs, registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "hooks.md"
TESTS = Path(__file__).resolve().parent
MARK = f"{hookspecs.hookspec.project_name}_spec"  # the attribute pluggy's HookspecMarker sets
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if inspect.isfunction(obj) and hasattr(obj, MARK))
HEADING = re.compile(r"^#{2,6}\s+`?(\w+)\(([^)]*)\)`?\s*$", re.MULTILINE)  # "## register_recipes(register)"


def documented() -> dict[str, list[str]]:
    """docs/hooks.md: hook name → argument names from its heading."""
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in HEADING.findall(DOCS.read_text())}


def test_hooks_are_found():
    assert HOOKS, "no hookspecs found by introspection: has the marker attribute changed?"
    # the same set the plugin manager knows, so the introspection cannot silently miss one
    known = {name for name in vars(registry.Registry().pm.hook) if not name.startswith("_")}
    assert set(HOOKS) == known


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook):
    function = getattr(hookspecs, hook)
    doc = inspect.getdoc(function)
    assert doc and len(doc.split()) >= 5, f"hookspec {hook} has no (real) docstring"
    for arg in inspect.signature(function).parameters:
        assert re.search(rf"\b{arg}\b", doc), f"the docstring of hookspec {hook} does not mention its argument {arg!r}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    docs = documented()
    assert hook in docs, f"docs/hooks.md has no '## {hook}(...)' section"
    assert docs[hook] == list(inspect.signature(getattr(hookspecs, hook)).parameters), (
        f"docs/hooks.md documents {hook}({', '.join(docs[hook])}), not the hookspec's arguments"
    )


def test_documented_hooks_exist():
    assert set(documented()) <= set(HOOKS), "docs/hooks.md documents hooks that hookspecs.py does not define"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    uses = [p.relative_to(TESTS) for p in sorted(TESTS.rglob("*.py"))
            if p.name != Path(__file__).name and re.search(rf"\b{hook}\b", p.read_text(encoding="utf-8"))]
    assert uses, f"no test under tests/ exercises the hook {hook}"
