"""A classifier no recipe can be derived for: its head reads the flattened pixels through an MLP.

No layer outputs a spatial map, so ``xai_recipes.derive`` finds nothing and the generic recipe
(logits wrapper only) explains it with input attributions. Importing this module registers the
``pixel_mlp`` model type with transformers' Auto classes, so ``explain("tests/trained/pixel_mlp")``
loads it like any saved classifier (no remote code).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput


class PixelMLPConfig(PretrainedConfig):
    model_type = "pixel_mlp"

    def __init__(self, image_size: int = 64, num_channels: int = 3, hidden_sizes: tuple[int, ...] = (256, 64), **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.num_channels, self.hidden_sizes = image_size, num_channels, list(hidden_sizes)


class PixelMLPForImageClassification(PreTrainedModel):
    config_class = PixelMLPConfig
    main_input_name = "pixel_values"

    def __init__(self, config: PixelMLPConfig) -> None:
        super().__init__(config)
        layers: list[nn.Module] = [nn.Flatten()]
        width = config.num_channels * config.image_size ** 2
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> ImageClassifierOutput:
        logits = self.classifier(self.mlp(pixel_values))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


AutoConfig.register("pixel_mlp", PixelMLPConfig, exist_ok=True)
AutoModelForImageClassification.register(PixelMLPConfig, PixelMLPForImageClassification, exist_ok=True)
