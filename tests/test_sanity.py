"""Model-parameter randomisation (Adebayo et al. 2018): maps that explain a model change with it.

Measured on the trained test models (held-out synthetic images, cascading from the head down):
ResNet GradCAM (8 images) -0.06 with the head randomised, -0.13 with every block (seed 0); over
seeds 0-4 the first step's mean correlation is 0.30 and the last step's 0.12 (never above 0.35).
The first step is one random draw of the head over maps read from a 4×4 feature grid, so it swings
from -0.2 to 0.7 with the seed: the cascade's trend is asserted on the mean over five seeds.
ViT gradient-rollout (4 images) 0.57 → 0.02 (seed 0); over seeds 0-4 from 0.57-0.81 to at most 0.12.
A map of the input alone (grey level) keeps a rank correlation of exactly 1 and is flagged.
"""

import json
import types

import numpy as np
import pytest
import torch
from synthetic import make_set

import xai_recipes
from xai_recipes import Method, Result, hookimpl, registry
from xai_recipes.sanity import SanityReport, candidate_blocks, cascade, parameter_randomisation

IMAGES = [s.image for s in make_set(seed=2024, n=8, sizes=[(72, 96), (96, 72), (80, 80), (76, 92)])]
GREY = "test-sanity-grey"


def grey_level(batch):
    """A map of the input alone (its grey level, in [0, 1]): the 'edge detector' of Adebayo et al."""
    model, recipe = batch.model, batch.recipe
    with torch.no_grad():
        logits = recipe.logits(model(**recipe.model_inputs(model, batch.pixel_values)))
    targets = batch.choose(logits)
    grey = batch.pixel_values.float().mean(1)
    lo = grey.amin(dim=(1, 2), keepdim=True)
    hi = grey.amax(dim=(1, 2), keepdim=True)
    grey = ((grey - lo) / (hi - lo).clamp_min(1e-8)).numpy()
    maps = np.stack([np.repeat(g[None], len(t), 0) for g, t in zip(grey, targets)])
    return Result(logits=logits, targets=targets, maps=maps)


@pytest.fixture
def grey_method(monkeypatch):
    """A registry with the built-ins plus a test-only method whose maps ignore the weights."""
    fresh = registry.Registry()
    fresh.load_entry_points()
    monkeypatch.setattr(registry, "_registry", fresh)
    plugin = types.SimpleNamespace(register_methods=hookimpl(
        lambda register: register(Method(name=GREY, run=grey_level, needs=(), description="grey level of the input"))))
    info = xai_recipes.register_plugin(plugin, name=GREY)
    assert info.error is None and GREY in xai_recipes.list_methods()
    return GREY


#: family → (method, images, seeds): one draw of ResNet's head alone swings from -0.2 to 0.7 (see above)
CASES = {"resnet": ("gradcam", 8, range(5)), "vit": ("gradient-rollout", 4, range(1))}
STEPS = {
    "resnet": ["classifier.1", "resnet.encoder.stages.1", "resnet.encoder.stages.0",
               "resnet.embedder.embedder.normalization", "resnet.embedder.embedder.convolution"],
    "vit": ["classifier", "vit.layernorm", "vit.layers.2", "vit.layers.1", "vit.layers.0",
            "vit.embeddings.patch_embeddings.projection", "vit.embeddings[cls_token, position_embeddings]"],
}


@pytest.mark.parametrize("family", CASES)
def test_class_specific_method_passes_and_correlation_falls(trained_dir, family):
    method, n, seeds = CASES[family]
    runs = [parameter_randomisation(trained_dir / family, IMAGES[:n], method=method, seed=s) for s in seeds]
    report = runs[0]
    assert isinstance(report, SanityReport) and report.method == method
    assert report.passed and report.reason is None
    assert report.correlation[-1] < report.threshold
    assert report.steps == STEPS[family]  # head first, blocks in forward order, the embeddings' own parameters last
    assert [b for step in report.blocks for b in step] == STEPS[family]
    assert len(report.correlation) == len(report.per_map) == len(report.steps)
    assert all(len(r) == n for r in report.per_map)  # one target per image (its top prediction)
    assert len(report.targets) == n and all(len(t) == 1 for t in report.targets)
    # the cascade's trend: averaged over a few randomisations where one draw of the head varies a lot
    first, last = np.mean([r.correlation[0] for r in runs]), np.mean([r.correlation[-1] for r in runs])
    assert last < first - 0.1, (first, last)
    text = str(report)
    assert "passed" in text and report.steps[-1] in text
    json.dumps(report.as_dict())


def test_steps_are_capped_and_evenly_spaced(trained_dir):
    assert cascade(5, None) == [1, 2, 3, 4, 5]
    assert cascade(30, None) == [1, 5, 9, 13, 18, 22, 26, 30]  # at most 8 steps by default
    assert cascade(5, 3) == [1, 3, 5] and cascade(5, 1) == [5] and cascade(3, 10) == [1, 2, 3]
    report = parameter_randomisation(trained_dir / "resnet", IMAGES[:2], method="gradcam", layers=2)
    assert report.steps == ["classifier.1", "resnet.embedder.embedder.convolution"]
    assert sum(len(b) for b in report.blocks) == 5  # every block randomised by the last step
    with pytest.raises(xai_recipes.XAIRecipesError, match="layers must be a positive integer"):
        parameter_randomisation(trained_dir / "resnet", IMAGES[:1], layers=0)


def test_method_that_ignores_the_weights_is_flagged(trained_dir, grey_method):
    report = parameter_randomisation(trained_dir / "resnet", IMAGES[:4], method=grey_method, layers=3)
    assert not report.passed
    assert report.correlation == pytest.approx([1.0, 1.0, 1.0])
    assert report.reason.startswith(
        "maps barely change when the model's weights are randomised (rank correlation 1.000 at the last step)")
    assert report.reason.endswith("they do not explain this model")
    assert "FAILED" in str(report) and report.reason in str(report)


def test_users_model_is_left_unchanged(trained_dir):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(trained_dir / "resnet").eval()
    processor = AutoImageProcessor.from_pretrained(trained_dir / "resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = {n: m.training for n, m in model.named_modules()}
    rng = torch.random.get_rng_state()
    report = parameter_randomisation(model, IMAGES[:2], method="gradcam", processor=processor, layers=3)
    assert report.passed
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert training == {n: m.training for n, m in model.named_modules()}
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    assert torch.equal(rng, torch.random.get_rng_state())  # the seed was set on a forked RNG
    # the same blocks exist on the user's model: they were randomised on a copy
    assert [b.name for b in candidate_blocks(model)][-1] == "classifier.1"
