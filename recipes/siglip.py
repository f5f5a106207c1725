"""SigLIP and SigLIP 2 dual encoders (``google/siglip-base-patch16-224``, ``google/siglip2-base-patch16-naflex``).

The image embedding is the vision tower's attention-pooling head (a learned probe query attending
to every token after ``post_layernorm``; no CLS token): ``get_image_features``. The evidence is read
at ``post_layernorm``'s tokens, grid = input // patch size. SigLIP 2's NaFlex processor hands the
model patches: the image tensor and model inputs are the SigLIP 2 classifier recipe's. Both share
``model_type`` with their classifiers (``SiglipForImageClassification``, ...): ``matches`` picks the
dual encoders (a text tower and a pooling head).
Attention: every block's ``self_attn`` returns ``(output, probabilities)``; the **readout is the
probe query's attention** (``Attention.pool``, the head's ``MultiheadAttention``): the attention
methods read their row from it, rollout and gradient rollout weight the joint attention's rows by
it. LeGrad's per-block embedding: the block's tokens through the model's own ``post_layernorm``
and pooling head (scored against the prompt by the task).
"""

from xai_recipes import Attention, Recipe, hookimpl, tokens_to_map

from . import clip, siglip2


def tower(model):
    return model.vision_model


def grid(model, height: int, width: int) -> tuple[int, int]:
    patch = tower(model).config.patch_size
    return height // patch, width // patch


def dual_encoder(model) -> bool:
    return callable(getattr(model, "get_text_features", None)) and hasattr(tower(model), "head")


def embedding(output):
    return output if hasattr(output, "dim") else output.pooler_output


ATTENTION = Attention(
    modules=lambda m: [layer.self_attn for layer in tower(m).encoder.layers],
    prefix=lambda m: 0,
    readout=None,
    pool=lambda m: tower(m).head.attention,
    blocks=lambda m: list(tower(m).encoder.layers),
    embed=lambda m: lambda z: tower(m).head(tower(m).post_layernorm(z)),
)

SIGLIP = Recipe(
    name="siglip",
    model_types=("siglip",),
    matches=dual_encoder,
    target_layers=lambda m: [tower(m).post_layernorm],
    reshape=lambda x, m, hw: tokens_to_map(x, grid(m, *hw)),
    inputs=clip.inputs,  # pixel_values, interpolate_pos_encoding=True
    call=lambda m, kwargs: m.get_image_features(**kwargs),
    embedding=embedding,
    attention=ATTENTION,
    default_method="gradient-rollout",
    description="SigLIP: post_layernorm tokens (no CLS), probe-query readout; sigmoid prompt scores.",
)

SIGLIP2 = Recipe(
    name="siglip2-dual",
    model_types=("siglip2",),
    matches=dual_encoder,
    target_layers=lambda m: [tower(m).post_layernorm],
    reshape=lambda x, m, hw: tokens_to_map(x, grid(m, *hw)),
    image=siglip2.image,  # NaFlex patches ↔ image
    inputs=siglip2.inputs,
    call=lambda m, kwargs: m.get_image_features(**kwargs),
    embedding=embedding,
    attention=ATTENTION,
    default_method="gradient-rollout",
    description="SigLIP 2 dual encoder: NaFlex patches ↔ image, post_layernorm tokens, probe-query readout.",
)


@hookimpl
def register_recipes(register):
    register(SIGLIP)
    register(SIGLIP2)
