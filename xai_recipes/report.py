"""The audit report: one static HTML page, its figures as PNG files beside it, and ``audit.json``.

No server, no network, no script: the page links only its own ``img/*.png`` files and carries its
styles inline, so it opens from disk, from an archive or from ``xai-recipes serve REPORT/``. Every
number on the page is also in ``audit.json``, and each one carries its path there
(``data-json="classes.0.clusters.1.size"``), so page and file can be checked against each other.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from .audit import Audit

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-bottom: .4rem; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { border: 1px solid #ccc; padding: .25rem .5rem; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flag { background: #fde8e8; border-left: 4px solid #c0392b; padding: .4rem .7rem; margin: .3rem 0; }
.ok { background: #e8f6ea; border-left: 4px solid #2e8b57; padding: .4rem .7rem; }
.cluster { display: flex; gap: .8rem; align-items: flex-start; margin: .6rem 0; flex-wrap: wrap; }
.cluster.flagged { outline: 2px solid #c0392b; outline-offset: 4px; }
figure { margin: 0; text-align: center; font-size: .75rem; color: #555; max-width: 170px; overflow-wrap: anywhere; }
figure img { display: block; max-width: 160px; max-height: 160px; border: 1px solid #ccc; }
.row { display: flex; gap: .6rem; flex-wrap: wrap; } .note { color: #666; font-size: .9rem; }
nav a { margin-right: .8rem; } code { background: #f3f3f3; padding: 0 .2rem; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _num(path: str, value: Any) -> str:
    return f'<span data-json="{path}">{_fmt(value)}</span>'


def _td(path: str, value: Any) -> str:
    return f'<td class="num" data-json="{path}">{_fmt(value)}</td>'


def heat_png(grid: np.ndarray, region: tuple[float, float, float, float] | None, side: int = 160) -> Image.Image:
    """A ``resolution``² map as a colour picture (its maximum red), with the fixed window outlined."""
    m = np.asarray(grid, np.float32)
    m = m / m.max() if m.max() > 0 else m
    coloured = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    picture = Image.fromarray(np.ascontiguousarray(coloured)).resize((side, side), Image.Resampling.NEAREST)
    if region is not None:
        x0, y0, x1, y1 = (v * side for v in region)
        ImageDraw.Draw(picture).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255), width=2)
    return picture


def _figure(folder: Path, name: str, image: Image.Image, caption: str) -> str:
    image.save(folder / "img" / name, optimize=True)
    return f'<figure><img src="img/{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _flag_text(flag: dict[str, Any], base: str) -> str:
    c = flag["cluster"]
    if flag["rule"] == "fixed_position":
        x0, y0, x1, y1 = flag["region"]
        return (f'<div class="flag" data-rule="fixed_position"><b>Fixed position</b> — cluster {c} '
                f'({_num(base + ".size", flag["size"])} images, {_num(base + ".share", flag["share"])} of the class): '
                f'median {_num(base + ".position_share", flag["position_share"])} of each map\'s mass lies in the same '
                f'window x {x0:.2f}–{x1:.2f}, y {y0:.2f}–{y1:.2f} of the image across different images.</div>')
    return (f'<div class="flag" data-rule="off_object"><b>Off the object</b> — cluster {c} '
            f'({_num(base + ".size", flag["size"])} images): median {_num(base + ".object_share", flag["object_share"])} '
            f'of map mass on the annotated object, {_num(base + ".object_lift", flag["object_lift"])}× its area share '
            f'(1× = a map spread at random).</div>')


def write_report(audit: "Audit", folder: str | os.PathLike) -> Path:
    """Write ``index.html``, ``audit.json`` and ``img/*.png`` into ``folder``; returns the page's path."""
    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    data = audit.as_dict()
    (folder / "audit.json").write_text(json.dumps(data, indent=1))
    flagged = ", ".join(audit.flagged) or "none"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Audit: {html.escape(audit.model)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Model audit: <code>{html.escape(audit.model)}</code></h1>",
             f'<p id="summary">{_num("n_images", data["n_images"])} images, {len(audit.classes)} classes, explained '
             f'with <b data-json="recipe">{html.escape(audit.recipe)}</b> / <b data-json="method">'
             f'{html.escape(audit.method)}</b>. Flagged classes: <b id="flagged">{html.escape(flagged)}</b>. '
             f'{len(audit.skipped)} images skipped.</p>',
             '<p class="note">Strategies: SpRAy (Lapuschkin et al. 2019) — each class\'s heatmaps at '
             f'{audit.settings["resolution"]}×{audit.settings["resolution"]}, normalised, spectral clustering, the '
             'number of clusters by the eigengap. A cluster is flagged <i>fixed position</i> when the median share of '
             f'map mass in one {audit.settings["region"]}×{audit.settings["region"]}-cell window (outlined on its mean '
             f'map) is ≥ {audit.settings["position_threshold"]}, and <i>off the object</i> when (with boxes or masks) '
             f'its evidence is on the object no more than {audit.settings["object_lift"]}× chance. Concepts: NMF '
             '(Deep Feature Factorization) over the feature-layer activations of all sampled images of a class, each '
             'named by the model\'s own head. Every number is in <a href="audit.json">audit.json</a>.</p>',
             "<nav>" + "".join(f'<a href="#class-{c.index}">{html.escape(c.label)}{" ⚑" if c.flagged else ""}</a>'
                               for c in audit.classes) + "</nav>"]
    for ci, (c, cd) in enumerate(zip(audit.classes, data["classes"])):
        base = f"classes.{ci}"
        parts.append(f'<section class="class" id="class-{c.index}" data-label="{html.escape(c.label)}">')
        parts.append(f'<h2>{html.escape(c.label)} — {_num(base + ".n_images", cd["n_images"])} images, '
                     f'{_num(base + ".n_clusters", cd["n_clusters"])} strategies</h2>')
        parts.append('<div class="flags"><h3>Shortcut flags</h3>')
        if cd["flags"]:
            parts.extend(_flag_text(f, f"{base}.flags.{fi}") for fi, f in enumerate(cd["flags"]))
        else:
            parts.append('<div class="ok">No cluster flagged.</div>')
        parts.append("</div>")
        parts.append('<div class="strategies"><h3>Strategies</h3><table><tr><th>cluster</th><th>images</th>'
                     '<th>share</th><th>mass in window</th><th>on object</th><th>× chance</th><th>flags</th></tr>')
        for k, cl in enumerate(cd["clusters"]):
            p = f"{base}.clusters.{k}"
            parts.append(f"<tr><td>{cl['id']}</td>{_td(p + '.size', cl['size'])}{_td(p + '.share', cl['share'])}"
                         f"{_td(p + '.position_share', cl['position_share'])}{_td(p + '.object_share', cl['object_share'])}"
                         f"{_td(p + '.object_lift', cl['object_lift'])}<td>{html.escape(', '.join(cl['flags']) or '–')}"
                         "</td></tr>")
        parts.append("</table>")
        if cd["eigenvalues"]:
            values = ", ".join(f"{v:.3f}" for v in cd["eigenvalues"])
            parts.append(f'<p class="note">Smallest Laplacian eigenvalues: {values}.</p>')
        for k, cl in enumerate(c.clusters):
            flagged_cls = " flagged" if cl.flags else ""
            figs = [_figure(folder, f"c{c.index}-s{k}-mean.png", heat_png(cl.mean_map, cl.region),
                            f"cluster {cl.id}: mean map of {cl.size}")]
            figs += [_figure(folder, f"c{c.index}-s{k}-near{j}.png", im, src) for j, (src, im) in enumerate(cl.thumbnails)]
            if not cl.thumbnails and cl.nearest:
                figs.append(f'<p class="note">nearest the centre: {html.escape(", ".join(cl.nearest))}</p>')
            parts.append(f'<div class="cluster{flagged_cls}" data-cluster="{cl.id}">{"".join(figs)}</div>')
        parts.append("</div>")
        parts.append('<div class="concepts"><h3>Concepts</h3>')
        if c.concepts:
            parts.append("<table><tr><th>concept</th><th>named by the head</th><th>p(class)</th><th>share</th>"
                         "<th>strongest in</th></tr>")
            for k, (concept, kd) in enumerate(zip(c.concepts, cd["concepts"])):
                p = f"{base}.concepts.{k}"
                names = "; ".join(f"{html.escape(label)} {prob:.2f}" for _, label, prob in kd["labels"])
                crops = "".join(_figure(folder, f"c{c.index}-k{k}-crop{j}.png", im.resize((96, 96)), src)
                                for j, (src, im) in enumerate(concept.crops))
                parts.append(f'<tr><td>{kd["id"]}</td><td data-json="{p}.name">{html.escape(kd["name"])}</td>'
                             f"{_td(p + '.class_probability', kd['class_probability'])}{_td(p + '.share', kd['share'])}"
                             f'<td><div class="row">{crops}</div><span class="note">{names}</span></td></tr>')
            parts.append("</table>")
        else:
            parts.append(f'<p class="note">No concepts: {html.escape(c.concepts_note or "not computed")}.</p>')
        parts.append("</div>")
        parts.append('<div class="worst"><h3>Worst-localised images</h3>')
        if cd["worst"]:
            shown = dict(c.worst_thumbnails)
            figs = []
            for j, w in enumerate(cd["worst"]):
                caption = f"{w['source']}: {w['object_share']:.3f} on the object"
                if w["source"] in shown:
                    figs.append(_figure(folder, f"c{c.index}-w{j}.png", shown[w["source"]], caption))
                else:
                    figs.append(f'<p class="note">{html.escape(caption)}</p>')
            parts.append('<div class="row">' + "".join(figs) + "</div>")
        else:
            parts.append('<p class="note">No boxes or masks given: nothing to measure localisation against.</p>')
        parts.append("</div></section>")
    parts.append("</body></html>")
    page = folder / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def is_report(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a written audit report (``index.html`` and ``audit.json``)."""
    path = Path(folder)
    return path.is_dir() and (path / "index.html").is_file() and (path / "audit.json").is_file()
