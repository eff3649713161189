"""Plain-PyTorch models for the PyTorch-in tests, built here (no downloads): factories named as ``module:factory``."""

from __future__ import annotations

from typing import Any


def _seeded() -> Any:
    import torch

    torch.manual_seed(0)
    return torch


def resnet_cnn() -> Any:
    """A ResNet-style CNN: a stem, two residual stages (BatchNorm, a strided downsample), global pooling, a head."""
    torch = _seeded()
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.down(x))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
            self.head = nn.Linear(64, 10)

        def forward(self, image: Any) -> Any:
            x = self.stages(self.stem(image))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    model = ResNet()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them is checked
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def encoder() -> Any:
    """A small transformer encoder over token ids: embedding + learned positions, 2 layers, mean-pooled head."""
    torch = _seeded()
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self, vocab: int = 100, d: int = 32, seq: int = 16) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.position = nn.Parameter(torch.randn(1, seq, d) * 0.02)
            layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
            self.layers = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(d, 4)

        def forward(self, input_ids: Any) -> Any:
            x = self.layers(self.embed(input_ids) + self.position)
            return self.head(x.mean(dim=1))

    return Encoder().eval()


def data_dependent() -> Any:
    """Python control flow on a tensor's value: neither exporter can keep both branches."""
    from torch import nn

    class Branchy(nn.Module):
        def forward(self, x: Any) -> Any:
            if x.sum() > 0:
                return x * 2
            return x - 1

    return Branchy()


def eigenvalues() -> Any:
    """An op with no ONNX counterpart (complex eigenvalues)."""
    import torch
    from torch import nn

    class Eig(nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.linalg.eigvals(x).real

    return Eig()


def not_a_module() -> Any:
    return 42
