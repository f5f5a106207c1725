"""xai-recipes: explain any Hugging Face image classifier with one call.

    >>> from xai_recipes import explain
    >>> explanation = explain("microsoft/resnet-50", "cat.jpg", target=["tabby", "remote control"])
    >>> explanation.save("cat-gradcam.png")
"""

from .cam import ALL_METHODS, METHODS
from .describe import Description, describe
from .engine import explain
from .errors import (
    DatasetError,
    GeometryError,
    ImageError,
    ImageSkippedWarning,
    ModelLoadError,
    NoRecipeError,
    NotAnImageClassifierError,
    RecipeError,
    TargetIndexError,
    UnknownLabelError,
    UnknownMethodError,
    XAIRecipesError,
)
from .explanation import Explanation, load
from .gam import DinoGAMConfig, DinoGAMForImageClassification, gam_from_head
from .gam_fit import FitReport, fit_gam, gam_from_sklearn
from .hookspecs import hookimpl
from .recipe import Recipe, conv_out, halvings, infer_grid, output_logits, tokens_to_map
from .registry import find_recipe, get_recipe, list_recipes, plugins, recipes, register_plugin
from .timm_models import wrap_timm_model

__all__ = [
    "METHODS", "ALL_METHODS", "Explanation", "Recipe", "explain", "load", "describe", "Description", "fit_gam", "gam_from_sklearn", "gam_from_head", "FitReport",
    "DinoGAMConfig", "DinoGAMForImageClassification", "DatasetError", "wrap_timm_model", "ImageSkippedWarning", "hookimpl", "conv_out", "halvings", "output_logits",
    "tokens_to_map", "infer_grid", "find_recipe", "get_recipe", "list_recipes", "plugins", "recipes", "register_plugin",
    "XAIRecipesError", "NoRecipeError", "NotAnImageClassifierError", "ModelLoadError", "ImageError",
    "UnknownLabelError", "TargetIndexError", "UnknownMethodError", "RecipeError", "GeometryError",
]
