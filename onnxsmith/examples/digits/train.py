"""Train the bundled example model: a small CNN on scikit-learn's 8x8 digits, exported to ONNX.

Writes, next to this file (or under ``--out``):

- ``digits_cnn.onnx``: input ``image`` float32 [N,1,8,8] (pixels / 16, in [0, 1]), output ``logits`` [N,10];
  opset 17, dynamic batch ``N``.
- ``calibration.npz``: ``image``, 200 training samples (stratified) for int8 calibration.
- ``validation.npz``: ``image`` and ``label`` (int64), the 360 held-out samples.
- ``train.npz``: ``image`` and ``label`` (int64), the 1,437 training samples (for ``onnxsmith distill``);
  ``--train-data-only`` writes just this file (compressed) without training.

Run: ``python onnxsmith/examples/digits/train.py`` (needs torch, scikit-learn, onnx; onnxruntime to check the
export). Seeded and single-process; it trains in about 10 s on 2 cores and prints train/validation accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SEED = 0
VALIDATION_SAMPLES = 360
CALIBRATION_SAMPLES = 200
EPOCHS = 40
BATCH = 64
LEARNING_RATE = 2e-3


def load_split() -> tuple[Any, Any, Any, Any]:
    """The digits set scaled to [0, 1], shaped N x 1 x 8 x 8, split stratified into train and validation."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=VALIDATION_SAMPLES, random_state=SEED, stratify=labels)


def build_model() -> Any:
    """Conv(1->16) Relu Conv(16->32) Relu MaxPool Conv(32->64) Relu MaxPool Flatten Gemm(256->64) Relu Gemm(64->10)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(64 * 2 * 2, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def accuracy(model: Any, images: Any, labels: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def train(x_train: Any, y_train: Any) -> Any:
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    for _epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), BATCH):
            idx = order[start:start + BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(images[idx]), labels[idx])
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


def export(model: Any, path: Path) -> None:
    import warnings

    import onnx
    import torch

    example = torch.zeros(1, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based exporter": chosen on purpose
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    proto = onnx.load(str(path))
    proto.doc_string = "onnxsmith example: CNN on scikit-learn digits (8x8, pixels/16), made by train.py"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path))


def calibration_subset(x_train: Any, y_train: Any) -> Any:
    """``CALIBRATION_SAMPLES`` training images, 20 per class, in a seeded shuffled order."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    per_class = CALIBRATION_SAMPLES // 10
    picks = np.concatenate([rng.permutation(np.flatnonzero(y_train == c))[:per_class] for c in range(10)])
    return x_train[rng.permutation(picks)]


def onnxruntime_accuracy(path: Path, images: Any, labels: Any) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--train-data-only", action="store_true", help="write train.npz only, without training")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_data_only:
        x_train, _, y_train, _ = load_split()
        np.savez_compressed(args.out / "train.npz", image=x_train, label=y_train)
        print(f"wrote {args.out / 'train.npz'} ({len(x_train)} samples)")
        return
    torch.set_num_threads(1)  # one thread: bit-for-bit the same weights on every machine with this torch

    x_train, x_val, y_train, y_val = load_split()
    model = train(x_train, y_train)
    print(f"train samples {len(x_train)}, validation samples {len(x_val)}")
    print(f"train accuracy {accuracy(model, x_train, y_train):.4f}")
    print(f"validation accuracy {accuracy(model, x_val, y_val):.4f}")

    onnx_path = args.out / "digits_cnn.onnx"
    export(model, onnx_path)
    np.savez(args.out / "calibration.npz", image=calibration_subset(x_train, y_train))
    np.savez(args.out / "validation.npz", image=x_val, label=y_val)
    np.savez_compressed(args.out / "train.npz", image=x_train, label=y_train)
    try:
        print(f"ONNX Runtime validation accuracy {onnxruntime_accuracy(onnx_path, x_val, y_val):.4f}")
    except ImportError:
        print("onnxruntime not installed: export not checked")
    for name in ("digits_cnn.onnx", "calibration.npz", "validation.npz", "train.npz"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
