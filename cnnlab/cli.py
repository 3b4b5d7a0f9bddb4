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
from cnnlab.interrupt import TrainingInterrupted

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
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, help="Image folder (class sub-folders, optionally inside train/ val/ "
                                                  "test/); not needed with --resume."),
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
    max_bad: float = typer.Option(_d("max_bad"), help="Unreadable images are skipped with one warning each; "
                                 "stop if more than this share of a split is unreadable."),
    pretrained: bool = typer.Option(_d("pretrained"), "--pretrained", help="Start torchvision models from ImageNet weights (downloads)."),
    weights: Optional[str] = typer.Option(_d("weights"), help="Start from these weights: a run's .safetensors, or a "
                                           ".pt/.pth state dict read as tensors only (never runs code). A classifier "
                                           "for another number of classes starts fresh."),
    model_option: list[str] = typer.Option([], help="Extra model option NAME=VALUE, repeatable (e.g. widths=[16,32,64])."),
    out: Optional[str] = typer.Option(_d("out"), help="Run folder (default runs/<model>-<time>)."),
    resume: Optional[str] = typer.Option(None, help="Continue the run in this folder exactly where its checkpoint "
                                         "(written every epoch and on Ctrl-C/kill) left it, with its own options; "
                                         "only --epochs (to extend it) and --workers may be given too."),
) -> None:
    """Train a model on an image folder and write a self-describing run folder.

    Ctrl-C or kill (SIGTERM) stops after the current step, saves a checkpoint and prints how to resume.
    """
    from cnnlab.train import fit

    if resume:
        # every option the user typed goes to fit; it refuses all but --epochs and --workers
        given = {name: value for name, value in ctx.params.items()
                 if name != "resume" and ctx.get_parameter_source(name).name != "DEFAULT"}
        result = fit(resume=resume, **given)
    else:
        result = fit(TrainConfig(
            data=data, model=model, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, dropout=dropout, augment=augment,
            label_smoothing=label_smoothing, patience=patience, val_fraction=val_fraction, seed=seed, device=device,
            workers=workers, precision=precision, compile=compile, cache=cache, cache_dir=cache_dir,
            max_pixels=max_pixels, max_bad=max_bad, pretrained=pretrained, weights=weights,
            model_options=_parse_model_options(model_option), out=out))
    typer.echo(result.summary())
    typer.echo(f"verdict: {result.extras['diagnosis'].headline} (details: {result.run_dir / 'report.html'})")


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
    typer.echo(f"wrote {result.run_dir / f'eval_{split}.json'}, confusion_matrix_{split}.png, "
               f"top_losses_{split}.png, reliability_{split}.png and report.html")


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


# --------------------------------------------------------------------------------------------
# lr-find / augment-preview / compare
# --------------------------------------------------------------------------------------------

@app.command("lr-find")
def lr_find_command(
    data: str = typer.Option(..., help="Image folder (class sub-folders, optionally inside train/ val/ test/)."),
    model: str = typer.Option(_d("model"), help="Model name; `cnnlab models` lists them."),
    img_size: int = typer.Option(_d("img_size"), help="Side of the square training crop in pixels."),
    batch_size: int = typer.Option(_d("batch_size"), help="Images per step."),
    optimizer: str = typer.Option(_d("optimizer"), help="adamw or sgd."),
    steps: int = typer.Option(200, help="Steps of the range test (fewer on a small dataset; the loader is cycled)."),
    seed: int = typer.Option(_d("seed"), help="Random seed (split, init, shuffling, augmentation)."),
    device: str = typer.Option(_d("device"), help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(_d("workers"), help="DataLoader workers (default: from the core count)."),
    out: str = typer.Option("lr_find.png", help="Where to write the plot of loss vs learning rate."),
) -> None:
    """Run the learning-rate range test, print the suggested peak LR and plot loss vs LR."""
    from cnnlab.lr_find import find_lr

    result = find_lr(data, model=model, img_size=img_size, batch_size=batch_size, optimizer=optimizer,
                     steps=steps, out=out, seed=seed, device=device, workers=workers)
    typer.echo(result.describe())
    typer.echo(f"wrote {out}; train with --lr {result.suggestion:.2e} (or --lr auto)")


@app.command("augment-preview")
def augment_preview_command(
    data: str = typer.Option(..., help="Image folder (class sub-folders, optionally inside train/ val/ test/)."),
    augment: str = typer.Option(_d("augment"), help="Augmentation preset: default (the lecture's) or none."),
    n: int = typer.Option(8, help="Augmented reads per image (columns after the original)."),
    images: int = typer.Option(4, help="Training images to show (rows)."),
    img_size: int = typer.Option(_d("img_size"), help="Side of the square training crop in pixels."),
    seed: int = typer.Option(_d("seed"), help="Seed for the choice of images and the random transforms."),
    out: str = typer.Option("augment_preview.png", help="Where to write the grid."),
    run: Optional[str] = typer.Option(None, help="Run folder: write RUN/augment_preview.png instead (shown in the report)."),
) -> None:
    """Show training images as evaluated and as N random augmented reads: augmentation happens on the fly."""
    from pathlib import Path

    from cnnlab.augment_preview import augment_preview

    path = augment_preview(data, augment=augment, n=n, images=images, img_size=img_size, seed=seed,
                           out=Path(run) / "augment_preview.png" if run else out)
    typer.echo(f"wrote {path}")


@app.command("compare")
def compare_command(
    data: str = typer.Option(..., help="Image folder (class sub-folders, optionally inside train/ val/ test/)."),
    models: str = typer.Option("mlp,simple_cnn", help="Comma-separated model names; `cnnlab models` lists them."),
    epochs: int = typer.Option(_d("epochs"), help="Epochs for every model."),
    img_size: int = typer.Option(_d("img_size"), help="Side of the square training crop in pixels."),
    batch_size: int = typer.Option(_d("batch_size"), help="Images per step."),
    seed: int = typer.Option(_d("seed"), help="Random seed, the same for every model."),
    device: str = typer.Option(_d("device"), help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(_d("workers"), help="DataLoader workers (default: from the core count)."),
    out: str = typer.Option("runs/compare", help="Folder for one run per model and compare.md/.json/.png."),
) -> None:
    """Train several models (e.g. an MLP and a CNN) with identical settings and print one table."""
    from cnnlab.compare import compare

    names = [name.strip() for name in models.split(",") if name.strip()]
    result = compare(data, names, epochs=epochs, img_size=img_size, batch_size=batch_size, seed=seed, out=out,
                     device=device, workers=workers)
    typer.echo(result.describe())
    typer.echo(f"wrote {result.out_dir / 'compare.md'}, compare.json and compare.png")


@app.command("report")
def report_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
) -> None:
    """Rebuild RUN_DIR/report.html: one self-contained page with the verdict, curves, evaluation and data."""
    from cnnlab.report import write_report

    typer.echo(f"wrote {write_report(run_dir)}")


# --------------------------------------------------------------------------------------------
# summary / filter / inspect: what a network does, layer by layer
# --------------------------------------------------------------------------------------------

@app.command("summary")
def summary_command(
    model: str = typer.Option("simple_cnn", help="Model name; `cnnlab models` lists them."),
    input: str = typer.Option("3x1000x1000", "--input", help="One image as CxHxW (or HxW for 3 channels)."),
    num_classes: int = typer.Option(10, help="Classes of the classifier head."),
    mlp_hidden: int = typer.Option(1000, help="Hidden units of the MLP the parameter count is compared with."),
    model_option: list[str] = typer.Option([], help="Extra model option NAME=VALUE, repeatable (e.g. widths=[16,32,64])."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON instead."),
) -> None:
    """Layer table for one input size: shapes, parameters, MACs, receptive field, memory; vs an MLP."""
    from cnnlab.model_summary import summarize_model

    result = summarize_model(model, input, num_classes=num_classes, mlp_hidden=mlp_hidden,
                             **_parse_model_options(model_option))
    typer.echo(json.dumps(result.to_dict()) if as_json else result.describe())


@app.command("filter")
def filter_command(
    image: str = typer.Argument(..., help="Image file."),
    kernel: str = typer.Option("sobel-x", help="sobel-x, sobel-y, laplacian, gaussian, box, sharpen, emboss, "
                               "or a .npy file of shape (kH, kW) or (C_out, C_in, kH, kW)."),
    stride: int = typer.Option(1, help="Convolution stride."),
    padding: int = typer.Option(1, help="Zeros added on each side before convolving."),
    pool: Optional[str] = typer.Option(None, help="Pool the result: max or avg."),
    pool_size: int = typer.Option(2, help="Pooling window (and stride)."),
    size: int = typer.Option(512, help="Reduce the image so its short side is at most this (0: full size)."),
    out: str = typer.Option(..., help="PNG to write: input and output side by side, shapes in the title."),
) -> None:
    """Apply a convolution kernel (NumPy, from scratch) to an image and show the result with its shapes."""
    from cnnlab.filters import filter_image

    result = filter_image(image, kernel=kernel, stride=stride, padding=padding, pool=pool, pool_size=pool_size,
                          out=out, size=size)
    typer.echo(result.describe())


@app.command("inspect")
def inspect_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    image: str = typer.Argument(..., help="Image whose feature maps to show."),
    out: str = typer.Option(..., help="Folder for input.png, first_layer_filters.png, stage_<i>.png."),
    max_maps: int = typer.Option(32, help="Feature maps per stage (the most active channels)."),
    which: str = typer.Option("best", help="best or last weights."),
) -> None:
    """Show a trained run's first-layer filters and each stage's feature maps for one image."""
    from cnnlab.inspect_run import inspect_run

    result = inspect_run(run_dir, image, out, max_maps=max_maps, which=which)
    typer.echo(result.describe())


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except CnnlabError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except TrainingInterrupted as error:  # checkpoint saved; the message says how to resume
        typer.echo(str(error), err=True)
        sys.exit(error.exit_code)  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
