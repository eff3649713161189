"""Benchmark models exported from plain PyTorch (torchvision does not import beside the pinned torch)."""

from __future__ import annotations

from pathlib import Path


def resnet50_module():  # -> torch.nn.Module
    """ResNet-50 v1.5 (torchvision's layout), seeded random weights, eval mode."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet50(nn.Module):
        def __init__(self, layers=(3, 4, 6, 3), classes: int = 1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make(64, layers[0])
            self.layer2 = self._make(128, layers[1], 2)
            self.layer3 = self._make(256, layers[2], 2)
            self.layer4 = self._make(512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, classes)

        def _make(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
            down = None
            if stride != 1 or self.inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                     nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(self.inplanes, planes, stride, down)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    model = ResNet50()
    for m in model.modules():  # non-trivial BN statistics so int8 calibration sees realistic ranges
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def export_resnet50(path: Path, batch: int = 1, dynamic_batch: bool = False) -> Path:
    """Export ResNet-50 with batch ``batch`` (a dynamic first dim named ``batch`` when ``dynamic_batch``)."""
    import torch

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = resnet50_module()
    x = torch.randn(batch, 3, 224, 224)
    tmp = path.with_suffix(".tmp.onnx")
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamo=False, dynamic_axes=axes)
    tmp.rename(path)
    return path


def mobilenet_v2_module():  # -> torch.nn.Module
    """MobileNetV2 (torchvision's layout: inverted residuals, ReLU6, width 1.0), seeded random weights, eval mode."""
    import torch
    from torch import nn

    def conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> list[nn.Module]:
        layers = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
        return layers + ([nn.ReLU6(inplace=True)] if act else [])

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, expand: int):
            super().__init__()
            hidden = inp * expand
            layers = conv_bn(inp, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, out, 1, 1, act=False)
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and inp == out

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, classes: int = 1000):
            super().__init__()
            layers, inp = conv_bn(3, 32, 3, 2), 32
            for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                               (6, 160, 3, 2), (6, 320, 1, 1)):
                for i in range(n):
                    layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            self.features = nn.Sequential(*layers, *conv_bn(inp, 1280, 1, 1))
            self.classifier = nn.Linear(1280, classes)

        def forward(self, x):
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    torch.manual_seed(0)
    model = MobileNetV2()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def export_mobilenet_v2(path: Path) -> Path:
    """Export MobileNetV2 at batch 1 (input ``input`` 1x3x224x224, output ``logits``)."""
    import torch

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(mobilenet_v2_module(), (torch.randn(1, 3, 224, 224),), str(tmp), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    tmp.rename(path)
    return path


def image_batch(count: int, seed: int = 0):
    """ImageNet-normalised random images, N x 3 x 224 x 224 float32 (smooth, so activations look like images)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    low = rng.random((count, 3, 28, 28)).astype(np.float32)
    images = low.repeat(8, axis=2).repeat(8, axis=3)
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    return ((images - mean) / std).astype(np.float32)
