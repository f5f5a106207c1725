"""xai-recipes: explain Hugging Face vision models (classifiers, CLIP / SigLIP, backbones) with one call.

    >>> from xai_recipes import explain
    >>> explanation = explain("microsoft/resnet-50", "cat.jpg", target=["tabby", "remote control"])
    >>> explanation.save("cat-gradcam.png")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    DatasetError,
    ExplanationFileError,
    GeometryError,
    ImageError,
    ImageSkippedWarning,
    MethodNotApplicableError,
    ModelOutputError,
    ModelLoadError,
    NoDetectionError,
    NoRecipeError,
    NotAnImageClassifierError,
    PromptError,
    RecipeError,
    RegionError,
    TaskNotApplicableError,
    TargetIndexError,
    UnknownLabelError,
    UnknownMethodError,
    UnknownTaskError,
    XAIRecipesError,
)
from .hookspecs import hookimpl
from .method import Batch, Method, Result
from .recipe import Attention, Queries, Recipe, conv_out, halvings, infer_grid, output_logits, stage_grid, tokens_to_map
from .task import Bound, Call, Region, Task
from .targets import resolve_targets
from .registry import (
    find_recipe,
    find_task,
    get_task,
    tasks_table,
    get_method,
    get_recipe,
    list_methods,
    list_recipes,
    methods_table,
    plugins,
    recipes,
    register_plugin,
)

#: Imported on first use: grad-cam (and through it torchvision, scikit-learn) and transformers'
#: model classes take seconds to import, which plugins, ``xai-recipes list`` and ``plugins`` never need.
_LAZY = {
    "Description": "description", "describe": "description", "explain": "engine",
    "Explanation": "explanation", "load": "explanation", "DinoGAMConfig": "gam", "DinoGAMForImageClassification": "gam",
    "gam_from_head": "gam", "FitReport": "gam_fit", "fit_gam": "gam_fit", "gam_from_sklearn": "gam_fit",
    "wrap_timm_model": "timm_models", "LogitsModel": "capture", "forward_with_capture": "capture",
    "target_grads": "capture", "evaluate": "evaluation", "Annotated": "evaluation", "Evaluation": "evaluation",
    "load_annotations": "evaluation", "parameter_randomisation": "sanity", "SanityReport": "sanity",
    "audit": "audit", "Audit": "audit", "to_dataset": "hfdata",
}

if TYPE_CHECKING:
    from .capture import LogitsModel, forward_with_capture, target_grads
    from .evaluation import Annotated, Evaluation, evaluate, load_annotations
    from .sanity import SanityReport, parameter_randomisation
    from .audit import Audit, audit
    from .hfdata import to_dataset
    from .description import Description, describe
    from .engine import explain
    from .explanation import Explanation, load
    from .gam import DinoGAMConfig, DinoGAMForImageClassification, gam_from_head
    from .gam_fit import FitReport, fit_gam, gam_from_sklearn
    from .timm_models import wrap_timm_model


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'xai_recipes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Method", "Batch", "Result", "Attention", "Queries", "get_method", "list_methods", "methods_table", "LogitsModel",
    "forward_with_capture", "target_grads", "MethodNotApplicableError", "evaluate", "Annotated", "Evaluation",
    "load_annotations", "parameter_randomisation", "SanityReport", "audit", "Audit", "to_dataset", "Explanation", "Recipe", "explain", "load", "describe", "Description", "fit_gam", "gam_from_sklearn", "gam_from_head", "FitReport",
    "DinoGAMConfig", "DinoGAMForImageClassification", "DatasetError", "wrap_timm_model", "ImageSkippedWarning", "hookimpl", "conv_out", "halvings", "output_logits",
    "tokens_to_map", "stage_grid", "infer_grid", "find_recipe", "get_recipe", "list_recipes", "plugins", "recipes", "register_plugin",
    "XAIRecipesError", "ExplanationFileError", "ModelOutputError", "NoRecipeError", "NotAnImageClassifierError", "ModelLoadError", "ImageError",
    "UnknownLabelError", "TargetIndexError", "UnknownMethodError", "RecipeError", "GeometryError",
    "Task", "Bound", "Call", "find_task", "get_task", "tasks_table", "resolve_targets", "PromptError",
    "TaskNotApplicableError", "UnknownTaskError", "Region", "NoDetectionError", "RegionError",
]
