"""Command-line interface: a thin layer that parses options, calls one library function, prints.

Every command has a Python twin with the same arguments (see cnnlab/__init__.py). Library modules
are imported inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from cnnlab.config import TrainConfig, default
from cnnlab.errors import CnnlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cnnlab: train, understand and trust CNNs on your own images.")
data_app = typer.Typer(no_args_is_help=True, help="Make or check image datasets.")
app.add_typer(data_app, name="data")


def _d(name: str):
    """Default of a TrainConfig field (defaults live in cnnlab.config only)."""
    return default(TrainConfig, name)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

@data_app.command("synth")
def data_synth(
    out_dir: str = typer.Argument(..., help="Folder to write train/<class>/ and val/<class>/ into."),
    classes: int = typer.Option(6, help="Number of shape classes."),
    per_class: int = typer.Option(100, help="Images per class (train + val)."),
    size: int = typer.Option(1024, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Same seed, byte-identical files."),
    val_fraction: float = typer.Option(0.2, help="Share of each class written to val/."),
) -> None:
    """Write the built-in large-image dataset: shapes on a cluttered, textured background."""
    from cnnlab.synth import synthesize

    summary = synthesize(out_dir, classes=classes, per_class=per_class, size=size, seed=seed,
                         val_fraction=val_fraction)
    typer.echo(summary.describe())


@data_app.command("check")
def data_check(
    data_dir: str = typer.Argument(..., help="Image folder: <class>/ folders, or train/ val/ test/ holding them."),
    fix_report: Optional[str] = typer.Option(None, help="Write every problem to this CSV "
                                             "(path, split, class, severity, problem, detail)."),
    quarantine: Optional[str] = typer.Option(None, help="Move unreadable files into this folder, keeping "
                                             "their relative paths (nothing is deleted or rewritten)."),
    max_pixels: int = typer.Option(_d("max_pixels"), help="Images with more pixels are errors (read from the header)."),
    workers: Optional[int] = typer.Option(None, help="Parallel readers; default: the number of CPU cores."),
) -> None:
    """Check an image folder before training: unreadable files, odd modes, duplicates, leakage. Exit 1 if not trainable."""
    from cnnlab.datacheck import check_dataset

    report = check_dataset(data_dir, fix_report=fix_report, quarantine=quarantine, max_pixels=max_pixels,
                           workers=workers)
    typer.echo(report.describe())
    raise typer.Exit(report.exit_code)


# --------------------------------------------------------------------------------------------
# train / eval / predict / demo / models
# --------------------------------------------------------------------------------------------

def _parse_model_options(items: list[str]) -> dict:
    """['widths=[16,32]', 'hidden=256'] -> {'widths': [16, 32], 'hidden': 256} (YAML values, never eval)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CnnlabError(f"--model-option {item!r} must look like NAME=VALUE, e.g. widths=[16,32,64]")
        options[key.strip()] = yaml.safe_load(value)
    return options


@app.command()
def train(
    data: str = typer.Option(..., help="Image folder (class sub-folders, optionally inside train/ val/ test/)."),
    model: str = typer.Option(_d("model"), help="Model name; `cnnlab models` lists them."),
    img_size: int = typer.Option(_d("img_size"), help="Side of the square training crop in pixels."),
    epochs: int = typer.Option(_d("epochs"), help="Maximum number of epochs."),
    batch_size: int = typer.Option(_d("batch_size"), help="Images per step."),
    lr: Optional[str] = typer.Option(None, help="Peak learning rate, or 'auto' to run the LR finder first "
                                                 "(default: 2e-3 for adamw, 0.05 for sgd)."),
    optimizer: str = typer.Option(_d("optimizer"), help="adamw or sgd."),
    weight_decay: float = typer.Option(_d("weight_decay"), help="Weight decay (not on biases and norms)."),
    schedule: str = typer.Option(_d("schedule"), help="onecycle, cosine (with warm-up) or constant."),
    dropout: float = typer.Option(_d("dropout"), help="Dropout before the classifier."),
    augment: str = typer.Option(_d("augment"), help="Augmentation preset: default (the lecture's) or none."),
    label_smoothing: float = typer.Option(_d("label_smoothing"), help="Cross-entropy label smoothing."),
    patience: Optional[int] = typer.Option(_d("patience"), help="Early stop after N epochs without a better val loss."),
    val_fraction: float = typer.Option(_d("val_fraction"), help="Validation share when there is no val/ folder."),
    seed: int = typer.Option(_d("seed"), help="Random seed (split, init, shuffling, augmentation)."),
    device: str = typer.Option(_d("device"), help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(_d("workers"), help="DataLoader workers (default: from the core count)."),
    precision: str = typer.Option(_d("precision"), help="auto, fp32, bf16 or fp16."),
    compile: bool = typer.Option(_d("compile"), "--compile", help="Use torch.compile."),
    cache: str = typer.Option(_d("cache"), help="Decoded-image cache: auto, disk, ram or off."),
    cache_dir: Optional[str] = typer.Option(_d("cache_dir"), help="Folder for the disk cache."),
    max_pixels: int = typer.Option(_d("max_pixels"), help="Refuse images larger than this many pixels."),
    max_bad: float = typer.Option(_d("max_bad"), help="Stop if more than this share of a split is unreadable."),
    pretrained: bool = typer.Option(_d("pretrained"), "--pretrained", help="Start torchvision models from ImageNet weights (downloads)."),
    weights: Optional[str] = typer.Option(_d("weights"), help="Start from these weights (.safetensors, .pt, .pth)."),
    model_option: list[str] = typer.Option([], help="Extra model option NAME=VALUE, repeatable (e.g. widths=[16,32,64])."),
    out: Optional[str] = typer.Option(_d("out"), help="Run folder (default runs/<model>-<time>)."),
) -> None:
    """Train a model on an image folder and write a self-describing run folder."""
    from cnnlab.train import fit

    config = TrainConfig(
        data=data, model=model, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, dropout=dropout, augment=augment,
        label_smoothing=label_smoothing, patience=patience, val_fraction=val_fraction, seed=seed, device=device,
        workers=workers, precision=precision, compile=compile, cache=cache, cache_dir=cache_dir,
        max_pixels=max_pixels, max_bad=max_bad, pretrained=pretrained, weights=weights,
        model_options=_parse_model_options(model_option), out=out)
    result = fit(config)
    typer.echo(result.summary())


@app.command("eval")
def eval_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    data: Optional[str] = typer.Option(None, help="Image folder (default: the one the run was trained on)."),
    split: str = typer.Option("val", help="val or test."),
    which: str = typer.Option("best", help="best or last weights."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(None, help="DataLoader workers."),
) -> None:
    """Evaluate a run: accuracy, per-class precision/recall/F1, confusion matrix."""
    from cnnlab.evaluate import evaluate

    result = evaluate(run_dir, data=data, split=split, which=which, device=device, workers=workers)
    typer.echo(result.describe())
    typer.echo(f"wrote {result.run_dir / f'eval_{split}.json'} and confusion_matrix_{split}.png")


@app.command("predict")
def predict_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    inputs: list[str] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(3, help="Classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    which: str = typer.Option("best", help="best or last weights."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Predict the top-k classes of images with a trained run."""
    from cnnlab.predict import predict

    for row in predict(run_dir, inputs, top_k=top_k, which=which, device=device):
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False))
        elif row.get("error"):
            typer.echo(f"{row['path']}: {row['error']}")
        else:
            typer.echo(f"{row['path']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"]))


@app.command()
def demo(
    data: Optional[str] = typer.Option(None, help="Where to keep the built-in dataset (default: user cache)."),
    out: str = typer.Option("runs/demo", help="Run folder."),
    epochs: Optional[int] = typer.Option(None, help="Override the demo's number of epochs."),
) -> None:
    """Synthesise the built-in dataset if absent, train simple_cnn, evaluate, summarise."""
    from cnnlab.demo import demo as run_demo

    result = run_demo(data=data, out=out, epochs=epochs)
    evaluation = result.extras["evaluation"]
    typer.echo(result.summary())
    typer.echo(evaluation.describe())
    typer.echo(f"demo finished in {result.extras['seconds']:.0f}s; open {result.run_dir}/ to see everything")


@app.command()
def models() -> None:
    """List the model names `--model` accepts."""
    from cnnlab.models import list_models

    for name in list_models():
        typer.echo(name)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except CnnlabError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
