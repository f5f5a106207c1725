"""timm models saved as Hugging Face folders (``TimmWrapperForImageClassification``).

The wrapper holds a timm model in ``model.timm_model``. For timm CNNs the last feature map
before global pooling is produced by a known module: ``bn2`` (EfficientNet, MobileNet —
BatchNorm + activation after the head conv), ``layer4`` (ResNet), ``stages[-1]`` (ConvNeXt,
RegNet, ...). The head (for Deep Feature Factorization) is timm's ``forward_head`` — pooling,
any norm (ConvNeXt's), classifier — applied to the pooled features.
"""

from xai_recipes import Recipe, RecipeError, hookimpl

FEATURE_MODULES = ("bn2", "layer4", "stages")


def feature_module(timm_model):
    for name in FEATURE_MODULES:
        module = getattr(timm_model, name, None)
        if module is not None:
            return module[-1] if name == "stages" else module
    raise RecipeError(
        f"timm architecture {type(timm_model).__name__} has none of the feature modules "
        f"{FEATURE_MODULES}; pass recipe= or write a recipe plugin for it"
    )


def pooled_head(timm_model):
    """timm's own head on pooled features (``N×C``), as a 1×1 map: pooling is then the identity
    and whatever the head applies before its classifier (ConvNeXt's norm) is kept."""
    return lambda pooled: timm_model.forward_head(pooled[:, :, None, None])


RECIPE = Recipe(
    name="timm_wrapper",
    model_types=("timm_wrapper",),
    target_layers=lambda m: [feature_module(m.timm_model)],
    head=lambda m: pooled_head(m.timm_model),
    pooling="mean",
    matches=lambda m: any(hasattr(m.timm_model, n) for n in FEATURE_MODULES),
    description="timm CNNs in HF folders: last feature map before global pooling (bn2 / layer4 / stages[-1]).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
