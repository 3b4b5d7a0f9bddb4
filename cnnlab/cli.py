"""Command-line interface: a thin layer that parses options, calls one library function, prints.

Every command has a Python twin with the same arguments (see cnnlab/__init__.py). `train`'s options are
built from TrainConfig's fields: the flag, its default and its help all come from cnnlab/config.py, so
the two cannot drift (tests/test_cli.py checks it). Library modules are imported inside the commands so
that `--help` stays fast and does not import torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import typing
from typing import Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from cnnlab import __version__
from cnnlab.config import TrainConfig, config_from_file, default, field_docs
from cnnlab.errors import CnnlabError
from cnnlab.signals import Terminated, TrainingInterrupted, end_children, raise_on_sigterm, terminated


class _ReadableHelp:
    """Help that reads like the command line: flags without a `<bool>` type, arguments as NAME."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""  # a flag takes no value: `--json`, not `--json <bool>`
            elif isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = ["[OPTIONS]"] if any(isinstance(p, TyperOption) for p in self.get_params(ctx)) else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        if isinstance(self, TyperGroup):
            pieces.append(self.subcommand_metavar)
        return pieces


class Command(_ReadableHelp, TyperCommand):
    """A command whose help and usage read like the command line."""


class Group(_ReadableHelp, TyperGroup):
    """A command group whose help reads like the command line."""


app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cnnlab: train, understand and trust CNNs on your own images.")
data_app = typer.Typer(cls=Group, no_args_is_help=True, help="Make or check image datasets.")
cache_app = typer.Typer(cls=Group, no_args_is_help=True, help="See or clear the decoded-image cache.")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnlab {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print cnnlab's version and exit.")) -> None:
    """cnnlab: train, understand and trust CNNs on your own images."""


def _d(name: str):
    """Default of a TrainConfig field (defaults live in cnnlab.config only)."""
    return default(TrainConfig, name)


def _help(name: str) -> str:
    """Help text of a TrainConfig field: its docstring."""
    return field_docs(TrainConfig)[name]


# --------------------------------------------------------------------------------------------
# data, cache
# --------------------------------------------------------------------------------------------

@data_app.command("synth", cls=Command)
def data_synth(
    out_dir: str = typer.Argument(..., help="Folder to write train/<class>/ and val/<class>/ into."),
    classes: int = typer.Option(6, help="Number of shape classes."),
    per_class: int = typer.Option(100, help="Images per class (train + val)."),
    size: Optional[int] = typer.Option(None, help="Image side in pixels; default 1024 (sparse: 4000)."),
    seed: int = typer.Option(0, help="Same seed, byte-identical files."),
    val_fraction: float = typer.Option(0.2, help="Share of each class written to val/."),
    kind: str = typer.Option("shapes", help="shapes (one large shape per image), objects (many small copies "
                             "of the class's shape on a large cluttered image: for tiled training; use --size 3000) "
                             "or sparse (3-8 small copies among same-size distractors on a very large image: most "
                             "tiles hold none)."),
    file_format: str = typer.Option("jpeg", "--format", help="jpeg, or tiff: tiled, JPEG-compressed, pyramidal, "
                                    "written a tile at a time (needed for sparse images above 8192 px)."),
    workers: int = typer.Option(1, help="Processes writing images (same bytes whatever the number)."),
) -> None:
    """Write a built-in large-image dataset: shapes on a cluttered, textured background."""
    from cnnlab.data.synth import synthesize

    summary = synthesize(out_dir, classes=classes, per_class=per_class, size=size, seed=seed,
                         val_fraction=val_fraction, kind=kind, workers=workers, file_format=file_format)
    typer.echo(summary.describe())


@data_app.command("check", cls=Command)
def data_check(
    data_dir: str = typer.Argument(..., help="Image folder: <class>/ folders, or train/ val/ test/ holding them."),
    fix_report: Optional[str] = typer.Option(None, help="Write every problem to this CSV "
                                             "(path, split, class, severity, problem, detail)."),
    quarantine: Optional[str] = typer.Option(None, help="Move unreadable files into this folder, keeping "
                                             "their relative paths (nothing is deleted or rewritten)."),
    max_pixels: int = typer.Option(_d("max_pixels"), help="Images with more pixels are errors (read from the header)."),
    workers: Optional[int] = typer.Option(None, help="Parallel readers; default: the number of CPU cores."),
) -> None:
    """Check an image folder before training: unreadable files, duplicates, leakage, outliers, imbalance.
    Exit 1 if not trainable."""
    from cnnlab.data.check import check_dataset

    report = check_dataset(data_dir, fix_report=fix_report, quarantine=quarantine, max_pixels=max_pixels,
                           workers=workers)
    typer.echo(report.describe())
    raise typer.Exit(report.exit_code)


@cache_app.command("list", cls=Command)
def cache_list(cache_dir: Optional[str] = typer.Option(None, help="Cache folder (default: CNNLAB_CACHE or "
                                                       "the user cache folder).")) -> None:
    """List the decoded-image stores: the data folder each caches, its size on disk and its images."""
    from cnnlab.data.cache import cache_root, list_stores

    stores = list_stores(cache_dir)
    typer.echo(f"image cache in {cache_root(cache_dir)}: {len(stores)} store(s), "
               f"{sum(s.bytes for s in stores) / 1e6:,.1f} MB")
    for store in stores:
        size = store.size or "?"
        where = f"short side {size[1:]}" if size.startswith("s") else f"scale {size[1:]}"
        typer.echo(f"  {store.path.name}  {store.bytes / 1e6:,.1f} MB  {store.images} images at {where}  from "
                   f"{store.source}")


@cache_app.command("clear", cls=Command)
def cache_clear(
    names: Optional[list[str]] = typer.Argument(None, help="Stores to delete, as `cnnlab cache list` names them "
                                                "(default: all)."),
    cache_dir: Optional[str] = typer.Option(None, help="Cache folder (default: CNNLAB_CACHE or the user cache folder)."),
) -> None:
    """Delete decoded-image stores (they are rebuilt from the images when needed)."""
    from cnnlab.data.cache import clear_stores

    gone = clear_stores(cache_dir, names or None)
    typer.echo(f"deleted {len(gone)} store(s), {sum(s.bytes for s in gone) / 1e6:,.1f} MB freed")


# --------------------------------------------------------------------------------------------
# train: every TrainConfig field is a flag
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


# TrainConfig fields whose flag differs from the field: name -> (flag name, CLI type)
_FLAG_NAMES = {"model_options": "model_option"}


def _cli_annotation(name: str, hint: Any) -> Any:
    """The CLI type of a field: numbers and text as they are, 'number or auto' as text, a dict as repeatable text."""
    if name == "model_options":
        return list[str]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) > 1:  # e.g. lr: float | str | None -> text, TrainConfig converts it
        return Optional[str]
    if args:  # X | None
        return Optional[args[0]]
    return hint


def config_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per TrainConfig field, with its default and docstring as help."""
    hints = typing.get_type_hints(TrainConfig)
    params = []
    for item in dataclasses.fields(TrainConfig):
        name = item.name
        value = [] if name == "model_options" else _d(name)
        if name == "data":
            value = None  # not needed with --resume or --config
        flag = f"--{_FLAG_NAMES.get(name, name).replace('_', '-')}"
        option = typer.Option(value, flag, help=_help(name))
        if hints[name] in (bool, bool | None) and value is not False:  # on (or decided) by default: --no-ema
            option = typer.Option(value, f"{flag}/--no-{flag[2:]}", help=_help(name))
        params.append(inspect.Parameter(_FLAG_NAMES.get(name, name), inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=_cli_annotation(name, hints[name])))
    return params


def _typed_options(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields the user typed on the command line, under their field names."""
    typed = {}
    for item in dataclasses.fields(TrainConfig):
        flag = _FLAG_NAMES.get(item.name, item.name)
        if ctx.get_parameter_source(flag).name != "DEFAULT":
            value = values[flag]
            typed[item.name] = _parse_model_options(value) if item.name == "model_options" else value
    return typed


def train(ctx: typer.Context, **values: Any) -> None:
    """Train a model on an image folder and write a self-describing run folder.

    Every option is a field of cnnlab.TrainConfig. --config FILE.yaml reads options from a file (e.g. a run's
    own config.yaml); flags typed on the command line override it. Ctrl-C or kill (SIGTERM) stops after the
    current step, saves a checkpoint and prints how to resume.
    """
    if values["nproc"] > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command
        from cnnlab.training.distributed import launch

        raise typer.Exit(launch(values["nproc"], _without_nproc(sys.argv[1:])))
    from cnnlab.commands.train import fit

    options = config_from_file(values["config"]) if values["config"] else {}
    options |= _typed_options(ctx, values)
    if values["resume"]:
        result = fit(resume=values["resume"], **options)
    else:
        result = fit(TrainConfig(**options), overwrite=values["overwrite"])
    if os.environ.get("RANK", "0") != "0":
        return  # of several training processes, rank 0 reports
    typer.echo(result.summary())
    if result.diagnosis is not None:
        typer.echo(f"verdict: {result.diagnosis.verdict.label.lower()}; report: {result.run_dir / 'report.html'}")


train.__signature__ = inspect.Signature([
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    *config_parameters(),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, help="Read options from this YAML file (keys: the option names with underscores, e.g. a run's "
                   "config.yaml); flags override it.")),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, help="Continue the run in this folder exactly where its checkpoint (written every epoch and on "
                   "Ctrl-C/kill) left it, with its own options; options given too must be the run's own, except "
                   "--epochs (to extend it), --workers, --data (a moved folder), --cache and --cache-dir.")),
    inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--overwrite", help="Replace the run already in --out (its files are deleted); without it such a "
                                   "folder is refused.")),
    inspect.Parameter("nproc", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        1, help="Train with this many processes on this machine (torchrun's launcher, DistributedDataParallel: one "
                "per GPU, or CPU processes with gloo); --batch-size stays the global batch. Under an external "
                "torchrun or srun, leave it out.")),
])


def _without_nproc(arguments: list[str]) -> list[str]:
    """The command line minus --nproc N (or --nproc=N), for the processes the launcher starts."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            kept.append(argument)
    return kept
app.command("train", cls=Command)(train)


def plan(ctx: typer.Context, **values: Any) -> None:
    """Before training: will it fit, and how long will it take? Takes train's options and measures that run's
    training step (memory: parameters, activations, optimizer state; speed) on this machine, then prints the
    per-step memory against the free memory, images/s, the time of an epoch and of --epochs (or what fits in
    --time), and the image cache's size on disk. --batch-size auto shows the batch train would pick.
    """
    from cnnlab.commands.plan import plan as plan_run

    options = config_from_file(values["config"]) if values["config"] else {}
    options |= _typed_options(ctx, values)
    typer.echo(plan_run(TrainConfig(**options)).describe())


plan.__signature__ = inspect.Signature([
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    *config_parameters(),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, help="Read options from this YAML file, as train does; flags override it.")),
])
app.command("plan", cls=Command)(plan)


# --------------------------------------------------------------------------------------------
# eval / predict / demo / models
# --------------------------------------------------------------------------------------------

@app.command("eval", cls=Command)
def eval_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    data: Optional[str] = typer.Option(None, help="Image folder (default: the one the run was trained on; give "
                                       "its new place if it moved)."),
    split: str = typer.Option("val", help="val, test or train (the split as training made it)."),
    which: str = typer.Option("best", help="best or last weights."),
    tta: bool = typer.Option(False, "--tta", help="Average each image's prediction with its mirror image's."),
    batch_size: int = typer.Option(64, help="Images per batch."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(None, help="DataLoader workers (default: from the core count)."),
    max_bad: Optional[float] = typer.Option(None, help="Stop if more than this share of the split is unreadable "
                                            "(default: the run's)."),
    tiled: bool = typer.Option(False, "--tiled", help="Score whole images by a sliding window of the run's input "
                               "size (a run trained on tiles always does)."),
    scale: Optional[float] = typer.Option(None, help="Pixel scale for --tiled (default: the run's)."),
) -> None:
    """Evaluate a run: accuracy, per-class precision/recall/F1, confusion matrix, top losses, calibration."""
    from cnnlab.commands.evaluate import evaluate

    result = evaluate(run_dir, data=data, split=split, which=which, batch_size=batch_size, device=device,
                      workers=workers, max_bad=max_bad, tta=tta, tiled=tiled, scale=scale)
    typer.echo(result.describe())
    typer.echo(f"wrote {result.run_dir / f'eval_{split}.json'}, confusion_matrix_{split}.png, "
               f"top_losses_{split}.png, reliability_{split}.png and report.html")


@app.command("predict", cls=Command)
def predict_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`, or a model.onnx written by "
                                  "`cnnlab export` (run by onnxruntime; --which and --device do not apply)."),
    inputs: list[str] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(3, help="Classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (errors too)."),
    tta: bool = typer.Option(False, "--tta", help="Average each image's prediction with its mirror image's."),
    which: str = typer.Option("best", help="best or last weights."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    max_bad: Optional[float] = typer.Option(None, help="Fail (exit 2) if more than this share of the inputs "
                                            "cannot be predicted (default: the run's)."),
    tiled: bool = typer.Option(False, "--tiled", help="Slide a window of the run's input size over the whole "
                               "image (a run trained on tiles always does)."),
    scale: Optional[float] = typer.Option(None, help="Pixel scale for --tiled (default: the run's; 1 = the file's "
                                          "own pixels)."),
    heatmap: Optional[str] = typer.Option(None, help="Write <image>.heatmap.png into this folder: the probability "
                                          "of the predicted class (or --class) for every window position."),
    class_name: Optional[str] = typer.Option(None, "--class", help="The class the heatmap shows."),
) -> None:
    """Predict the top-k classes of images with a trained run or its exported ONNX file.

    Every input gets a line: its classes, or why it could not be predicted. Exit code 0 when every input
    was predicted, 1 when some could not be (each says why), 2 when more than --max-bad of them could not
    (judged over 20 inputs or more; with fewer, a share says little: 1 of 3 is already 33%).
    """
    from cnnlab.commands.predict import check_failures, exit_code, predict, run_max_bad

    rows = predict(run_dir, inputs, top_k=top_k, which=which, device=device, tta=tta, tiled=tiled, scale=scale,
                   heatmap=heatmap, heatmap_class=class_name)
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False))
        elif "error" in row:
            typer.echo(f"{row['path']}: error: {row['error']}")
        else:
            typer.echo(f"{row['path']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
                       + (f"  (heatmap: {row['heatmap']})" if "heatmap" in row else ""))
    max_bad = run_max_bad(run_dir) if max_bad is None else max_bad
    check_failures(rows, max_bad)
    if exit_code(rows, max_bad):
        failed = sum("error" in row for row in rows)
        typer.echo(f"{failed} of {len(rows)} inputs could not be predicted (see the error lines)", err=True)
        raise typer.Exit(1)


@app.command("export", cls=Command)
def export_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    format: str = typer.Option("onnx", "--format", help="File format (onnx)."),
    out: Optional[str] = typer.Option(None, help="File to write (default: RUN_DIR/model.onnx; its metadata also "
                                      "goes to OUT.json)."),
    which: str = typer.Option("best", help="best or last weights."),
    data: Optional[str] = typer.Option(None, help="Image folder to check the export on (default: the run's; give "
                                       "its new place if it moved)."),
    tolerance: float = typer.Option(1e-3, help="Largest accepted |onnxruntime - PyTorch| logit difference, "
                                    "relative to max(1, largest |logit|)."),
) -> None:
    """Export a run's weights to ONNX with its classes and preprocessing, verified with onnxruntime.

    The file takes float32 (N, 3, S, S) images already resized/cropped and normalised as the run does, and gives
    logits (N, K). Before writing, onnxruntime runs it on real images of the run's data at batch sizes 1, 2 and 5;
    if its logits differ from PyTorch's by more than --tolerance, nothing is written and the exit code is 2.
    `cnnlab predict model.onnx IMAGES` then predicts like the run.
    """
    from cnnlab.commands.export import export

    result = export(run_dir, format=format, out=out, which=which, data=data, tolerance=tolerance)
    typer.echo(result.describe())


@app.command("serve", cls=Command)
def serve_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    port: int = typer.Option(8000, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback (127.0.0.1, ::1, "
                             "localhost) needs --allow-remote."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a --host other machines can reach "
                                      "(no login, no TLS: a warning is printed)."),
    max_upload_mb: float = typer.Option(32.0, help="Largest upload in MB; bigger bodies get 413 while they are "
                                        "read."),
    which: str = typer.Option("best", help="best or last weights."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threads: int = typer.Option(4, help="Uploads decoded at once (bounds memory; the model runs one at a time)."),
) -> None:
    """Serve a small local web app: drop images, see the top classes and where the network looked.

    One page at http://HOST:PORT/ and a JSON API for scripts:
    `curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/api/predict`.
    Images are decoded in memory with the run's pixel cap and never written to disk. Ctrl-C stops.
    """
    from cnnlab.commands.serve import serve

    serve(run_dir, port=port, host=host, allow_remote=allow_remote, max_upload_mb=max_upload_mb, which=which,
          device=device, threads=threads)


@app.command(cls=Command)
def demo(
    data: Optional[str] = typer.Option(None, help="Where to keep the built-in dataset (default: user cache)."),
    out: str = typer.Option("runs/demo", help="Run folder (a previous demo run there is replaced)."),
    epochs: Optional[int] = typer.Option(None, help="Override the demo's number of epochs."),
) -> None:
    """Synthesise the built-in dataset if absent, train, evaluate, summarise."""
    from cnnlab.commands.demo import demo as run_demo

    result = run_demo(data=data, out=out, epochs=epochs)
    typer.echo(result.train.summary())
    if result.train.evaluation is not None:
        typer.echo(result.train.evaluation.describe())
    typer.echo(f"demo finished in {result.seconds:.0f}s; open {result.train.run_dir / 'report.html'} to see everything")


@app.command(cls=Command)
def models() -> None:
    """List the model names `--model` accepts."""
    from cnnlab.models import list_models

    for name in list_models():
        typer.echo(name)


# --------------------------------------------------------------------------------------------
# lr-find / augment-preview / compare / report
# --------------------------------------------------------------------------------------------

@app.command("lr-find", cls=Command)
def lr_find_command(
    data: str = typer.Option(..., help=_help("data")),
    model: str = typer.Option(_d("model"), help=_help("model")),
    img_size: int = typer.Option(_d("img_size"), help=_help("img_size")),
    batch_size: int = typer.Option(_d("batch_size"), help=_help("batch_size")),
    optimizer: str = typer.Option(_d("optimizer"), help=_help("optimizer")),
    steps: int = typer.Option(200, help="Steps of the range test (fewer on a small dataset; the loader is cycled)."),
    seed: int = typer.Option(_d("seed"), help=_help("seed")),
    device: str = typer.Option(_d("device"), help=_help("device")),
    workers: Optional[int] = typer.Option(_d("workers"), help=_help("workers")),
    run: Optional[str] = typer.Option(None, help="Run folder: write RUN/lr_find.png and lr_find.json there."),
    out: Optional[str] = typer.Option(None, help="Where to write the plot (default: runs/lr_find/<data>-<model>.png)."),
) -> None:
    """Run the learning-rate range test, print the suggested peak LR and plot loss vs LR."""
    from cnnlab.commands.lr_find import find_lr

    result, path = find_lr(data, model=model, img_size=img_size, batch_size=batch_size, optimizer=optimizer,
                           steps=steps, out=out, run=run, seed=seed, device=device, workers=workers)
    typer.echo(result.describe())
    typer.echo(f"wrote {path}; train with --lr {result.suggestion:.2e} (or --lr auto)")


@app.command("augment-preview", cls=Command)
def augment_preview_command(
    data: str = typer.Option(..., help=_help("data")),
    augment: str = typer.Option(_d("augment"), help=_help("augment")),
    augment_on: str = typer.Option(_d("augment_on"), help=_help("augment_on")),
    n: int = typer.Option(8, help="Augmented reads per image (columns after the original)."),
    images: int = typer.Option(4, help="Training images to show (rows)."),
    img_size: int = typer.Option(_d("img_size"), help=_help("img_size")),
    seed: int = typer.Option(_d("seed"), help="Seed for the choice of images and the random transforms."),
    run: Optional[str] = typer.Option(None, help="Run folder: write RUN/augment_preview.png (shown in the report)."),
    out: Optional[str] = typer.Option(None, help="Where to write the grid (default: "
                                      "runs/augment_preview/<data>.png)."),
) -> None:
    """Show training images as evaluated and as N random augmented reads: augmentation happens on the fly."""
    from pathlib import Path

    from cnnlab.commands.augment_preview import augment_preview

    path = augment_preview(data, augment=augment, n=n, images=images, img_size=img_size, seed=seed,
                           augment_on=augment_on, out=Path(run) / "augment_preview.png" if run else out)
    typer.echo(f"wrote {path}")


@app.command("compare", cls=Command)
def compare_command(
    data: str = typer.Option(..., help=_help("data")),
    models: str = typer.Option("mlp,simple_cnn", help="Comma-separated model names; `cnnlab models` lists them."),
    epochs: int = typer.Option(_d("epochs"), help=_help("epochs")),
    img_size: int = typer.Option(_d("img_size"), help=_help("img_size")),
    batch_size: int = typer.Option(_d("batch_size"), help=_help("batch_size")),
    seed: int = typer.Option(_d("seed"), help="Random seed, the same for every model."),
    device: str = typer.Option(_d("device"), help=_help("device")),
    workers: Optional[int] = typer.Option(_d("workers"), help=_help("workers")),
    out: str = typer.Option("runs/compare", help="Folder for one run per model and compare.md/.json/.png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the runs of an earlier compare in --out."),
) -> None:
    """Train several models (e.g. an MLP and a CNN) with identical settings and print one table."""
    from cnnlab.commands.compare import compare

    names = [name.strip() for name in models.split(",") if name.strip()]
    result = compare(data, names, epochs=epochs, img_size=img_size, batch_size=batch_size, seed=seed, out=out,
                     device=device, workers=workers, overwrite=overwrite)
    typer.echo(result.describe())
    typer.echo(f"wrote {result.out_dir / 'compare.md'}, compare.json and compare.png")


@app.command("sweep", cls=Command)
def sweep_command(
    data: str = typer.Option(..., help=_help("data")),
    img_size: str = typer.Option("64,96,128", help="Image sizes to compare, comma-separated (each at least the "
                                 "model's minimum)."),
    tile: Optional[int] = typer.Option(None, help="Compare pixel scales instead: every run trains on tiles of this "
                                       "side, at each --scale."),
    scale: Optional[str] = typer.Option(None, help="With --tile: the pixel scales to compare, comma-separated (e.g. "
                                        "0.25,0.5)."),
    time: str = typer.Option("2m", help="Wall-clock budget of every run, the same for each size (e.g. 90s, 2m, 10m)."),
    model: str = typer.Option(_d("model"), help=_help("model")),
    model_option: list[str] = typer.Option([], help="Extra model option NAME=VALUE, repeatable (e.g. widths=[16,32])."),
    batch_size: str = typer.Option(str(_d("batch_size")), help=_help("batch_size")),
    seed: int = typer.Option(_d("seed"), help="Random seed, the same for every run."),
    device: str = typer.Option(_d("device"), help=_help("device")),
    workers: Optional[int] = typer.Option(_d("workers"), help=_help("workers")),
    cache: str = typer.Option(_d("cache"), help=_help("cache")),
    out: str = typer.Option("runs/sweep", help="Folder for one run per size and sweep.html, sweep.json, sweep.md."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the runs of an earlier sweep in --out."),
) -> None:
    """Which image size is worth its cost? Train at each size for the same --time, then a table, accuracy against
    size and against training time, each run's verdict and a recommendation (the smallest size within the noise of
    the best), on one self-contained page: OUT/sweep.html."""
    from cnnlab.commands.sweep import sweep

    result = sweep(data, img_size, time=time, tile=tile, scales=scale, out=out, overwrite=overwrite, model=model,
                   model_options=_parse_model_options(model_option), batch_size=batch_size, seed=seed, device=device,
                   workers=workers, cache=cache)
    typer.echo(result.describe())
    typer.echo(f"wrote {result.out_dir / 'sweep.html'}, sweep.json, sweep.md and the plots")


@app.command("report", cls=Command)
def report_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
) -> None:
    """Rebuild RUN_DIR/report.html: one self-contained page with the verdict, curves, evaluation and data."""
    from cnnlab.runs.report import write_report

    typer.echo(f"wrote {write_report(run_dir)}")


# --------------------------------------------------------------------------------------------
# summary / filter / inspect: what a network does, layer by layer
# --------------------------------------------------------------------------------------------

@app.command("summary", cls=Command)
def summary_command(
    model: str = typer.Option("simple_cnn", help="Model name; `cnnlab models` lists them."),
    input: str = typer.Option("3x1000x1000", "--input", help="One image as CxHxW (or HxW for 3 channels)."),
    num_classes: int = typer.Option(10, help="Classes of the classifier head."),
    mlp_hidden: int = typer.Option(1000, help="Hidden units of the MLP the parameter count is compared with."),
    model_option: list[str] = typer.Option([], help="Extra model option NAME=VALUE, repeatable (e.g. widths=[16,32,64])."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON instead."),
) -> None:
    """Layer table for one input size: shapes, parameters, MACs, receptive field, memory; vs an MLP."""
    from cnnlab.models.summary import summarize_model

    result = summarize_model(model, input, num_classes=num_classes, mlp_hidden=mlp_hidden,
                             **_parse_model_options(model_option))
    typer.echo(json.dumps(result.to_dict()) if as_json else result.describe())


@app.command("filter", cls=Command)
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
    from cnnlab.commands.filters import filter_image

    result = filter_image(image, kernel=kernel, stride=stride, padding=padding, pool=pool, pool_size=pool_size,
                          out=out, size=size)
    typer.echo(result.describe())


@app.command("explain", cls=Command)
def explain_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    images: list[str] = typer.Argument(..., help="Image files or folders (their images, recursively)."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Show the evidence for this class (default: "
                                             "each image's predicted class)."),
    out: Optional[str] = typer.Option(None, help="Folder for <image>.gradcam.png (default: RUN_DIR/gradcam)."),
    which: str = typer.Option("best", help="best or last weights."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Grad-CAM: where in each image the network found the evidence for a class (tiled runs: stitched over
    the whole image)."""
    from cnnlab.commands.explain import explain

    result = explain(run_dir, images, class_name=class_name, out=out, which=which, device=device)
    typer.echo(result.describe())
    if any("error" in row for row in result.rows):
        raise typer.Exit(1)


@app.command("inspect", cls=Command)
def inspect_command(
    run_dir: str = typer.Argument(..., help="Run folder written by `cnnlab train`."),
    image: str = typer.Argument(..., help="Image whose feature maps to show."),
    out: Optional[str] = typer.Option(None, help="Folder for input.png, first_layer_filters.png, stage_<i>.png "
                                      "(default: RUN_DIR/inspect/<image name>)."),
    max_maps: int = typer.Option(32, help="Feature maps per stage (the most active channels)."),
    which: str = typer.Option("best", help="best or last weights."),
) -> None:
    """Show a trained run's first-layer filters and each stage's feature maps for one image."""
    from cnnlab.commands.inspect import inspect_run

    result = inspect_run(run_dir, image, out, max_maps=max_maps, which=which)
    typer.echo(result.describe())


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback; SIGTERM and
    Ctrl-C end a command after its cleanup, with one line and exit 143 or 130."""
    raise_on_sigterm()
    try:
        try:
            app()
        except SystemExit as done:
            if _from_ctrl_c(done):  # typer turns KeyboardInterrupt into a silent exit 130: say what happened
                raise KeyboardInterrupt from None
            if done.code not in (0, None) or not terminated():
                raise
        except Exception as error:
            # an error raised after SIGTERM came is its consequence, whatever it says: a DataLoader worker that the
            # group's signal reached before it could ignore it (torch's worker start-up installs its own SIGTERM
            # handler first: "worker killed by signal: Terminated"), or Terminated re-wrapped by a library that
            # catches what happens inside it (load_state_dict: "weights ... do not fit", exit 2 instead of 143)
            if not terminated() or isinstance(error, (TrainingInterrupted, Terminated)):
                raise
            raise Terminated("SIGTERM: stopped") from None
        if terminated():  # SIGTERM came but its exception was lost (see signals.terminated): still a stop
            raise Terminated("SIGTERM: stopped")
    except CnnlabError as error:
        if os.environ.get("RANK", "0") == "0":  # of several training processes, rank 0 speaks for all
            typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except TrainingInterrupted as error:  # checkpoint saved; the message says how to resume
        if os.environ.get("RANK", "0") == "0":
            typer.echo(str(error), err=True)
        end_children()
        sys.exit(error.exit_code)  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    except Terminated as error:
        if os.environ.get("RANK", "0") == "0":
            typer.echo(str(error), err=True)
        end_children()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            typer.echo("SIGINT: stopped (Ctrl-C)", err=True)
        end_children()
        sys.exit(130)


def _from_ctrl_c(done: SystemExit) -> bool:
    """Whether this exit is typer's conversion of a KeyboardInterrupt (Exit(130) raised from it)."""
    cause = done.__context__
    return done.code == 130 and cause is not None and isinstance(cause.__cause__, KeyboardInterrupt)


if __name__ == "__main__":
    main()
