"""YOLOS (``hustvl/yolos-small``, ``hustvl/yolos-tiny``): a plain ViT that detects, explained per detection.

YOLOS appends ``config.num_detection_tokens`` learned detection tokens (100) *after* the patch
tokens: the sequence is ``[CLS] + h·w patches + [DET]×n``, and the class and box heads read only
the detection tokens of the final layer, as a ViT classifier reads its CLS token. So, as for ViT,
the final layer's patch tokens get no gradient; the last block's ``layernorm_before`` holds the
patch tokens the detection tokens attend to in that block: where the evidence is read. Its tokens
are reshaped to the patch grid after dropping the CLS token in front and the detection tokens at
the end; the grid is input // patch size (the patch embedding is a stride-``patch_size``
convolution), and YOLOS interpolates its position embeddings to any input size by itself.

Scores: softmax over the classes and "no object", as DETR (the ``object-detection`` task explains
each detection by its detection token's class logit).
"""

from xai_recipes import Recipe, hookimpl, tokens_to_map


def grid(config, height: int, width: int) -> tuple[int, int]:
    return height // config.patch_size, width // config.patch_size


def patches(tokens, model, hw):
    """``B×(1 + h·w + n_det)×C`` → ``B×C×h×w``: CLS in front and the detection tokens at the end dropped."""
    return tokens_to_map(tokens[:, : tokens.shape[1] - model.config.num_detection_tokens], grid(model.config, *hw), prefix=1)


RECIPE = Recipe(
    name="yolos",
    model_types=("yolos",),
    target_layers=lambda m: [m.vit.encoder.layer[-1].layernorm_before],
    reshape=patches,
    description="YOLOS: last block's layernorm_before, CLS and trailing detection tokens dropped, grid = input // patch.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
