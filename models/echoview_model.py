"""PyTorch definition of echoview's view classifier.

The classifier is split in two networks because the daemon runs them at different rates:

* the *encoder* (EfficientNet-b2 on one greyscale frame) runs once per gated frame, as soon
  as the frame is picked, so its cost is spread over the heartbeat;
* the *head* runs once per heartbeat on the T encoder feature vectors of that beat and
  produces the 11 view logits plus the weight ``alpha`` of its spatial branch.

Exporting them as two ONNX graphs (see ``export.py``) lets the Rust side cache per-frame
features instead of re-running the encoder on a whole clip.

::

    frame k (1 x H x W, normalised grey)            k = 0 .. T-1
        |
        v
    EfficientNet-b2 features -> global average pool -> f_k  (D = 1408)     [encoder.onnx]
        |
        v  stack over the beat: F = [f_0 .. f_{T-1}]  (T x D)
    +-----------------------------+----------------------------+---------------------+
    | temporal branch             | spatial branch             | dynamic weighting   |
    | 1x1 conv D -> W, BN, GELU   | per-frame linear D -> 11   | mean over T -> D    |
    | 4 residual dilated blocks   | mean over T                | MLP D -> 32 -> 1    |
    |   (k=3, dilation 1,2,4,8)   |                            | sigmoid -> alpha    |
    | mean over T, linear W -> 11 |                            |                     |
    +-------------+---------------+-------------+--------------+----------+----------+
                  | temporal                    | spatial                 | alpha
                  v                             v                         v
         logits = alpha * spatial + (1 - alpha) * temporal                  [head.onnx]

Nothing in this module downloads anything: torchvision's constructor is always called with
``weights=None`` and ImageNet weights, when wanted, come from a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import efficientnet_b2
from torchvision.models.efficientnet import MBConv

#: The 11 transthoracic views in echoview's canonical order (``View::ALL`` in
#: ``src/views.rs``); the head's logits follow this order.
VIEW_LABELS: tuple[str, ...] = (
    "PLAX",
    "PSAX-ves",
    "PSAX-base",
    "PSAX-mid",
    "PSAX-apical",
    "A2C",
    "A3C",
    "A4C",
    "A5C",
    "Suprasternal",
    "Subcostal",
)

#: Width of EfficientNet-b2's last feature map, hence of one frame's feature vector.
FEATURE_DIM: int = 1408

#: Frames per heartbeat the head is built for; the daemon gates this many cardiac phases.
DEFAULT_FRAMES_PER_BEAT: int = 8


class GreyEfficientNetB2Encoder(nn.Module):
    """EfficientNet-b2 trunk for one greyscale frame: ``[N, 1, H, W] -> [N, 1408]``.

    torchvision's network expects RGB, but B-mode ultrasound is single-channel; replacing the
    stem convolution by a 1-channel one avoids tripling the first layer's input for nothing.
    The ImageNet classifier is dropped: the head does the classification.

    ``residual_branch_gamma`` scales, at initialisation, the last BatchNorm of every residual
    MBConv block (the "zero-init residual" idea of large-batch training recipes, softened).
    With torchvision's default of 1, a randomly initialised b2 is numerically chaotic: float32
    rounding differences of 1e-7 grow block after block to about 1e-2 relative error in the
    features, so two correct runtimes (tract, onnxruntime) would disagree far beyond any
    self-test tolerance. Starting the residual branches at 0.2 keeps the stack close to its
    identity paths and the float32-vs-float64 error near 2e-6. Trained or ImageNet weights
    overwrite it.
    """

    def __init__(self, residual_branch_gamma: float = 0.2) -> None:
        super().__init__()
        trunk = efficientnet_b2(weights=None)
        rgb_stem: nn.Conv2d = trunk.features[0][0]
        trunk.features[0][0] = nn.Conv2d(
            1,
            rgb_stem.out_channels,
            kernel_size=rgb_stem.kernel_size,
            stride=rgb_stem.stride,
            padding=rgb_stem.padding,
            bias=False,
        )
        # torchvision initialises convolutions this way; keep the replaced stem consistent.
        nn.init.kaiming_normal_(trunk.features[0][0].weight, mode="fan_out")
        for block in trunk.features.modules():
            if isinstance(block, MBConv) and block.use_res_connect:
                # block.block ends with Conv2dNormActivation(conv, BatchNorm2d) and no activation.
                nn.init.constant_(block.block[-1][1].weight, residual_branch_gamma)
        self.features = trunk.features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Map normalised grey frames ``[N, 1, H, W]`` to feature vectors ``[N, 1408]``."""
        return torch.flatten(self.pool(self.features(image)), 1)

    def load_imagenet_weights(self, path: Path) -> None:
        """Initialise from a local torchvision ``efficientnet_b2`` ImageNet state dict.

        The RGB stem filters are summed into one grey filter: a grey image fed as R=G=B
        would give exactly that response, so the pretrained features stay meaningful.
        The classifier weights in the file are ignored.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        trunk_state = {
            key.removeprefix("features."): value
            for key, value in state.items()
            if key.startswith("features.")
        }
        stem_key = "0.0.weight"
        if stem_key not in trunk_state or trunk_state[stem_key].shape[1] != 3:
            raise ValueError(
                f"{path}: not a torchvision efficientnet_b2 state dict "
                f"(missing RGB stem 'features.{stem_key}')"
            )
        trunk_state[stem_key] = trunk_state[stem_key].sum(dim=1, keepdim=True)
        self.features.load_state_dict(trunk_state, strict=True)


class DilatedResidualBlock(nn.Module):
    """One temporal block: ``x + Dropout(GELU(BN(Conv1d_k3_dilated(x))))``.

    Doubling dilations (1, 2, 4, 8) give the stack a receptive field of 31 frames with only
    four layers, more than a beat's T = 8 samples, so every output sees the whole cycle.
    'Same' padding keeps the time length so the blocks stack and the residual adds up.
    """

    def __init__(self, width: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size=3, dilation=dilation, padding=dilation)
        self.norm = nn.BatchNorm1d(width)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refine ``[N, width, T]`` features, keeping the shape."""
        return x + self.drop(self.act(self.norm(self.conv(x))))


class BeatHead(nn.Module):
    """Per-heartbeat classifier: ``[N, T, D]`` frame features -> 11 logits and ``alpha``.

    Two branches see the beat differently: the temporal branch models motion across the
    cardiac cycle (valves opening, walls thickening), the spatial branch classifies each
    frame's anatomy alone and averages. A gate learns per beat which to trust (a still,
    foreshortened view favours anatomy; a view told apart by valve motion favours time),
    and exposing ``alpha`` lets the daemon log that choice.
    """

    def __init__(
        self,
        feature_dim: int = FEATURE_DIM,
        num_classes: int = len(VIEW_LABELS),
        width: int = 128,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        gate_hidden: int = 32,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        # A narrow temporal width keeps the head small next to the encoder (bundle size).
        self.project = nn.Sequential(
            nn.Conv1d(feature_dim, width, kernel_size=1),
            nn.BatchNorm1d(width),
            nn.GELU(),
        )
        self.blocks = nn.Sequential(*(DilatedResidualBlock(width, d, dropout) for d in dilations))
        self.temporal_drop = nn.Dropout(dropout)
        self.temporal_fc = nn.Linear(width, num_classes)
        self.spatial_fc = nn.Linear(feature_dim, num_classes)
        self.gate = nn.Sequential(
            nn.Linear(feature_dim, gate_hidden),
            nn.ReLU(),
            nn.Linear(gate_hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify beats: ``features [N, T, D]`` -> ``(logits [N, C], alpha [N, 1])``."""
        # Conv1d wants channels before time.
        x = self.blocks(self.project(features.transpose(1, 2)))
        temporal = self.temporal_fc(self.temporal_drop(x.mean(dim=2)))
        spatial = self.spatial_fc(features).mean(dim=1)
        alpha = torch.sigmoid(self.gate(features.mean(dim=1)))
        logits = alpha * spatial + (1.0 - alpha) * temporal
        return logits, alpha


class EchoViewNet(nn.Module):
    """Encoder and head together, for training on whole beats ``[N, T, 1, H, W]``.

    Export splits it back into ``encoder`` and ``head``; keeping one module means one
    checkpoint (keys ``encoder.*`` and ``head.*``) describes a whole bundle.
    """

    def __init__(self, head: BeatHead | None = None) -> None:
        super().__init__()
        self.encoder = GreyEfficientNetB2Encoder()
        self.head = head if head is not None else BeatHead()

    def forward(self, beats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify beats ``[N, T, 1, H, W]`` -> ``(logits [N, C], alpha [N, 1])``."""
        n, t = beats.shape[:2]
        features = self.encoder(beats.flatten(0, 1)).view(n, t, -1)
        return self.head(features)


def load_checkpoint(model: EchoViewNet, path: Path) -> None:
    """Load trained weights saved as ``model.state_dict()`` (optionally under ``"model"``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected an EchoViewNet state dict")
    model.load_state_dict(state, strict=True)
