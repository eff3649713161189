"""``onnxsmith distill``: train a smaller PyTorch student on a teacher's outputs (see :mod:`onnxsmith.torchin.distill`)."""

from __future__ import annotations

import click

from onnxsmith.cli.common import data_option, echo, echo_err, json_option, shape_option


@click.command("distill")
@click.argument("teacher")
@click.option("--student", "student_spec", required=True, metavar="MODULE:FACTORY",
              help="The student: package.module:factory (or path/to/file.py:factory) returning an untrained nn.Module.")
@data_option("--data", "train_spec", "Training data (the teacher scores it)", required=True)
@data_option("--val", "val_spec", "Validation data (accuracy per epoch, early stopping, the final comparison)")
@click.option("--labels", default=None, help="Key of the labels in --data and --val: mixes cross-entropy on them "
              "into the loss, and makes validation report accuracy (without: agreement with the teacher).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None, help="Time budget for training.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs to train (with --minutes: whichever "
              "ends first).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Softmax temperature of the KL loss.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="Weight of the soft (KL) loss against the hard labels.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True,
              help="Peak learning rate (AdamW, cosine over the run).")
@click.option("--patience", type=click.IntRange(min=1), default=15, show_default=True,
              help="Stop after this many epochs without a better validation score.")
@click.option("--seed", type=int, default=0, show_default=True)
@shape_option
@click.option("--target", "-t", "target_spec", default=None, help="Export the student at an opset this target's "
              "backends read.")
@click.option("--restart", is_flag=True, help="Train from scratch, ignoring an unfinished run's checkpoint (a finished "
              "result in -o stays until the new run finishes).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True,
              help="Directory for student.onnx, distill.json and the checkpoint (a rerun resumes from it).")
@click.option("--force", is_flag=True, help="Write into a non-empty -o that holds no distill result.")
@json_option
def distill_command(teacher: str, student_spec: str, train_spec: str, val_spec: str | None, labels: str | None,
                    minutes: float | None, epochs: int | None, temperature: float, alpha: float, batch_size: int,
                    learning_rate: float, patience: int, seed: int, shapes: tuple[str, ...],
                    target_spec: str | None, restart: bool, output: str, force: bool, as_json: bool) -> None:
    """Train a smaller PyTorch student on a teacher's outputs; export it.

    TEACHER is an ONNX model (run by ONNX Runtime) or a PyTorch model (module:factory, .pt2, TorchScript; run
    eagerly). The loss is the temperature-scaled KL divergence to the teacher's scores, mixed with cross-entropy on
    --labels when given. The student is exported to OUTPUT/student.onnx with the checks of 'onnxsmith export'."""
    import sys
    import time
    from pathlib import Path

    from onnxsmith.console import print_json, stderr_console
    from onnxsmith.torchin.distill import Settings, distill
    from onnxsmith.targets import load_target

    if minutes is None and epochs is None:
        minutes = 3.0
    settings = Settings(temperature=temperature, alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
                        epochs=epochs, minutes=minutes, patience=patience, seed=seed)
    target = load_target(target_spec) if target_spec else None
    live = sys.stderr.isatty() and not as_json
    console = stderr_console()
    bar = task = None
    if live:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        bar.start()
        total = epochs if epochs else None
        task = bar.add_task("distilling", total=total if total else (minutes or 1) * 60, info="")

    started = time.monotonic()

    def say(message: str) -> None:
        if bar is not None:
            bar.update(task, description=message[:60])

    def on_epoch(line, max_epochs) -> None:
        val = f", val {line.val:.4f}" if line.val is not None else ""
        text = f"epoch {line.epoch}: loss {line.loss:.4f}{val}, lr {line.lr:.2g}, {line.seconds:.1f} s"
        if bar is not None:
            done = line.epoch if epochs else min(time.monotonic() - started, (minutes or 1) * 60)
            bar.update(task, completed=done, description=f"epoch {line.epoch}", info=f"loss {line.loss:.4f}{val}")
        elif not as_json:
            echo_err(text)

    try:
        record = distill(teacher, student_spec, train_spec=train_spec, output=Path(output), val_spec=val_spec,
                         labels=labels, shapes=shapes, settings=settings, restart=restart, force=force,
                         target=target, progress=say, on_epoch=on_epoch)
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        print_json(record)
        return
    p, lat = record["parameters"], record["latency_ms"]
    echo(f"trained {record['epochs']} epochs in {record['train_seconds']:.1f} s ({record['stopped']}; best "
         f"epoch {record['best_epoch']})")
    echo(f"parameters: teacher {p['teacher']:,}, student {p['student']:,} ({p['ratio']:.3f}x)")
    val = record.get("validation")
    if val and "teacher_accuracy" in val:
        echo(f"validation accuracy on {val['samples']} samples: teacher {val['teacher_accuracy']:.4f}, student "
             f"{val['student_accuracy']:.4f} (agreement {val['agreement']:.4f})")
    elif val:
        echo(f"top-1 agreement with the teacher on {val['samples']} samples: {val['agreement']:.4f}")
    echo(f"latency (ONNX Runtime, batch 1): teacher {lat['teacher'] * 1000:.1f} us, student "
         f"{lat['student'] * 1000:.1f} us ({lat['ratio']:.2f}x)")
    from onnxsmith.torchin.api import describe

    echo(describe(record["export"]))
    echo(f"student: {Path(output) / 'student.onnx'}")
