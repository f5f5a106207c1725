"""``xai-recipes serve``: a Gradio page to explain an image with any model (``pip install "xai-recipes[web]"``).

Upload or drop an image (or pick a bundled photo), choose the model, the method (the recipe's
default first, then the others that apply to the model) and the targets (labels from the
model's ``id2label``; none = the top-k predictions). The page shows one labelled overlay per
target, the top-5 predictions, DFF's concepts with their legend, per-head maps for ``attention``
and offers the saved explanation (``.npz`` + ``.json`` + the figure, zipped) for download.

Gradio is imported here only, so ``import xai_recipes`` stays light. The page binds to
127.0.0.1 unless told otherwise, refuses uploads over ``max_file_size``, and reports an
unreadable file, an unknown label or a model that cannot be loaded as a message on the page.
The functions below are the page's callbacks; they can be called (and are tested) directly.
Saved audit reports (``xai-recipes audit ... --out REPORT``) passed in place of a model are served
as static pages under ``/reports/<n>/`` and linked from the page.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, before gradio is imported

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from . import loading, render  # noqa: E402
from .errors import XAIRecipesError  # noqa: E402
from .images import load_image  # noqa: E402

log = logging.getLogger(__name__)

#: Uploads larger than this are refused by the server (gradio's ``max_file_size``).
MAX_FILE_SIZE = "20mb"
#: The name the bundled EfficientNet-Lite0 has in the model list.
DEMO_MODEL = "EfficientNet-Lite0 (bundled demo, ImageNet)"
MAX_TOP_K = 10

Progress = Callable[..., Any]

#: Overlays keep their aspect ratio (label strip included) instead of gradio's square thumbnails.
CSS = """
#overlays .thumbnail-item, #heads .thumbnail-item { aspect-ratio: auto; }
#overlays .grid-wrap, #heads .grid-wrap { height: auto !important; max-height: none; min-height: 0; }
#overlays .grid-container, #heads .grid-container { padding-top: 2.2rem; }
"""


def demo_model() -> str:
    """The bundled demo model's folder (written on first use, see :mod:`xai_recipes.demo`)."""
    from .demo import build_demo_model, default_folder

    return str(build_demo_model(default_folder()))


def resolve_model(model: str | None) -> str:
    """The page's model choice → what :func:`xai_recipes.explain` takes (the demo's name → its folder)."""
    if not model or not str(model).strip():
        raise XAIRecipesError("no model chosen; pick one from the list or type a hub id or a local folder")
    model = str(model).strip()
    return demo_model() if model == DEMO_MODEL else model


def _message(exc: BaseException, upload: str | None = None) -> str:
    """A one-paragraph page message for a failure (the traceback goes to the server's log only);
    an uploaded file is named by its name, not the server's temporary path."""
    if isinstance(exc, XAIRecipesError):
        text = f"**{type(exc).__name__}:** {exc}"
    else:
        log.exception("unexpected error in the xai-recipes page")
        text = f"**Unexpected error ({type(exc).__name__}):** {exc}"
    return text.replace(upload, Path(upload).name) if upload else text


def read_image(upload: str | None, photo: str | None) -> Image.Image:
    """The image to explain: the uploaded file if any, else the bundled photo named ``photo``.

    Raises :class:`~xai_recipes.ImageError` for a file that is not a readable image."""
    if upload:
        return load_image(upload)
    if photo:
        from .demo import photos

        found = photos()
        if photo not in found:
            raise XAIRecipesError(f"no bundled photo called {photo!r}; choose one of {', '.join(found)}")
        return load_image(found[photo])
    raise XAIRecipesError("no image yet: upload or drop an image file, or pick a bundled photo")


def preview(upload: str | None, photo: str | None) -> tuple[Image.Image | None, str]:
    """Callback of the image inputs: ``(the image to show, status message)``."""
    try:
        return read_image(upload, photo), ""
    except Exception as exc:
        return None, _message(exc, upload)


ZERO_SHOT = "zero-shot-image-classification"


def model_options(model: str | None) -> tuple[list[str], str, list[str], bool]:
    """``(methods, default, labels, zero_shot)`` for a model: the methods that apply to it with the
    recipe's default first, its class labels in index order (none for a zero-shot model, whose
    classes are the user's prompts), and whether it is a zero-shot (CLIP / SigLIP) model."""
    from .description import describe

    ref = resolve_model(model)
    found = describe(ref)
    ok = [name for name, why in found.methods.items() if why == "ok"]
    methods = [found.default_method] + [m for m in ok if m != found.default_method]
    if found.task == ZERO_SHOT:
        return methods, found.default_method, [], True
    loaded, _ = loading.load(ref, need_processor=False)
    id2label = loaded.config.id2label
    labels = [str(id2label[i]) for i in sorted(id2label)]
    return methods, found.default_method, labels, False


def is_detector_ref(model: str | None) -> bool:
    """Whether the model named ``model`` is an object detector (its page shows the threshold slider)."""
    from .tasks.detection import is_detector

    return is_detector(loading.load(resolve_model(model), need_processor=False)[0])


def choose_model(model: str | None) -> tuple[Any, Any, Any, Any, str]:
    """Callback of the model box: new method and target choices, the prompt box, the detection threshold
    (shown for detectors) and a status message."""
    try:
        methods, default, labels, zero_shot = model_options(model)
        detector = is_detector_ref(model)
    except Exception as exc:
        return gr.update(), gr.update(), gr.update(), gr.update(), _message(exc)
    what = ("a zero-shot model: type prompts as targets, candidate labels below" if zero_shot
            else f"a detector of {len(labels)} classes: targets are labels, or detection numbers" if detector
            else f"{len(labels)} classes")
    return (gr.update(choices=methods, value=default), gr.update(choices=labels, value=[]),
            gr.update(visible=zero_shot), gr.update(visible=detector),
            f"Model loaded: {what}; default method **{default}**.")


def _candidates(text: str | None) -> list[str] | None:
    """The candidate labels typed in the prompt box: one per line (or comma-separated on one line)."""
    if not text or not text.strip():
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines if len(lines) > 1 else [t.strip() for t in lines[0].split(",") if t.strip()]


def _targets(targets: list[str] | str | None) -> list[str | int] | None:
    if not targets:
        return None
    items = [targets] if isinstance(targets, str) else list(targets)
    out: list[str | int] = [int(t) if str(t).strip().isdigit() else str(t) for t in items if str(t).strip()]
    return out or None


def _concepts_markdown(exp: Any) -> str:
    colours = render.palette(len(exp.legend))
    rows = [f"| <span style='color:#{bytes(int(v) for v in colours[c]).hex()}'>■</span> {c + 1} | {line} |"
            for c, line in enumerate(render.legend_lines(exp.legend))]
    return "\n".join(["**Concepts** (the classes the model reads from each, with probabilities)", "",
                      "| concept | classes |", "|---|---|", *rows])


_RUNS: list[Path] = []  # the folders of the latest downloads; older ones are removed
_RUNS_LOCK = threading.Lock()  # concurrent requests (the queue's concurrency) save at once
KEEP_RUNS = 16
#: Requests explained at once (gradio's queue concurrency); the rest wait, at most ``MAX_QUEUE`` of them.
CONCURRENCY = 2
MAX_QUEUE = 64


#: EXIF tag ImageUniqueID: each request's overlays carry their own, so their bytes are their own.
_UNIQUE_ID = 0xA420


def _save(exp: Any, images: Sequence[Image.Image] = ()) -> str:
    """The explanation as a zip of ``explanation.npz`` + ``.json`` + ``.png`` in a fresh temporary
    folder of this request's own (gradio serves a copy; only the latest ``KEEP_RUNS`` folders are
    kept), and ``images`` (the overlays the page shows) stamped with a unique id; the zip's path.

    No file served to one user is ever rewritten for another. Gradio keeps its copies of results
    under the hash of their bytes: a returned *file* is copied there atomically (a temporary name,
    then a rename; an existing copy is reused, never rewritten), but a returned PIL image is
    encoded and written in place, ``write_bytes`` truncating first, so two users given identical
    overlays at once shared one cache file that one request rewrote while the other's download of
    it was being served (the load test's truncated responses). Each overlay therefore gets this
    request's own id in its EXIF ``ImageUniqueID`` tag (and a text entry), which gradio's WebP (PNG) encoding keeps: its
    bytes, hence its cache file, belong to this request alone, written once."""
    folder = Path(tempfile.mkdtemp(prefix="xai-recipes-web-"))
    with _RUNS_LOCK:
        _RUNS.append(folder)
        old = _RUNS[:-KEEP_RUNS]
        del _RUNS[:-KEEP_RUNS]
    for stale in old:
        shutil.rmtree(stale, ignore_errors=True)
    files = exp.save(folder / "explanation.npz") + exp.save(folder / "explanation.png")
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{exp.method}-{exp.labels[0].split(',')[0]}")
    archive = folder / f"explanation-{stem}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    request = uuid.uuid4().hex
    for i, image in enumerate(images):
        exif = image.getexif()
        exif[_UNIQUE_ID] = f"{request}-{i}"
        image.info["exif"] = exif.tobytes()
        image.info["xai-recipes-request"] = f"{request}-{i}"  # PNG keeps text, not EXIF
    return str(archive)


def explain_image(upload: str | None, photo: str | None, model: str | None, method: str | None,
                  targets: list[str] | str | None, top_k: int | float | None, candidates: str | None = None,
                  threshold: float | None = None, progress: Progress = gr.Progress()) -> tuple[Any, ...]:
    """Callback of the Explain button.

    Returns ``(status, overlays, predictions, concepts, heads, download, picker)``: a Markdown
    message (empty when all went well), the labelled overlays as ``(image, caption)`` pairs (a
    detection's box and a segment's outline drawn on them), the top-5 as ``{label: probability}``,
    DFF's legend (Markdown, hidden otherwise), the per-head maps (hidden when the method gives
    none), the path of the zipped saved explanation, and the detection picker's choices (hidden
    unless the model is a detector or segmenter).
    Failures (an unreadable file, an unknown label, a model that cannot be loaded, a method
    that does not apply) come back as the status message, the other outputs cleared.
    """
    from .engine import explain

    empty = (None, None, gr.update(value="", visible=False), gr.update(value=None, visible=False), None,
             gr.update(choices=[], value=None, visible=False))
    try:
        progress(0.0, desc="reading the image")
        image = read_image(upload, photo)
        progress(0.1, desc="loading the model")
        ref = resolve_model(model)
        progress(0.3, desc=f"explaining with {method or 'the default method'}")
        k = int(top_k or 1)
        if not 1 <= k <= MAX_TOP_K:
            raise XAIRecipesError(f"top-k must be between 1 and {MAX_TOP_K}, got {k}")
        labels = _candidates(candidates)  # zero-shot: the candidate prompts the probabilities are over
        options: dict[str, Any] = {"labels": labels} if labels else {}
        if threshold is not None and is_detector_ref(ref):
            options["threshold"] = float(threshold)
        exp = explain(ref, image, method=method or None, target=_targets(targets), top_k=k, **options)
        progress(0.8, desc="drawing")
        if exp.legend is not None:
            overlays = [(exp.figure(), f"{exp.method}: {len(exp.legend)} concepts")]
            concepts = gr.update(value=_concepts_markdown(exp), visible=True)
        else:
            overlays = [(exp.labelled(i), f"{label.split(',')[0]} · {score:.3f}")
                        for i, (label, score) in enumerate(zip(exp.labels, exp.scores))]
            concepts = gr.update(value="", visible=False)
        heads = exp.head_overlays()
        heads_update = gr.update(value=[(h, f"head {n}") for n, h in enumerate(heads)] if heads else None,
                                 visible=bool(heads))
        predictions = {label: float(p) for _, label, p in exp.predictions}
        progress(0.95, desc="saving")
        download = _save(exp, [picture for picture, _ in overlays] + heads)
    except Exception as exc:
        return (_message(exc, upload), *empty)
    status = f"Explained with **{exp.recipe} / {exp.method}** at `{', '.join(exp.target_layers) or '-'}`."
    return status, overlays, predictions, concepts, heads_update, download, _picker(exp)


def _picker(exp: Any) -> Any:
    """The detection picker: the explained detections (or segments), each choosable to explain it alone."""
    if exp.boxes is None and exp.masks is None:
        return gr.update(choices=[], value=None, visible=False)
    where = ([f"box ({', '.join(f'{v:.0f}' for v in b)})" for b in exp.boxes] if exp.boxes is not None else
             [f"{int(m.sum())} px" for m in exp.masks])
    # a detection is targeted by its place in the best-first order, a segment by its class
    keys = (list(range(len(exp.labels))) if exp.boxes is not None else exp.labels)
    choices = [(f"{i} · {label} · {score:.3f} · {w}", str(key))
               for i, (label, score, w, key) in enumerate(zip(exp.labels, exp.scores, where, keys))]
    return gr.update(choices=choices, value=None, visible=True)


def _reports_markdown(reports: list[str]) -> str:
    links = [f"[{Path(r).resolve().name}](/reports/{i}/index.html)" for i, r in enumerate(reports)]
    return "**Saved audit reports:** " + " · ".join(links)


def build_app(models: list[str] | None = None, *, demo: bool = True, reports: list[str] | None = None) -> gr.Blocks:
    """The page. ``models``: local folders or hub ids listed first (``demo``: the bundled
    EfficientNet-Lite0 is listed too, and chosen when no model is given)."""
    from .demo import photos

    choices = list(models or [])
    if demo:
        choices.append(DEMO_MODEL)
    if not choices and reports:  # only saved reports: a page of links to them
        with gr.Blocks(title="xai-recipes: audit reports", analytics_enabled=False) as app:
            gr.Markdown(_reports_markdown(reports), elem_id="reports")
        return app
    if not choices:
        raise XAIRecipesError("no model to serve: pass MODEL folders or hub ids, or keep the bundled demo model")
    first = choices[0]
    try:
        methods, default, labels, zero_shot = model_options(first)
        detector, status = is_detector_ref(first), ""
    except Exception as exc:
        methods, default, labels, zero_shot, detector, status = [], None, [], False, False, _message(exc)
    photo_names = list(photos())

    # delete_cache: gradio's copies of uploads and results older than an hour go, checked hourly
    with gr.Blocks(title="xai-recipes: explain an image", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("## xai-recipes: explain an image model\nUpload an image (or pick a bundled photo), "
                    "choose the model, the method and the classes, prompts or detections to explain (none: the "
                    "top predictions).")
        if reports:
            gr.Markdown(_reports_markdown(reports), elem_id="reports")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image: upload or drop a file", file_count="single", type="filepath",
                                 elem_id="upload")
                photo = gr.Radio(photo_names, value=None, label="…or a bundled photo (CC0, scikit-image)",
                                 elem_id="photo")
                shown = gr.Image(label="Image to explain", interactive=False, type="pil", format="png",
                                 elem_id="shown", height=260)
                model = gr.Dropdown(choices, value=first, allow_custom_value=True, elem_id="model",
                                    label="Model", info="a listed one, a local folder or a hub id (when online)")
                method = gr.Dropdown(methods, value=default, label="Method", elem_id="method",
                                     info="the recipe's default first; only methods that apply to this model")
                targets = gr.Dropdown(labels, value=[], multiselect=True, allow_custom_value=True,
                                      label="Targets", elem_id="targets", info="type to search; none: the top-k")
                candidates = gr.Textbox(label="Candidate labels (zero-shot models)", lines=3, elem_id="candidates",
                                        visible=zero_shot, info="one prompt per line; the probabilities are taken "
                                        "over these (empty: over the targets); 'This is a photo of {}.' is applied")
                top_k = gr.Slider(1, MAX_TOP_K, value=1, step=1, label="top-k (without targets; DFF: classes "
                                  "per concept)", elem_id="top_k")
                threshold = gr.Slider(0.0, 0.99, value=0.5, step=0.01, label="Detection threshold (as the "
                                      "pipeline's)", elem_id="threshold", visible=detector)
                button = gr.Button("Explain", variant="primary", elem_id="explain")
            with gr.Column(scale=2):
                message = gr.Markdown(status, elem_id="status")
                overlays = gr.Gallery(label="Overlays (one per target)", columns=2, format="png", height="auto",
                                      object_fit="contain", preview=False, elem_id="overlays")
                predictions = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="predictions")
                concepts = gr.Markdown(visible=False, elem_id="concepts")
                heads = gr.Gallery(label="Attention heads", columns=4, format="png", height="auto", preview=False,
                                   object_fit="contain", visible=False, elem_id="heads")
                download = gr.File(label="Saved explanation (.npz + .json + figure, zipped)", interactive=False,
                                   elem_id="download")
                picker = gr.Dropdown([], value=None, label="Detections / segments: pick one to explain it alone",
                                     visible=False, elem_id="picker")

        upload.upload(lambda f: (None, *preview(f, None)), [upload], [photo, shown, message])
        upload.clear(lambda: (None, ""), None, [shown, message])
        photo.input(lambda p: (None, *preview(None, p)), [photo], [upload, shown, message])
        model.input(choose_model, [model], [method, targets, candidates, threshold, message])
        outputs = [message, overlays, predictions, concepts, heads, download, picker]
        button.click(explain_image, [upload, photo, model, method, targets, top_k, candidates, threshold], outputs)
        # the picked detection alone; the picker keeps listing every detection of the last full explanation
        picker.input(lambda u, p, m, me, pick, k, c, t: (*explain_image(u, p, m, me, [pick] if pick else None, k, c,
                                                                        t)[:-1], gr.update()),
                     [upload, photo, model, method, picker, top_k, candidates, threshold], outputs)
    return app


def serve(models: list[str] | None = None, *, host: str = "127.0.0.1", port: int | None = None,
          max_file_size: str | int = MAX_FILE_SIZE, demo: bool = True, block: bool = True,
          concurrency: int = CONCURRENCY, max_queue: int = MAX_QUEUE) -> gr.Blocks:
    """Build the page and serve it on ``host:port`` (``port`` None: the first free one from 7860).

    ``block=False`` returns at once with the server running in a thread (``app.close()`` stops it)."""
    from .report import is_report

    reports = [str(m) for m in models or [] if is_report(m)]  # saved audit reports, served as static pages
    models = [m for m in models or [] if str(m) not in reports]
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise XAIRecipesError(f"concurrency must be a positive integer, got {concurrency!r}")
    app = build_app(models, demo=demo, reports=reports)
    # each request's results go back to its own session only; at most `concurrency` run at once (explain()
    # shares a model between threads safely), at most `max_queue` wait: excess requests are refused
    app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    app.launch(server_name=host, server_port=port, max_file_size=max_file_size, prevent_thread_lock=True,
               show_error=False, ssr_mode=False, inbrowser=False, share=False, quiet=False,
               footer_links=[], mcp_server=False, pwa=False, css=CSS)
    if reports:
        from starlette.staticfiles import StaticFiles

        for i, folder in enumerate(reports):
            app.server_app.mount(f"/reports/{i}", StaticFiles(directory=folder, html=True), name=f"report-{i}")
    if block:
        app.block_thread()
    return app
