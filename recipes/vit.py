"""ViT (``google/vit-base-patch16-224``): explained at the last block's first layernorm.

ViT classifies from the CLS token of the final layer, so the final layer's patch tokens get no
gradient. The last block's ``layernorm_before`` output holds the patch tokens the CLS token
attends to in that block: that is where the evidence is read. (The tutorial's
``vit.encoder.layer[-2].output`` no longer exists: transformers 5 names the blocks
``vit.layers``.) Tokens are ``B×(1 + h·w)×C``: drop CLS, grid = input size // patch size,
and ``interpolate_pos_encoding=True`` lets the model take any input size. For Deep Feature
Factorization the concepts come from the final ``vit.layernorm`` tokens, the ones the classifier reads.
"""

from xai_recipes import Attention, Recipe, hookimpl, tokens_to_map


def grid(config, height: int, width: int) -> tuple[int, int]:
    return height // config.patch_size, width // config.patch_size


RECIPE = Recipe(
    name="vit",
    model_types=("vit",),
    target_layers=lambda m: [m.vit.layers[-1].layernorm_before],
    reshape=lambda x, m, hw: tokens_to_map(x, grid(m.config, *hw), prefix=1),
    head=lambda m: m.classifier,
    feature_layer=lambda m: m.vit.layernorm,  # final norm, read by the classifier (DFF)
    pooling="cls",
    forward_kwargs={"interpolate_pos_encoding": True},
    # every block's attention (output, probabilities): CLS first, read by the classifier after the final norm
    attention=Attention(
        modules=lambda m: [layer.attention for layer in m.vit.layers],
        prefix=lambda m: 1,
        readout=(0,),
        blocks=lambda m: list(m.vit.layers),
        score=lambda m: lambda z: m.classifier(m.vit.layernorm(z)[:, 0]),
    ),
    default_method="gradient-rollout",  # localisation on the trained test model: 0.70 (GradCAM 0.50), see tests
    description="ViT: last block's layernorm_before, CLS token dropped, grid = input // patch_size.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
