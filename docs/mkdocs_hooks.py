"""MkDocs hooks for the xai-recipes site (``hooks:`` in mkdocs.yml).

* The nav's ``Gallery`` entry is expanded to the gallery index plus every page under
  ``docs/gallery/`` (written by ``docs/gen_gallery.py``), so mkdocs.yml never lists recipes.
* ``Coverage`` (``docs/coverage.md``, generated elsewhere) is added to the nav when it exists.
* Links from a page to repository files outside ``docs/`` (``../README.md``, ``../recipes/``)
  are checked: a missing target is a warning, so ``mkdocs build --strict`` fails on it. An
  existing one points to ``repo_url``'s copy of the file when ``repo_url`` is set, and is
  otherwise shown as its repository path in code (the built site holds no repository files).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("xai_recipes_docs")

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|#|/)")


def on_config(config):
    docs = Path(config.docs_dir)
    nav = config.nav or []
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and "Gallery" in entry:
            pages = sorted(p.name for p in (docs / "gallery").glob("*.md") if p.name != "index.md")
            methods = sorted(p.name for p in (docs / "gallery" / "methods").glob("*.md"))
            tasks = sorted(p.name for p in (docs / "gallery" / "tasks").glob("*.md"))
            nav[i] = {"Gallery": ["gallery/index.md", *(f"gallery/{name}" for name in pages),
                                  *([{"Tasks": [f"gallery/tasks/{name}" for name in tasks]}] if tasks else []),
                                  *([{"Methods": [f"gallery/methods/{name}" for name in methods]}] if methods else [])]}
    listed = any(isinstance(e, dict) and "coverage.md" in e.values() for e in nav)
    if (docs / "coverage.md").is_file() and not listed:
        nav.append({"Coverage": "coverage.md"})
    return config


def on_page_markdown(markdown, page, config, files):
    docs = Path(config.docs_dir).resolve()
    root = docs.parent
    here = Path(page.file.abs_src_path).resolve().parent
    branch = config.extra.get("repo_branch", "main")

    def fix(match: re.Match) -> str:
        bang, text, target = match.groups()
        if EXTERNAL.match(target):
            return match.group(0)
        path, _, fragment = target.partition("#")
        resolved = (here / path).resolve()
        if resolved == docs or docs in resolved.parents:
            return match.group(0)  # a docs page or file: mkdocs checks it
        try:
            rel = resolved.relative_to(root).as_posix()
        except ValueError:
            log.warning(f"{page.file.src_uri}: link {target!r} leaves the repository")
            return match.group(0)
        if not resolved.exists():
            log.warning(f"{page.file.src_uri}: link {target!r}: no {rel} in the repository")
            return match.group(0)
        if config.repo_url:
            kind = "tree" if resolved.is_dir() else "blob"
            url = f"{config.repo_url.rstrip('/')}/{kind}/{branch}/{rel}" + (f"#{fragment}" if fragment else "")
            return f"{bang}[{text}]({url})"
        shown = rel + ("/" if resolved.is_dir() else "")
        return text if rel in text else f"{text} (`{shown}`)"

    parts, last = [], 0
    for fence in FENCE.finditer(markdown):  # code blocks are left alone
        parts += [LINK.sub(fix, markdown[last:fence.start()]), fence.group(0)]
        last = fence.end()
    parts.append(LINK.sub(fix, markdown[last:]))
    return "".join(parts)
