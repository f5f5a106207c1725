"""Deep Feature Factorization: a layer's activations split into concepts, each named by the model.

Non-negative matrix factorisation (grad-cam's ``dff``) splits the recipe's feature layer — the
one the model pools into its classifier — into ``n_components`` concepts: a map per concept and
an embedding per concept. Each embedding goes through the recipe's ``head``, i.e. the model's own
classifier *with* whatever norm it applies first (ConvNeXt's and CvT's layernorm), so every
concept is labelled with the classes the model itself would read from it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..capture import Capture, LogitsModel, as_maps, forward_with_capture
from ..errors import RecipeError
from ..hookspecs import hookimpl
from ..method import Batch, Method, Result
from ..recipe import Recipe


@dataclass
class Concepts:
    """One image's factorisation: ``maps`` K×h×w in [0, 1] on the model input, ``probs`` K×labels."""

    maps: np.ndarray
    probs: np.ndarray


def factorize(
    model: nn.Module, recipe: Recipe, pixel_values: torch.Tensor, n_components: int
) -> tuple[Capture, list[Concepts]]:
    """Forward the batch once; factorise each image's feature-layer activations separately."""
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff
    from pytorch_grad_cam.utils.image import scale_cam_image
    from sklearn.exceptions import ConvergenceWarning

    if recipe.head is None:
        raise RecipeError(f"recipe {recipe.name!r} declares no head; Deep Feature Factorization needs the "
                          "model's classifier (and any norm before it) as the recipe's head")
    capture = forward_with_capture(LogitsModel(model, recipe), [recipe.features(model)], pixel_values)
    input_hw = tuple(pixel_values.shape[-2:])
    maps = as_maps(recipe, model, capture.activations[0].detach(), input_hw).float().cpu().numpy()
    if n_components > maps.shape[1]:
        raise RecipeError(f"n_components={n_components} exceeds the feature layer's {maps.shape[1]} channels")
    head, param = recipe.head(model), next(model.parameters())
    out = []
    for image_maps in maps:
        with warnings.catch_warnings():  # NMF's iteration cap: the factorisation is still usable
            warnings.simplefilter("ignore", ConvergenceWarning)
            embeddings, explanations = dff(image_maps[None].copy(), n_components=n_components)
        with torch.no_grad():
            logits = head(torch.from_numpy(embeddings.T.astype(np.float32)).to(param.device, param.dtype))
        probs = logits.float().softmax(-1).cpu().numpy()
        out.append(Concepts(scale_cam_image(explanations[0], (input_hw[1], input_hw[0])), probs))
    return capture, out


def run(batch: Batch) -> Result:
    """One map per concept, each concept named by its top classes through the model's head."""
    capture, concepts = factorize(batch.model, batch.recipe, batch.pixel_values, batch.options["n_components"])
    id2label = {int(k): v for k, v in batch.model.config.id2label.items()}
    k = min(batch.top_k, len(id2label))
    return Result(
        logits=capture.logits.detach(),
        targets=[c.probs.argmax(-1).tolist() for c in concepts],
        maps=[c.maps for c in concepts],
        layers=capture.layers,
        scores=[c.probs.max(-1).tolist() for c in concepts],
        legend=[[[(int(i), id2label[int(i)], float(row[i])) for i in np.argsort(-row)[:k]] for row in c.probs]
                for c in concepts],
    )


METHOD = Method(
    name="dff", run=run, needs=("head",), takes_target=False, options={"n_components": 5},
    description="Deep Feature Factorization: the feature layer split into concepts (NMF), each named by the model's head",
    reference="Collins et al. 2018; grad-cam's dff",
)


@hookimpl
def register_methods(register):
    register(METHOD)
