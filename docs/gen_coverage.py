"""Regenerate the coverage tables: every transformers image-classification, zero-shot
image-classification, object-detection, semantic-segmentation and universal-segmentation architecture.

    python docs/gen_coverage.py        # writes docs/coverage.md and docs/coverage.json

Each architecture is built from a tiny random config (tests/tiny_archs.py) and explained with
whatever recipe it dispatches to — an explicit one, or one derived by probing the model — and
the task the engine picks for it. For each input size the architecture accepts, GradCAM (and,
for classifiers, DFF) must give maps of the image's shape, finite and not constant. Zero-shot
models (``AutoModelForZeroShotImageClassification``: CLIP, SigLIP, ...) are explained for two
text prompts through an offline character-level tokenizer (tests/tiny_archs.py's
``CharTokenizer``); their explained scores are also compared with the model's own forward
(``logits_per_image``, softmax or SigLIP's sigmoid). tests/test_coverage.py regenerates the rows
and compares them with the checked-in JSON, so the tables cannot drift from the code.

Detectors and segmenters (tests/tiny_object_archs.py) are explained with GradCAM, their two best detections
or largest classes, and compared with the transformers pipeline on the same model and processor.

coverage.json is ``{"rows": [...]}``: one row per architecture, each naming its ``table``
(``"image-classification"``, ``"zero-shot-image-classification"``, ``"object-detection"``,
``"image-segmentation"`` or ``"universal-segmentation"``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

IMAGE = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
CLASSIFICATION = "image-classification"
ZERO_SHOT = "zero-shot-image-classification"
DETECTION = "object-detection"
SEGMENTATION = "image-segmentation"
UNIVERSAL = "universal-segmentation"
PROMPTS = ["a dog", "a cat on a sofa"]  # the zero-shot targets (through the task's default template)
ATTENTION_METHODS = ("attention", "rollout", "gradient-rollout", "legrad")


def _check(model, processor, method: str, **kwargs) -> str:
    import xai_recipes

    try:
        options = {"n_components": 2} if method == "dff" else {}
        kwargs = kwargs or {"top_k": 2}
        exp = xai_recipes.explain(model, IMAGE, processor=processor, method=method, **kwargs, **options)
    except xai_recipes.XAIRecipesError as exc:
        return f"no: {type(exc).__name__}"
    ok = exp.heatmaps.shape[1:] == IMAGE.shape[:2] and np.isfinite(exp.heatmaps).all() and exp.heatmaps[0].std() > 1e-3
    return "ok" if ok else "no: constant or wrong shape"


def no_recipe_reason(exc: Exception) -> str:
    """The derivation's own reason inside a ``NoRecipeError`` message (without the list of registered recipes)."""
    return str(exc).split("No recipe could be derived either: ")[-1].split(". Registered")[0]


def rows() -> list[dict]:
    """One row per architecture, the image-classification table's then the zero-shot table's
    (deterministic: no timings)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return classification_rows() + zero_shot_rows() + object_rows()
    finally:
        torch.set_num_threads(threads)


def classification_rows() -> list[dict]:
    """One row per ``AutoModelForImageClassification`` architecture."""
    import tiny_archs as A
    from transformers import ViTImageProcessor

    import xai_recipes
    from xai_recipes.capture import module_names

    out = []
    for model_type in A.ARCHITECTURES:
        row = {"table": CLASSIFICATION, "model_type": model_type, "class": A.model_class(model_type).__name__,
               "recipe": "", "status": "", "layer": "", "task": "", "gradcam": {}, "dff": {},
               "default_method": "", "default": {}, "attention_methods": [], "note": ""}
        out.append(row)
        if model_type in A.UNBUILDABLE:
            row.update(status="unbuildable here", note=A.UNBUILDABLE[model_type])
            continue
        model = A.tiny_model(model_type)
        try:
            recipe = xai_recipes.find_recipe(model)
        except xai_recipes.NoRecipeError as exc:
            reason = no_recipe_reason(exc)
            if model_type in A.NOT_PIXEL_CLASSIFIERS:  # the probe's pixel_values cannot run it
                reason = f"not a pixel_values classifier: {A.NOT_PIXEL_CLASSIFIERS[model_type]}"
            row.update(status="unsupported", note=reason)
            continue
        derived = recipe.name.startswith("derived:")
        try:
            task = xai_recipes.find_task(model, recipe).name
        except xai_recipes.TaskNotApplicableError as exc:  # explain() refuses the model too: the checks show it
            task = f"none ({type(exc).__name__})"
        row.update(recipe=recipe.name, status="derived" if derived else "explicit",
                   layer=", ".join(module_names(model, recipe.target_layers(model))), task=task)
        row["default_method"] = recipe.default_method
        row["attention_methods"] = [m for m in ATTENTION_METHODS
                                    if xai_recipes.get_method(m).why_not(model, recipe) is None]
        if derived and recipe.head is None:
            row["note"] = "DFF: neither a linear head nor the model's own tail reproduces the logits from the pooled features"
        elif "dff" in recipe.unsupported:
            row["note"] = f"DFF: {recipe.unsupported['dff']}"
        for h, w in A.SIZES[model_type]:
            processor = ViTImageProcessor(size={"height": h, "width": w})
            row["gradcam"][f"{h}x{w}"] = _check(model, processor, "gradcam")
            row["dff"][f"{h}x{w}"] = _check(model, processor, "dff")
            row["default"][f"{h}x{w}"] = (row["gradcam"][f"{h}x{w}"] if recipe.default_method == "gradcam"
                                          else _check(model, processor, recipe.default_method))
    return out


def _forward_scores(model, recipe, processor) -> str:
    """``"ok"`` if the explained prompt scores equal the model's own forward pass on the same inputs
    (``logits_per_image``; SigLIP's sigmoid, else softmax), else how far they are."""
    import xai_recipes
    from xai_recipes.tasks.zero_shot import TEMPLATE, sigmoid_scores, text_inputs

    try:
        exp = xai_recipes.explain(model, IMAGE, target=PROMPTS, processor=processor, method="gradcam")
        text = text_inputs(model, processor.tokenizer, [TEMPLATE.format(p) for p in PROMPTS], None)
        pixels = recipe.image_tensor(processor(images=IMAGE, return_tensors="pt"))
        with torch.no_grad():
            logits = model(**text, **recipe.model_inputs(model, pixels)).logits_per_image.float()
    except Exception as exc:  # noqa: BLE001 - the forward's own failure is the finding
        return f"no: {type(exc).__name__}"
    expected = (logits.sigmoid() if sigmoid_scores(model) else logits.softmax(-1))[0].numpy()
    gap = float(np.abs(np.asarray(exp.scores) - expected).max())
    return "ok" if gap < 1e-4 else f"no: differ by {gap:.1e}"


def zero_shot_rows() -> list[dict]:
    """One row per ``AutoModelForZeroShotImageClassification`` architecture, explained for ``PROMPTS``."""
    import tiny_archs as A

    import xai_recipes
    from xai_recipes.capture import module_names

    out = []
    for model_type in A.ZERO_SHOT_ARCHITECTURES:
        row = {"table": ZERO_SHOT, "model_type": model_type, "class": A.zero_shot_class(model_type).__name__,
               "recipe": "", "status": "", "layer": "", "task": "", "gradcam": {}, "default_method": "", "default": {},
               "attention_methods": [], "scores": "", "note": ""}
        out.append(row)
        if model_type in A.ZERO_SHOT_UNBUILDABLE:
            row.update(status="unbuildable here", note=A.ZERO_SHOT_UNBUILDABLE[model_type])
            continue
        model = A.tiny_zero_shot_model(model_type)
        try:
            recipe = xai_recipes.find_recipe(model)
        except xai_recipes.NoRecipeError as exc:
            reason = no_recipe_reason(exc)
            row.update(status="unsupported", note=f"{type(exc).__name__}: {reason}")
            continue
        try:
            task = xai_recipes.find_task(model, recipe, PROMPTS)
        except xai_recipes.TaskNotApplicableError as exc:
            why = xai_recipes.get_task(ZERO_SHOT).why_not(model, recipe, PROMPTS)
            row.update(status="unsupported", note=f"{type(exc).__name__} (recipe {recipe.name} found): {why}")
            continue
        derived = recipe.name.startswith("derived:")
        row.update(recipe=recipe.name, status="derived" if derived else "explicit", task=task.name,
                   layer=", ".join(module_names(model, recipe.target_layers(model))),
                   default_method=recipe.default_method,
                   attention_methods=[m for m in ATTENTION_METHODS
                                      if xai_recipes.get_method(m).why_not(model, recipe) is None])
        for h, w in A.ZERO_SHOT_SIZES[model_type]:
            processor = A.zero_shot_processor(model, h, w)
            size = f"{h}x{w}"
            row["gradcam"][size] = _check(model, processor, "gradcam", target=PROMPTS)
            row["default"][size] = (row["gradcam"][size] if recipe.default_method == "gradcam"
                                    else _check(model, processor, recipe.default_method, target=PROMPTS))
        row["scores"] = _forward_scores(model, recipe, A.zero_shot_processor(model, *A.ZERO_SHOT_SIZES[model_type][0]))
    return out


def object_rows(model_types: dict[str, list[str]] | None = None) -> list[dict]:
    """The object-detection, semantic-segmentation and universal-segmentation tables' rows
    (``model_types``: per table, only these architectures; default all)."""
    import tiny_object_archs as O

    tables = {DETECTION: O.DETECTION, SEGMENTATION: O.SEMANTIC, UNIVERSAL: O.UNIVERSAL_KIND}
    out = []
    for table, kind in tables.items():
        for model_type in O.MAPPINGS[kind]:
            if model_types is None or model_type in model_types.get(table, ()):
                out.append(object_row(table, kind, model_type))
    return out


def object_row(table: str, kind: str, model_type: str) -> dict:
    """One detector's or segmenter's row: its recipe, task, GradCAM's maps and the pipeline check."""
    import tiny_object_archs as O

    import xai_recipes
    from xai_recipes.capture import module_names

    row = {"table": table, "model_type": model_type, "class": O.model_class(kind, model_type).__name__, "recipe": "",
           "status": "", "layer": "", "task": "", "gradcam": "", "pipeline": "", "note": ""}
    if model_type in O.UNBUILDABLE[kind]:
        row.update(status="unbuildable here", note=O.UNBUILDABLE[kind][model_type])
        return row
    model = O.tiny_model(kind, model_type)
    unlike = f"{O.UNLIKE[kind][model_type]}; " if model_type in O.UNLIKE[kind] else ""
    try:
        recipe = xai_recipes.find_recipe(model)
    except xai_recipes.NoRecipeError as exc:
        row.update(status="not yet explained" if table == UNIVERSAL else "unsupported",
                   note=f"{unlike}{type(exc).__name__}: {no_recipe_reason(exc)}")
        return row
    derived = recipe.name.startswith("derived:")
    row.update(recipe=recipe.name, note=unlike)
    try:
        row["layer"] = ", ".join(module_names(model, recipe.target_layers(model) if recipe.target_layers else []))
    except Exception as exc:  # noqa: BLE001 - a recipe serving a model type whose other heads it does not know
        row["note"] += f"recipe {recipe.name}'s target_layers fail on {type(model).__name__} ({_first_line(exc)}); "
    try:
        row["task"] = xai_recipes.find_task(model, recipe).name
    except xai_recipes.TaskNotApplicableError as exc:
        why = "; ".join(f"{t}: {xai_recipes.get_task(t).why_not(model, recipe, None)}" for t in (DETECTION, SEGMENTATION))
        row.update(status="not yet explained" if table == UNIVERSAL else "unsupported",
                   note=row["note"] + f"{type(exc).__name__} (recipe {recipe.name} found): {why}")
        return row
    processor = O.processor(kind, model_type)
    options = {"threshold": 0.0} if row["task"] == DETECTION else {}
    try:
        exp = xai_recipes.explain(model, IMAGE, processor=processor, method="gradcam", top_k=2, **options)
    except Exception as exc:  # noqa: BLE001 - the engine's own failure (typed or not) is the finding
        row.update(status="failed", gradcam=f"no: {type(exc).__name__}", pipeline=_pipeline_alone(model, processor, row["task"]),
                   note=row["note"] + _where(exc))
        return row
    maps = exp.heatmaps
    ok = maps.shape[1:] == IMAGE.shape[:2] and np.isfinite(maps).all() and all(m.std() > 1e-3 for m in maps)
    row["gradcam"] = "ok" if ok else "no: constant or wrong shape"
    row["pipeline"] = _pipeline_check(model, processor, exp, row["task"])
    row.update(status=("derived" if derived else "explicit") if ok else "failed", note=row["note"].rstrip("; "))
    return row


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _where(exc: Exception) -> str:
    """The error's first line, where it was raised and the xai_recipes function that called into it."""
    import traceback

    def relative(path: str) -> str:  # the same on any checkout or virtual environment
        for mark in ("site-packages/", "/xai_recipes/", "/recipes/"):
            if mark in path:
                return (mark.lstrip("/") if mark != "site-packages/" else "") + path.rsplit(mark, 1)[-1]
        return path.rsplit("/", 1)[-1]

    frames = traceback.extract_tb(exc.__traceback__)
    short = [(relative(f.filename), f.name) for f in frames]
    ours = [s for s in short if s[0].startswith("xai_recipes/")]
    where = f"raised in {short[-1][0]} ({short[-1][1]})" if short else ""
    if ours and ours[-1] != short[-1]:
        where += f", called from {ours[-1][0]} ({ours[-1][1]})"
    return f"{_first_line(exc)} [{where}]" if where else _first_line(exc)


def _pipeline_alone(model, processor, task: str) -> str:
    """Whether the transformers pipeline itself runs on this model and processor (when explain() did not)."""
    from PIL import Image
    from transformers import pipeline

    try:
        if task == DETECTION:
            found = pipeline("object-detection", model=model, image_processor=processor)(Image.fromarray(IMAGE), threshold=0.0)
        else:
            found = pipeline("image-segmentation", model=model, image_processor=processor)(Image.fromarray(IMAGE),
                                                                                          subtask="semantic")
        return f"the pipeline alone runs ({len(found)} results)"
    except Exception as exc:  # noqa: BLE001 - the pipeline's own failure is the finding
        return f"no: the pipeline fails too ({type(exc).__name__})"


def _pipeline_check(model, processor, exp, task: str) -> str:
    """``"ok"`` if the explained detections are the pipeline's best (labels and scores within 1e-5) /
    the explained segments' labels are among the pipeline's, else how they differ."""
    from PIL import Image
    from transformers import pipeline

    picture = Image.fromarray(IMAGE)
    try:
        if task == DETECTION:
            found = pipeline("object-detection", model=model, image_processor=processor)(picture, threshold=0.0)
            found = sorted(found, key=lambda r: -r["score"])[: len(exp.labels)]
            labels, scores = [r["label"] for r in found], [r["score"] for r in found]
            if labels != exp.labels:
                return f"no: labels {exp.labels} vs the pipeline's {labels}"
            gap = float(np.abs(np.asarray(exp.scores) - np.asarray(scores)).max())
            return "ok" if gap < 1e-5 else f"no: scores differ by {gap:.1e}"
        found = pipeline("image-segmentation", model=model, image_processor=processor)(picture, subtask="semantic")
        labels = [r["label"] for r in found]
        return "ok" if exp.labels and set(exp.labels) <= set(labels) else f"no: {exp.labels} not among {labels}"
    except Exception as exc:  # noqa: BLE001 - the pipeline's own failure is the finding
        return f"no: the pipeline fails ({type(exc).__name__})"


def _cell(results: dict) -> str:
    return ", ".join(f"{size} {res}" for size, res in results.items()) or "–"


def _counts(table: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in table) for s in ("explicit", "derived", "unsupported", "unbuildable here")}
    return ", ".join(f"**{n}** {s}" for s, n in counts.items()) + "."


def markdown(rows: list[dict]) -> str:
    table = [r for r in rows if r["table"] == CLASSIFICATION]
    cell = _cell
    lines = [
        "# Coverage",
        "",
        f"Every image-classification architecture in transformers ({len(table)}), built from a tiny random",
        "config and explained with the recipe it dispatches to. *ok*: maps of the image's shape, finite,",
        "not constant. Generated by `python docs/gen_coverage.py`; checked by `tests/test_coverage.py`.",
        "",
        _counts(table),
        "",
        "*task*: what `explain(model, image)` explains (the registry's `find_task`); *default*: the recipe's",
        "default method (`explain(model, image)` without `method=`); *attention*: the attention methods that",
        "apply (the recipe declares or the probe found the attention probabilities).",
        "",
        "| architecture | class | status | recipe | target layer | task | GradCAM | DFF | default | attention | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"| {r['model_type']} | {r['class']} | {r['status']} | {r['recipe'] or '–'} | "
                     f"`{r['layer']}` | {r['task'] or '–'} | {cell(r['gradcam'])} | {cell(r['dff'])} | "
                     f"{r['default_method']}: {cell(r['default'])} | {', '.join(r['attention_methods']) or '–'} | "
                     f"{r['note'].replace('|', '/')} |"
                     if r["layer"] else
                     f"| {r['model_type']} | {r['class']} | {r['status']} | – | – | – | – | – | – | – | {r['note'].replace('|', '/')} |")
    zero_shot = [r for r in rows if r["table"] == ZERO_SHOT]
    lines += [
        "",
        "## Zero-shot image classification",
        "",
        f"Every zero-shot image-classification architecture in transformers ({len(zero_shot)}), built from a tiny",
        "random config (`AutoModelForZeroShotImageClassification.from_config`, shrunk vision and text towers)",
        f"and explained for the prompts {', '.join(repr(p) for p in PROMPTS)} (`explain(model, image, target=[...],",
        "processor=...)`, the task's default template) through an offline character-level tokenizer.",
        "*scores*: the explained prompt probabilities equal the model's own forward pass (`logits_per_image`,",
        "softmax, or SigLIP's sigmoid) on the same inputs, within 1e-4. *unsupported*: the engine's own typed",
        "error, as `explain()` raises it.",
        "",
        _counts(zero_shot),
        "",
        "| architecture | class | status | recipe | target layer | task | GradCAM | default | attention | scores | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in zero_shot:
        note = r["note"].replace("|", "/")
        lines.append(f"| {r['model_type']} | {r['class']} | {r['status']} | {r['recipe']} | `{r['layer']}` | {r['task']} | "
                     f"{cell(r['gradcam'])} | {r['default_method']}: {cell(r['default'])} | "
                     f"{', '.join(r['attention_methods']) or '–'} | {r['scores']} | {note} |"
                     if r["layer"] else
                     f"| {r['model_type']} | {r['class']} | {r['status']} | – | – | – | – | – | – | – | {note} |")
    lines += _object_tables(rows)
    return "\n".join(lines) + "\n"


OBJECT_TABLES = {
    DETECTION: ("Object detection", "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
                "`explain(model, image, processor=..., method=\"gradcam\", threshold=0.0, top_k=2)`: the two best "
                "detections. *pipeline*: their labels and scores equal the best two of `pipeline(\"object-detection\", "
                "model=m, image_processor=proc)(image, threshold=0.0)` (scores within 1e-5)."),
    SEGMENTATION: ("Semantic segmentation", "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
                   "`explain(model, image, processor=..., method=\"gradcam\", top_k=2)`: the two largest predicted "
                   "classes. *pipeline*: their labels are among `pipeline(\"image-segmentation\", model=m, "
                   "image_processor=proc)(image, subtask=\"semantic\")`'s."),
    UNIVERSAL: ("Universal segmentation", "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",
                "Mask-query segmenters (a class and a mask per query): explained as the semantic segmenters are "
                "wherever a recipe turns their outputs into per-pixel class scores (the semantic post-processing's)."),
}


def _object_tables(rows: list[dict]) -> list[str]:
    lines = [
        "", "## Detectors and segmenters", "",
        "Every architecture in transformers' object-detection, semantic-segmentation and universal-segmentation",
        "mappings, built from a tiny random config (`tests/tiny_object_archs.py`: small widths, 5 queries, tiny",
        "ResNet / HGNetV2 / ConvNeXt / Swin / ViT backbones, nothing pretrained) with its own image processor at",
        "about 64 px, and explained with GradCAM on a 70×90 image. *GradCAM*: every map of the image's shape,",
        "finite, not constant. *explicit* / *derived*: the recipe found (hand-written, or derived by probing the",
        "model: `xai_recipes/derive.py`) and GradCAM ok; *failed*: a recipe and a task found, but `explain()`",
        "raised (the note says where) or a map was constant; *unsupported* / *not yet explained*: the engine's",
        "own typed error, as `explain()` raises it.",
    ]
    for table, (title, mapping, how) in OBJECT_TABLES.items():
        part = [r for r in rows if r["table"] == table]
        counts = {s: sum(r["status"] == s for r in part)
                  for s in ("explicit", "derived", "failed", "unsupported", "not yet explained", "unbuildable here")}
        lines += [
            "", f"### {title}", "", f"`{mapping}` ({len(part)}). {how}", "",
            ", ".join(f"**{n}** {s}" for s, n in counts.items() if n or s in ("explicit", "derived")) + ".", "",
            "| architecture | class | status | recipe | target layer | task | GradCAM | pipeline | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in part:
            note = r["note"].replace("|", "/")
            lines.append(f"| {r['model_type']} | {r['class']} | {r['status']} | {r['recipe'] or '–'} | "
                         f"{'`' + r['layer'] + '`' if r['layer'] else '–'} | {r['task'] or '–'} | {r['gradcam'] or '–'} | "
                         f"{r['pipeline'] or '–'} | {note} |")
    return lines


def main() -> None:
    table = rows()
    (DOCS / "coverage.json").write_text(json.dumps({"rows": table}, indent=1) + "\n")
    (DOCS / "coverage.md").write_text(markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
