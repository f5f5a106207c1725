"""The resolution-aware default layer of hierarchical models (xai_recipes.layers).

The rule: the CAM methods read the deepest stage whose grid is at least 7 on its short side at
the actual input size. Checked three ways: the rule itself; the tutorial's layer is kept on the
standard configs at 224 px (and the stage before it taken at 128 px); and on trained three-stage
test models (tests/tiny.py STRIDE16, last stage 4×4 at 64 px like a four-stage model at 128 px)
the chosen stage (8×8) puts GradCAM's peak on the object more often than the last stage does.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as T
from test_localisation import HELD_OUT, peak_in_box
from tiny import STRIDE16

import xai_recipes
from xai_recipes import describe, explain
from xai_recipes.capture import module_names
from xai_recipes.layers import MIN_GRID, choose
from xai_recipes.loading import load


def test_the_rule_takes_the_deepest_stage_whose_grid_is_at_least_seven():
    assert MIN_GRID == 7
    assert choose([(56, 56), (28, 28), (14, 14), (7, 7)]) == 3  # 224 px: the last stage, as the tutorial
    assert choose([(32, 32), (16, 16), (8, 8), (4, 4)]) == 2  # 128 px: the one before it
    assert choose([(16, 24), (8, 12), (4, 6)]) == 1  # the short side counts
    assert choose([(6, 6), (3, 3)]) == 0  # none reaches 7: the finest
    assert choose([(8, 8), (8, 8), (4, 4)]) == 1  # equal grids: the deeper


#: Standard (published-size) configs and their input size. (HF Swin in transformers 5 runs only at its
#: config's size when a stage would need padding to its 7-token windows — 112, 128, 256 px all fail inside
#: its attention — so Swin's step back is checked on the trained three-stage model below.)
STANDARD = {
    "resnet": (T.ResNetConfig, 224), "convnext": (T.ConvNextConfig, 224), "swin": (T.SwinConfig, 224),
    "segformer": (T.SegformerConfig, 224), "regnet": (T.RegNetConfig, 224), "mobilevit": (T.MobileViTConfig, 256),
    "pvt_v2": (T.PvtV2Config, 224), "poolformer": (T.PoolFormerConfig, 224),
}


@pytest.mark.parametrize("family", STANDARD)
def test_standard_configs_keep_the_tutorial_layer_at_their_size_and_step_back_at_half(family):
    config, size = STANDARD[family]
    torch.manual_seed(0)
    model = T.AutoModelForImageClassification.from_config(config(num_labels=3)).eval()
    recipe = xai_recipes.find_recipe(model)
    assert recipe.stages is not None, f"{family}: the recipe declares no stages"
    stages = module_names(model, recipe.stages(model))
    tutorial = module_names(model, recipe.target_layers(model))
    assert stages[-1:] == tutorial
    full = describe(model, input_size=size)
    assert full.target_layers == tutorial, full.layer_choice
    assert "7×7" in full.layer_choice or "8×8" in full.layer_choice
    if family == "swin":
        return
    half = describe(model, input_size=size // 2)
    assert half.target_layers != tutorial and half.target_layers[0] in stages[:-1], half.layer_choice
    assert f"stage {stages.index(half.target_layers[0]) + 1} of {len(stages)}" in half.layer_choice


def test_explanation_names_the_stage_it_used(trained_dir):
    sample = HELD_OUT[0]
    exp = explain(trained_dir / "swin_s16", sample.image, target=sample.label)
    assert exp.target_layers == ["swin.encoder.layers.1.blocks.1.layernorm_before"]  # 8×8, not the 4×4 last stage
    dff = explain(trained_dir / "swin_s16", sample.image, method="dff", n_components=2)
    assert dff.target_layers == ["swin.layernorm"]  # DFF keeps the layer the head pools, whatever the input size


def gradcam_hits(model, processor, recipe) -> tuple[float, float]:
    """(share of GradCAM peaks on the object, model accuracy) on HELD_OUT."""
    hits = correct = 0
    for sample in HELD_OUT:
        exp = explain(model, sample.image, target=sample.label, processor=processor, recipe=recipe, method="gradcam")
        hits += peak_in_box(exp.heatmaps[0], sample.box)
        correct += exp.predictions[0][0] == sample.label
    return hits / len(HELD_OUT), correct / len(HELD_OUT)


#: Measured on the trained three-stage models (share of GradCAM peaks on the object, 60 held-out
#: images), last stage (4×4) → chosen stage (8×8): SegFormer 0.03 → 0.43, PVT-v2 0.13 → 0.52, Swin
#: 0.27 → 0.43, PoolFormer 0.53 → 0.68 (right at the +0.15 criterion), ConvNeXt below. (The three-stage
#: SegFormer trains at lr 5e-4; at 2e-3 it stayed at chance.)
NOT_BETTER = {
    "convnext_s16": "last stage 0.25 → chosen 0.35 (+0.10): ConvNeXt's 7×7 depthwise convs span the whole 8×8 grid, so "
                    "its stride-8 stage already mixes globally; the 16×16 stage reaches 0.48, below the 7-cell rule",
}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=NOT_BETTER[f]))
                                    if f in NOT_BETTER else f for f in STRIDE16])
def test_chosen_stage_localises_better_than_the_last_stage(family, trained_dir):
    model, processor = load(trained_dir / family)
    recipe = xai_recipes.find_recipe(model)
    last, accuracy = gradcam_hits(model, processor, dataclasses.replace(recipe, stages=None))
    assert accuracy >= 0.9, f"{family}: the trained model itself is wrong ({accuracy:.2f})"
    chosen = gradcam_hits(model, processor, recipe)[0]
    assert chosen >= last + 0.15 or chosen >= 0.8, f"{family}: chosen stage {chosen:.2f}, last stage {last:.2f}"
