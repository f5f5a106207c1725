"""DeiT recipes for xai-recipes (``config.model_type == "deit"``), a third-party plugin.

DeiT is a ViT with a second prefix token: after the CLS token comes a *distillation* token,
so the last block reads ``B×(2 + h·w)×C`` tokens. transformers 5 keeps the blocks in
``model.deit.layers`` (there is no ``deit.encoder.layer`` any more).

* Target layer: the last block's ``layernorm_before``. The classifier reads only the prefix
  tokens of the *final* layer, so the final layer's patch tokens get no gradient; the input of
  the last block's attention holds the patch tokens those prefix tokens attend to.
* Reshape: drop the 2 prefix tokens; the grid is what the patch embedding (a convolution with
  kernel = stride = patch size) makes of the *actual* input size, so any size works.
* ``interpolate_pos_encoding=True``: both DeiT classifiers accept it, and it lets them take
  inputs other than ``config.image_size`` (non-square ones too).
* Head (for Deep Feature Factorization):

  - ``DeiTForImageClassification``: ``classifier(deit.layernorm(tokens)[:, 0])`` — the CLS
    token of the final norm through one linear layer. Declared exactly: recipe ``deit``.
  - ``DeiTForImageClassificationWithTeacher`` (the ``facebook/deit-*-distilled-*``
    checkpoints): ``(cls_classifier(t[:, 0]) + distillation_classifier(t[:, 1])) / 2``. The
    logits depend on *two* different tokens, and a recipe's head maps *one* pooled feature
    vector to logits, so no head reproduces them: recipe ``deit_distilled`` declares none
    (``head=None``), and DFF refuses it with a clear error instead of naming concepts with a
    head the model does not have. The CAM methods need no head and work on both models.

Dispatch: both recipes serve ``model_type == "deit"``. ``deit`` has a ``matches`` function
(the model has a single ``classifier``) and therefore wins whenever it accepts; the plain
``deit_distilled`` takes every other DeiT classifier, the teacher model among them.

Note: the non-distilled ``facebook/deit-*-patch16-224`` checkpoints are saved as
``ViTForImageClassification`` (``model_type == "vit"``) and are served by the built-in ``vit``
recipe, not by this plugin.
"""

from torch import nn

from xai_recipes import Recipe, conv_out, hookimpl, tokens_to_map

__version__ = "0.1.0"

PREFIX_TOKENS = 2  # CLS + distillation


def grid(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The patch grid for an input of ``height × width``, from the patch embedding itself."""
    proj = model.deit.embeddings.patch_embeddings.projection  # Conv2d, kernel = stride = patch size
    return tuple(
        conv_out(size, proj.kernel_size[i], proj.stride[i], proj.padding[i]) for i, size in enumerate((height, width))
    )


def reshape(tokens, model, hw):
    """``B×(2 + h·w)×C`` tokens → ``B×C×h×w``."""
    return tokens_to_map(tokens, grid(model, *hw), prefix=PREFIX_TOKENS)


def has_single_classifier(model: nn.Module) -> bool:
    """``DeiTForImageClassification``: one linear classifier on the CLS token."""
    return isinstance(getattr(model, "classifier", None), nn.Linear)


COMMON = dict(
    model_types=("deit",),
    target_layers=lambda m: [m.deit.layers[-1].layernorm_before],
    reshape=reshape,
    forward_kwargs={"interpolate_pos_encoding": True},
)

DEIT = Recipe(
    name="deit",
    head=lambda m: m.classifier,
    feature_layer=lambda m: m.deit.layernorm,  # final norm; the classifier reads its CLS token
    pooling="cls",
    matches=has_single_classifier,
    description="DeiT: last block's layernorm_before, CLS + distillation tokens dropped, grid from the patch embedding.",
    **COMMON,
)

DEIT_DISTILLED = Recipe(
    name="deit_distilled",
    # head=None: the logits average two heads on two different tokens (CLS, distillation); no
    # single pooled feature reproduces them, so Deep Feature Factorization is not offered.
    description="DeiT with teacher (distilled) head: as 'deit', without a DFF head (logits average two tokens' heads).",
    **COMMON,
)


@hookimpl
def register_recipes(register):
    register(DEIT)
    register(DEIT_DISTILLED)
