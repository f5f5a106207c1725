"""The docs site: a gallery page per registered recipe, current with the recipe's source, and a
site that builds with ``mkdocs build --strict``.

Pages are written by ``python docs/gen_gallery.py`` from the registry; run it again when a recipe
is added, removed or changed. Nothing here depends on the figures' bytes (they are re-rendered
by the engine and may differ between machines), only on the pages' text and that the figures
they show exist.
"""

import ast
import functools
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_localisation import DEFAULT_NOT_BETTER, MARGIN

import xai_recipes

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GALLERY = DOCS / "gallery"
REGENERATE = "run `python docs/gen_gallery.py` and commit docs/gallery/"


def builtin_recipes() -> dict:
    dists = {p.name: p.distribution for p in xai_recipes.plugins()}
    return {n: r for n, r in xai_recipes.recipes().items() if dists.get(r.plugin) == "xai-recipes"}


def pages() -> dict[str, Path]:
    return {p.stem: p for p in sorted(GALLERY.glob("*.md")) if p.name != "index.md"}


@functools.cache
def gen_gallery():
    """docs/gen_gallery.py as a module (imports nothing heavy at import time)."""
    spec = importlib.util.spec_from_file_location("xai_recipes_docs_gen_gallery", DOCS / "gen_gallery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def recipe_blocks(recipe) -> list[str]:
    """Written independently of the generator: the top-level statement(s) of the recipe's module
    holding ``Recipe(name="<name>", ...)``, as ``inspect.getsource`` gives them now."""
    source = inspect.getsource(sys.modules[recipe.target_layers.__module__])
    lines = source.splitlines(keepends=True)
    blocks = []
    for stmt in ast.parse(source).body:
        for node in ast.walk(stmt):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Recipe"
                    and any(k.arg == "name" and getattr(k.value, "value", None) == recipe.name for k in node.keywords)):
                blocks.append("".join(lines[stmt.lineno - 1:stmt.end_lineno]).rstrip())
                break
    return blocks


def test_every_builtin_recipe_has_a_gallery_page_linked_from_the_index():
    index = (GALLERY / "index.md").read_text()
    builtin = builtin_recipes()
    assert builtin, "no built-in recipes registered"
    missing = sorted(set(builtin) - set(pages()))
    assert not missing, f"registered recipes without a gallery page: {missing}; {REGENERATE}"
    unlinked = sorted(n for n in builtin if f"]({n}.md)" not in index)
    assert not unlinked, f"recipes not linked from docs/gallery/index.md: {unlinked}; {REGENERATE}"


def test_no_gallery_page_for_a_recipe_that_is_not_registered():
    stale = sorted(set(pages()) - set(xai_recipes.recipes()))
    assert not stale, (
        f"gallery pages of recipes that are not registered: {stale}; {REGENERATE} (it deletes them). "
        "A third-party plugin's page is only kept where that plugin is installed."
    )


def test_pages_show_their_recipes_current_source_and_declarations():
    recipes = xai_recipes.recipes()
    excerpt = gen_gallery().recipe_source
    for name, page in pages().items():
        recipe = recipes.get(name)
        if recipe is None:
            continue  # reported by the stale-page test
        text = page.read_text()
        blocks = recipe_blocks(recipe)
        assert blocks, f"no Recipe(name={name!r}, ...) call found in {recipe.target_layers.__module__}"
        for block in blocks:
            assert block in text, f"docs/gallery/{name}.md does not show the current Recipe(...) source; {REGENERATE}"
        assert excerpt(recipe)[1] in text, f"docs/gallery/{name}.md: stale source excerpt (helpers); {REGENERATE}"
        assert recipe.description in text, f"docs/gallery/{name}.md: stale description; {REGENERATE}"
        doc = inspect.cleandoc(sys.modules[recipe.target_layers.__module__].__doc__ or "")
        assert doc in text, f"docs/gallery/{name}.md: stale module docstring; {REGENERATE}"
        for model_type in recipe.model_types:
            assert f"`{model_type}`" in text


def test_every_figure_the_gallery_shows_exists():
    for page in [GALLERY / "index.md", *pages().values()]:
        for target in re.findall(r"!\[[^\]]*\]\((img/[^)\s]+)\)", page.read_text()):
            assert (GALLERY / target).is_file(), f"{page.name} shows {target}, which does not exist; {REGENERATE}"


def test_builtin_recipes_with_an_example_model_have_figures():
    examples = gen_gallery().EXAMPLES
    for name in builtin_recipes():
        if name in examples:
            text = (GALLERY / f"{name}.md").read_text()
            assert f"(img/{name}-gradcam.png)" in text, f"docs/gallery/{name}.md has no GradCAM figure"


QUALITY = json.loads((GALLERY / "quality.json").read_text())
#: Recipes whose default is more than MARGIN below the best pointing score of their table: the same models
#: and measurement as tests/test_localisation.py's, so the same reason.
DEFAULT_NOT_BEST = {"dinov2": DEFAULT_NOT_BETTER["dinov2"]}


def test_every_recipe_with_an_example_model_has_its_quality_table():
    examples = gen_gallery().EXAMPLES
    for name in builtin_recipes():
        if name not in examples:
            continue
        assert name in QUALITY, f"docs/gallery/quality.json has no table for {name}; {REGENERATE}"
        text = (GALLERY / f"{name}.md").read_text()
        assert "### Quality: methods × metrics" in text, f"docs/gallery/{name}.md has no quality table; {REGENERATE}"
        for method, scores in QUALITY[name]["methods"].items():
            assert re.search(rf"^\| (\*\*)?{re.escape(method)}(\*\*)?( \(default\))? \| {gen_gallery()._cell(round(scores['pointing'], 3))} \|", text, re.M), (
                f"docs/gallery/{name}.md does not show {method}'s row of quality.json; {REGENERATE}")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=DEFAULT_NOT_BEST[n]))
                                  if n in DEFAULT_NOT_BEST else n for n in sorted(QUALITY)])
def test_the_default_method_is_the_best_localising_of_its_quality_table(name):
    """A recipe's default comes from its published table: its pointing score is within the margin of the best."""
    table = QUALITY[name]
    assert table["default"] == xai_recipes.get_recipe(name).default_method, f"{name}: the table is stale; {REGENERATE}"
    pointing = {method: scores["pointing"] for method, scores in table["methods"].items()}
    best = max(pointing.values())
    slack = 1e-4  # quality.json holds 4 decimals
    assert pointing[table["default"]] >= best - MARGIN - slack, f"{name}: default {table['default']}, {pointing}"


def test_readme_and_index_show_the_quality_summary_of_quality_json():
    summary = gen_gallery().quality_summary(QUALITY)
    readme = (ROOT / "README.md").read_text()
    begin, end = gen_gallery().README_BEGIN, gen_gallery().README_END
    assert f"{begin}\n{summary}\n{end}" in readme, f"README.md's quality summary is stale; {REGENERATE}"
    assert summary in (GALLERY / "index.md").read_text(), f"docs/gallery/index.md's quality summary is stale; {REGENERATE}"


def test_mkdocs_build_strict(tmp_path):
    # mkdocs and mkdocs-material are in the dev extra: missing is a failure, not a skip.
    for module in ("mkdocs", "material"):
        assert importlib.util.find_spec(module) is not None, f"{module} is not installed: pip install -e '.[dev]'"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    site = tmp_path / "site"
    for name in pages():
        assert (site / "gallery" / name / "index.html").is_file(), f"gallery/{name} not built"

