"""Students for distilling the digits CNN (``onnxsmith distill``): each a ``module:factory`` returning an untrained
nn.Module with the teacher's input (``image`` [N, 1, 8, 8]) and output (10 scores).

``small_cnn``: Conv(1->8) ReLU MaxPool Conv(8->16) ReLU MaxPool Flatten Linear(64->32) ReLU Linear(32->10):
3,658 parameters, 9 % of the teacher's 40,394.
"""

from __future__ import annotations

from typing import Any


def small_cnn() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def mlp() -> Any:
    """Flatten Linear(64->96) ReLU Linear(96->10): 7,210 parameters (18 % of the teacher's), 4 ONNX nodes."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))


def one_conv() -> Any:
    """Conv(1->16) ReLU MaxPool Flatten Linear(256->32) ReLU Linear(32->10): 8,714 parameters (22 % of the
    teacher's), one conv layer instead of three."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )
