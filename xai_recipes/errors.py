"""Typed errors. Each message says what is wrong and what to do about it."""

from __future__ import annotations


class XAIRecipesError(Exception):
    """Base class of every error raised on purpose by xai_recipes."""


class NoRecipeError(XAIRecipesError, LookupError):
    """No registered recipe serves this model (or the named recipe does not exist)."""


class NotAnImageClassifierError(XAIRecipesError, TypeError):
    """The model is not an image classifier with a trained classification head."""


class ModelLoadError(XAIRecipesError, OSError):
    """The model or its image processor could not be loaded safely."""


class ImageError(XAIRecipesError, ValueError):
    """The image cannot be decoded, is empty, or is too large."""


class UnknownLabelError(XAIRecipesError, ValueError):
    """A target label is not in the model's ``id2label`` (or names several classes)."""


class TargetIndexError(XAIRecipesError, IndexError):
    """A target class index is outside ``0 .. num_labels - 1``."""


class UnknownMethodError(XAIRecipesError, ValueError):
    """The explanation method is not one xai_recipes provides."""


class RecipeError(XAIRecipesError, RuntimeError):
    """A recipe does not fit the model it was applied to (layer missing, token grid mismatch...)."""


class MethodNotApplicableError(RecipeError):
    """The method cannot explain this model (e.g. rollout on window attention); the message says
    why and which methods apply instead."""


class MissingExtraError(MethodNotApplicableError, ImportError):
    """The method needs an optional dependency that is not installed; the message names the extra
    to install (e.g. ``pip install "xai-recipes[captum]"``)."""


class GeometryError(XAIRecipesError, RuntimeError):
    """The image processor's resize/crop cannot be mapped back to the original image."""


class DatasetError(XAIRecipesError, ValueError):
    """A data folder cannot be used (e.g. fewer than two classes with images)."""


class ModelOutputError(XAIRecipesError, ArithmeticError):
    """The model gave non-finite logits or maps (NaN/inf): corrupt weights, not a heatmap to show."""


class ExplanationFileError(XAIRecipesError, ValueError):
    """A saved explanation (``.npz`` + ``.json``) is damaged, foreign or holds something unsafe."""


class ImageSkippedWarning(UserWarning):
    """An image of a batch could not be explained and was skipped (the rest go on)."""


class UnknownTaskError(XAIRecipesError, ValueError):
    """The task is not one a registered plugin provides."""


class TaskNotApplicableError(NotAnImageClassifierError):
    """No registered task (or not the named one) can explain this model for this target: a text
    prompt for a model without a text tower, an image target for a classifier, ..."""


class PromptError(XAIRecipesError, ValueError):
    """A text prompt (or the candidate labels) cannot be used: empty, too long, not text."""


class NoDetectionError(XAIRecipesError, LookupError):
    """Nothing to explain: no detection (or none of the asked label) above the threshold, no predicted
    region of the asked class, or no detection overlapping the asked box."""


class RegionError(XAIRecipesError, ValueError):
    """A box or region mask the user gave cannot be used: outside the image, ``x1 <= x0``, the wrong
    size, empty."""
