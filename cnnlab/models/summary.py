"""What a network does to one input size, layer by layer: shapes, parameters, cost, receptive field.

One row per leaf layer call, in forward order, found by forward hooks on a real forward pass:

    output shape     COMPUTED with the lecture's formula (cnnlab.scratch.output_size) for Conv2d,
                     MaxPool2d and AvgPool2d, mapped for Linear/Flatten/adaptive pooling, kept for
                     norms and activations, and CHECKED against the forward pass (a mismatch is a bug)
    parameters       weights and biases the layer owns (counted at its first call only)
    MACs             multiply-accumulates for one image: Conv2d C_out·H_out·W_out·(C_in/groups)·kH·kW,
                     Linear in·out per position, norm layers one per output element (y = a·x + b at
                     inference); activations, pooling and dropout 0 (comparisons and copies, no products)
    receptive field  input pixels one output value can see: rf += (k − 1)·d·jump, jump *= s
                     through convolutions and poolings ("all" after global pooling or a Linear layer)
    memory           output elements × bytes per element (4 for fp32), one image; the sum is roughly
                     what training keeps for the backward pass (in-place layers are counted too)

The forward pass runs on torch's `meta` device: tensors with shapes and no data, so a 1000×1000 image
(or a 3-billion-parameter MLP) costs nothing. If a layer has no meta implementation, it falls back to
a real forward of one image under no_grad.

The receptive field follows tensors, not the row order: a TorchFunctionMode carries it through every
torch op, so a residual addition or a squeeze-excitation product takes the field of its feature-map
operand, and ResNet's 1×1 shortcut convolutions do not count their stride twice.

Layers whose window never reaches the last rows or columns of their input (output_size_info(...)
.dropped > 0: the division in (H + 2p − k)/s + 1 is not exact and the remainder is real pixels, not
padding) are flagged: the lecture's "handle with care".
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision.ops import Permute, StochasticDepth

from cnnlab.config import Help
from cnnlab.errors import CnnlabError
from cnnlab.html import escape
from cnnlab.html import table as html_table
from cnnlab.scratch import as_pair, output_size_info

# Layers that return a tensor of their input's shape.
SHAPE_KEEPING = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.Dropout, nn.Dropout2d, nn.Identity,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Softmax, StochasticDepth,
)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
WINDOW_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)  # the ones the output-size formula describes


# --------------------------------------------------------------------------------------------
# input shapes
# --------------------------------------------------------------------------------------------

def parse_input_shape(text: str | tuple | list) -> tuple[int, int, int]:
    """'3x1000x1000' -> (3, 1000, 1000); 'HxW' means 3 channels; tuples are checked the same way."""
    if isinstance(text, str):
        parts = re.split(r"\s*[x×X,]\s*", text.strip())
        if not all(part.isdigit() for part in parts):
            parts = None
    else:
        parts = list(text)
    if not parts or len(parts) not in (2, 3) or any(int(p) < 1 for p in parts):
        raise CnnlabError(f"input shape {text!r} must look like CxHxW or HxW with positive integers, "
                          f"e.g. 3x1000x1000 or 224x224")
    shape = tuple(int(p) for p in parts)
    return (3, *shape) if len(shape) == 2 else shape


def mlp_first_layer_params(input_shape: tuple[int, int, int], hidden: int) -> int:
    """Parameters of a fully connected layer from C·H·W inputs to `hidden` units: weights + biases."""
    channels, height, width = input_shape
    return channels * height * width * hidden + hidden


# --------------------------------------------------------------------------------------------
# receptive field, carried along with every tensor
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """Receptive field of the values of one tensor, in input pixels."""

    size: tuple[int, int] | None  # (h, w) input pixels one value sees; None = the whole input
    jump: tuple[int, int]  # input pixels between neighbouring values (the product of the strides so far)


def _window_field(field: Field, kernel_size, stride, dilation) -> Field:
    """rf += (k − 1)·d·jump, jump *= s, per axis."""
    if field.size is None:
        return field
    kernel, stride, dilation = as_pair(kernel_size, "kernel_size"), as_pair(stride, "stride"), as_pair(dilation, "dilation")
    size = tuple(r + (k - 1) * d * j for r, k, d, j in zip(field.size, kernel, dilation, field.jump))
    return Field(size, tuple(j * s for j, s in zip(field.jump, stride)))


def _tensors(value):
    """Every tensor in an argument (lists and tuples one level deep, as torch.cat takes them)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, torch.Tensor):
                yield item


class _FieldTracker(TorchFunctionMode):
    """Gives each tensor a torch op returns the receptive field of its inputs.

    The result of a combination (x + shortcut, x * se_scale) takes the field of the operands with its own
    spatial size (the feature maps, not a 1×1 scale), the largest of them; the layer hooks then overwrite
    it for convolutions and poolings.
    """

    def __init__(self):
        super().__init__()
        self.fields: dict[int, tuple[torch.Tensor, Field]] = {}  # the tensor is kept so its id stays unique

    def get(self, tensor: torch.Tensor) -> Field | None:
        """The field recorded for this tensor object, if any."""
        entry = self.fields.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def set(self, tensor: torch.Tensor, field: Field) -> None:
        """Record the field of a tensor."""
        self.fields[id(tensor)] = (tensor, field)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = [(t, self.get(t)) for value in (*args, *kwargs.values()) for t in _tensors(value)]
        inputs = [(t, f) for t, f in inputs if f is not None]
        for out in _tensors(result):
            if not inputs:
                continue  # made from nothing we follow (weights, constants)
            same = [f for t, f in inputs if t.shape[2:] == out.shape[2:]] or [f for _, f in inputs]
            if any(f.size is None for f in same):
                self.set(out, Field(None, same[0].jump))
            else:
                self.set(out, max(same, key=lambda f: f.size[0] * f.size[1]))
        return result


# --------------------------------------------------------------------------------------------
# one layer: its computed shape, cost and field
# --------------------------------------------------------------------------------------------

def _window_geometry(module: nn.Module) -> dict | None:
    """kernel_size, stride, padding, dilation as (h, w) pairs for Conv2d/MaxPool2d/AvgPool2d, else None."""
    if not isinstance(module, WINDOW_LAYERS):
        return None
    padding = module.padding
    if padding == "valid":
        padding = 0
    if isinstance(module, nn.Conv2d) and type(module).forward is not nn.Conv2d.forward:
        padding = "same"  # it pads in its own forward (timm's Conv2dSame: TensorFlow's "same"), not by .padding
    return {
        "kernel_size": as_pair(module.kernel_size, "kernel_size"),
        "stride": as_pair(module.stride if module.stride is not None else module.kernel_size, "stride"),
        "padding": padding if padding == "same" else as_pair(padding, "padding"),
        "dilation": as_pair(getattr(module, "dilation", 1), "dilation"),
    }


def _computed_shape(module: nn.Module, in_shape: tuple, geometry: dict | None):
    """Output shape of one image from the input shape (no batch axis), and the per-axis OutputSize
    of window layers; (None, None) where only the forward pass knows (then nothing is checked)."""
    if geometry is not None:
        if geometry["padding"] == "same" or getattr(module, "ceil_mode", False):
            return None, None  # not the floor formula; the forward pass says
        channels, height, width = in_shape
        infos = [output_size_info(size, k, s, p, d) for size, k, s, p, d in zip(
            (height, width), geometry["kernel_size"], geometry["stride"], geometry["padding"], geometry["dilation"])]
        out_channels = module.out_channels if isinstance(module, nn.Conv2d) else channels
        return (out_channels, infos[0].size, infos[1].size), infos
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        target = module.output_size if isinstance(module.output_size, (tuple, list)) else (module.output_size,) * 2
        return (in_shape[0], *(size if size is not None else in_shape[1 + axis]  # None keeps that axis
                               for axis, size in enumerate(target))), None
    if isinstance(module, nn.Linear):
        return (*in_shape[:-1], module.out_features), None
    if isinstance(module, nn.Flatten):
        full = (1, *in_shape)  # Flatten's dims count the batch axis
        start, end = module.start_dim % len(full), module.end_dim % len(full)
        flat = 1
        for size in full[start:end + 1]:
            flat *= size
        return (*full[:start], flat, *full[end + 1:])[1:], None
    if isinstance(module, Permute):  # convnext's channels-last blocks; dims count the batch axis
        full = (1, *in_shape)
        return tuple(full[d] for d in module.dims)[1:], None
    if isinstance(module, SHAPE_KEEPING):
        return tuple(in_shape), None
    return None, None


def _macs(module: nn.Module, out_shape: tuple) -> int:
    """Multiply-accumulates for one image (see the module docstring for what counts)."""
    out_elements = 1
    for size in out_shape:
        out_elements *= size
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return out_elements * (module.in_channels // module.groups) * kernel_h * kernel_w
    if isinstance(module, nn.Linear):
        return out_elements * module.in_features  # (positions · out) outputs, each a sum of `in` products
    if isinstance(module, NORM_LAYERS):
        return out_elements
    return 0


def _field_after(module: nn.Module, field: Field, geometry: dict | None, in_shape: tuple, out_shape: tuple) -> Field:
    """The receptive field of a layer's output, from its input's."""
    if geometry is not None:
        return _window_field(field, geometry["kernel_size"], geometry["stride"], geometry["dilation"])
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        if tuple(out_shape[1:]) == (1, 1):
            return Field(None, field.jump)
        # Exactly a plain pooling when the sizes divide; otherwise windows of ceil(in/out), approximately.
        kernel = tuple(-(-i // o) for i, o in zip(in_shape[1:], out_shape[1:]))
        stride = tuple(i // o for i, o in zip(in_shape[1:], out_shape[1:]))
        return _window_field(field, kernel, stride, 1)
    if isinstance(module, nn.Linear) and len(in_shape) == 1:
        return Field(None, field.jump)  # each output mixes every input feature
    return field


# --------------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------------

@dataclass
class ModelSummary:
    """A model's layer table for one input shape, its totals and the lecture's MLP comparison."""

    model: str  # registry name, or the class name for a model passed in
    input_shape: tuple[int, int, int]  # (C, H, W) of one image
    rows: list[dict]  # one per leaf layer call, forward order; keys in _row below
    total_params: int  # every parameter of the model, including any held outside the rows' layers
    total_macs: int  # sum of the rows' MACs, one image
    total_activation_bytes: int  # sum of the rows' output memory, one image
    mlp_hidden: int  # units of the comparison MLP's first hidden layer
    mlp_params: int  # that layer's parameters: C·H·W·mlp_hidden + mlp_hidden
    device: str  # where the forward pass ran: "meta" (no data) or "cpu" (the fallback)

    @property
    def flagged(self) -> list[dict]:
        """Rows whose layer never reads its input's last rows or columns."""
        return [row for row in self.rows if row["flagged"]]

    @property
    def rows_params(self) -> int:
        """Parameters owned by the rows' layers (total_params minus any held by container modules)."""
        return sum(row["params"] for row in self.rows)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for reports)."""
        return {**asdict(self), "flagged": [row["index"] for row in self.flagged]}

    def describe(self) -> str:
        """The table, totals, flagged layers and MLP comparison as printed by `cnnlab summary`."""
        return _describe(self)

    def _repr_html_(self) -> str:
        """In a notebook: the layer table the run report shows, its totals and the MLP comparison."""
        return _describe_html(self)


class ShapeCheckError(RuntimeError):
    """The formula and the forward pass disagree on a layer's output shape: a bug in this module."""


def _row(index, name, module, in_shape, out_shape, geometry, infos, params, field, nbytes, computed) -> dict:
    dropped = [info.dropped for info in infos] if infos else [0, 0]
    return {
        "index": index,
        "name": name,
        "type": type(module).__name__,
        "kernel_size": list(geometry["kernel_size"]) if geometry else None,
        "stride": list(geometry["stride"]) if geometry else None,
        "padding": (geometry["padding"] if geometry["padding"] == "same" else list(geometry["padding"]))
        if geometry else None,
        "dilation": list(geometry["dilation"]) if geometry else None,
        "input_shape": list(in_shape),
        "output_shape": list(out_shape),  # one image, no batch axis
        "computed": computed,  # True: from the formula and checked against the forward pass
        "params": params,
        "macs": _macs(module, out_shape),
        "receptive_field": list(field.size) if field.size is not None else None,  # None: the whole input
        "jump": list(field.jump),
        "activation_bytes": nbytes,
        "exact": all(info.exact for info in infos) if infos else None,
        "dropped": dropped,  # input rows, columns never read
        "flagged": any(dropped),
    }


def _trace(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Run model(x) with hooks on every leaf layer; return the rows (shapes checked)."""
    names = {module: name for name, module in model.named_modules()}
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    tracker = _FieldTracker()
    rows, seen = [], set()

    def hook(module, args, output):
        inputs = [t for a in args for t in _tensors(a)]
        outputs = list(_tensors(output))
        if not inputs or not outputs:
            return
        tensor, out = inputs[0], outputs[0]
        in_shape, real = tuple(tensor.shape[1:]), tuple(out.shape[1:])
        geometry = _window_geometry(module)
        computed, infos = _computed_shape(module, in_shape, geometry)
        if computed is not None and tuple(computed) != real:
            raise ShapeCheckError(f"summary bug: {names[module]} ({type(module).__name__}) on {in_shape}: "
                                  f"the formula gives {computed}, the forward pass {real}")
        field = _field_after(module, tracker.get(tensor) or Field((1, 1), (1, 1)), geometry, in_shape, real)
        tracker.set(out, field)
        params = 0 if module in seen else sum(p.numel() for p in module.parameters(recurse=False))
        seen.add(module)
        rows.append(_row(len(rows) + 1, names[module], module, in_shape, real, geometry, infos, params, field,
                         out.numel() // out.shape[0] * out.element_size(), computed is not None))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), tracker:
            tracker.set(x, Field((1, 1), (1, 1)))
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def _input_error(error: Exception, name: str, shape: tuple) -> Exception:
    """A forward failure as the user's error (wrong channels, wrong size), unless it is our own bug."""
    if isinstance(error, ShapeCheckError):
        return error
    return CnnlabError(f"{name} cannot take an input of {'x'.join(map(str, shape))} (C x H x W): {error}")


def summary(model: nn.Module, input_shape: str | tuple, mlp_hidden: int = 1000, name: str | None = None) -> ModelSummary:
    """Layer table of `model` for one image of `input_shape` (C, H, W); the model itself is not changed."""
    shape = parse_input_shape(input_shape)
    if mlp_hidden < 1:
        raise CnnlabError(f"--mlp-hidden {mlp_hidden}: the comparison MLP needs at least 1 hidden unit")
    name = name or type(model).__name__
    shape_text = "x".join(map(str, shape))
    fixed = getattr(model, "fixed_input_size", None)  # models that flatten the image (mlp) take one size only
    if isinstance(fixed, int) and shape[1:] != (fixed, fixed):
        raise CnnlabError(f"{name} takes {fixed}x{fixed} inputs only (it flattens the image), got {shape_text}")
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != shape[0]:
        raise CnnlabError(f"{name} takes {first_conv.in_channels}-channel images (its first Conv2d has "
                          f"in_channels={first_conv.in_channels}), got {shape_text}; use e.g. "
                          f"{first_conv.in_channels}x{shape[1]}x{shape[2]}")
    minimum = getattr(model, "min_input_size", 1)
    if min(shape[1:]) < minimum:
        raise CnnlabError(f"input {shape_text} is too small for {name}: its sides must be "
                          f">= {minimum} pixels")
    on_meta = next(model.parameters(), torch.empty(0)).device.type == "meta"
    # A copy on `meta`: the caller's model keeps its weights, device and train/eval mode.
    work = (model if on_meta else copy.deepcopy(model).to("meta")).eval()
    device = "meta"
    try:
        rows = _trace(work, torch.empty(1, *shape, device="meta"))
    except (NotImplementedError, RuntimeError) as error:
        if isinstance(error, ShapeCheckError) or "meta" not in str(error).lower():
            raise _input_error(error, name, shape) from None
        # A layer without a meta kernel (or one that reads values): one real image instead.
        device = "cpu"
        real = (copy.deepcopy(model).to_empty(device="cpu") if on_meta else copy.deepcopy(model).cpu()).eval()
        try:
            rows = _trace(real, torch.zeros(1, *shape))
        except (RuntimeError, ValueError) as error:
            raise _input_error(error, name, shape) from None
    except ValueError as error:
        raise _input_error(error, name, shape) from None
    return ModelSummary(
        model=name, input_shape=shape, rows=rows,
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=sum(row["macs"] for row in rows),
        total_activation_bytes=sum(row["activation_bytes"] for row in rows),
        mlp_hidden=mlp_hidden, mlp_params=mlp_first_layer_params(shape, mlp_hidden), device=device)


def summarize_model(name: Annotated[str, Help("Model name; `cnnlab models` lists them.", flag="--model")]
                    = "simple_cnn",
                    input_shape: Annotated[str | tuple, Help("One image as CxHxW (or HxW for 3 channels).",
                                                             flag="--input")] = "3x1000x1000",
                    num_classes: Annotated[int, Help("Classes of the classifier head.")] = 10,
                    mlp_hidden: Annotated[int, Help("Hidden units of the MLP the parameter count is compared with.")]
                    = 1000,
                    model_options: Annotated[dict | None, Help("Extra model option NAME=VALUE, repeatable (e.g. "
                                                               "widths=[16,32,64]).", flag="--model-option")] = None,
                    **options) -> ModelSummary:
    """Layer table for one input size: shapes, parameters, MACs, receptive field, memory; vs an MLP.

    Builds registered model `name` with no weights (meta device) and summarises it; `model_options` (or keywords)
    are its factory options."""
    from cnnlab.models import create_model

    options = (model_options or {}) | options
    shape = parse_input_shape(input_shape)
    options.setdefault("img_size", shape[1])  # models sized by their input (mlp) need it; the others ignore it
    try:
        with torch.device("meta"):  # shapes only: even a 3-billion-parameter MLP allocates nothing
            model = create_model(name, num_classes, **options)
    except (NotImplementedError, RuntimeError):  # a constructor that reads tensor values (regnet)
        model = create_model(name, num_classes, **options)
    return summary(model, shape, mlp_hidden=mlp_hidden, name=name)


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------

def _compact(number: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for divisor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= divisor:
            return f"{number / divisor:.2f}{prefix}{unit}"
    return f"{number:.0f}{unit}"


def _bytes(count: int) -> str:
    """Bytes in KiB/MiB/GiB."""
    for divisor, suffix in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if count >= divisor:
            return f"{count / divisor:.1f} {suffix}"
    return f"{count} B"


def _pair(values) -> str:
    """[3, 3] -> '3', [1, 7] -> '1x7'."""
    return str(values[0]) if values[0] == values[1] else f"{values[0]}x{values[1]}"


def _geometry_text(row: dict) -> str:
    if row["kernel_size"] is None:
        return ""
    padding = row["padding"] if row["padding"] == "same" else _pair(row["padding"])
    return f"k={_pair(row['kernel_size'])} s={_pair(row['stride'])} p={padding}"


LAYER_COLUMNS = (("index", "#"), ("name", "layer"), ("type", "type"), ("kernel_size", "kernel"),
                 ("stride", "stride"), ("output_shape", "output (C \u00d7 H \u00d7 W)"), ("params", "parameters"),
                 ("macs", "MACs"), ("receptive_field", "receptive field"))


def layer_table(rows: list[dict]) -> str:
    """The rows as an HTML table (the report's Model section, a notebook); longer than 30 rows it folds away."""
    def cell(key: str, value: Any) -> str:
        if key == "receptive_field" and value is None:
            return "all"  # after global pooling every output sees the whole image
        if isinstance(value, (list, tuple)):
            return escape(" \u00d7 ".join(str(v) for v in value))
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "" if value is None else escape(value)
    columns = [(key, title) for key, title in LAYER_COLUMNS if rows and key in rows[0]]
    html = html_table([title for _, title in columns],
                      [[cell(key, row.get(key)) for key, _ in columns] for row in rows],
                      numeric={i for i, (key, _) in enumerate(columns) if key in ("index", "params", "macs")},
                      row_classes=["flagged" if row.get("flagged") else "" for row in rows])
    flagged = [f"#{row.get('index')}" for row in rows if row.get("flagged")]
    note = ""
    if flagged:  # named, not only highlighted: a notebook does not have the report's CSS
        note = (f'<p class="muted">Highlighted layers ({escape(", ".join(flagged))}) never read the last rows or '
                "columns of their input: (H + 2 padding - kernel) / stride is not a whole number.</p>")
    if len(rows) > 30:
        return f"<details><summary>Layer table ({len(rows)} layers)</summary>{html}</details>{note}"
    return html + note


def _describe_html(result: ModelSummary) -> str:
    shape_text = "x".join(map(str, result.input_shape))
    ratio = result.total_params / result.mlp_params
    return (f"<p><b>{escape(result.model)}</b> on one {shape_text} image (C x H x W)</p>{layer_table(result.rows)}"
            f"<p>Parameters: <b>{result.total_params:,}</b>; multiply-accumulates per image: "
            f"<b>{result.total_macs:,}</b>; layer outputs for one image (fp32): "
            f"{_bytes(result.total_activation_bytes)}.</p>"
            f"<p>MLP comparison: a fully connected first layer of {result.mlp_hidden:,} units on this image has "
            f"<b>{result.mlp_params:,}</b> parameters, in that layer alone; {escape(result.model)} has "
            f"{100 * ratio:.3g} % of that.</p>")


def _describe(result: ModelSummary) -> str:
    shape_text = "x".join(map(str, result.input_shape))
    header = ("#", "layer", "type", "kernel", "output", "params", "MACs", "RF", "memory", "")
    table = [header]
    for row in result.rows:
        field = "all" if row["receptive_field"] is None else _pair(row["receptive_field"])
        table.append((str(row["index"]), row["name"], row["type"], _geometry_text(row),
                      "x".join(map(str, row["output_shape"])), f"{row['params']:,}", _compact(row["macs"]),
                      field, _bytes(row["activation_bytes"]), "drops pixels (!)" if row["flagged"] else ""))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {0, 5, 6, 7, 8}  # numbers right-aligned
    lines = [f"{result.model} on one {shape_text} image (C x H x W), forward pass on {result.device}; "
             "shapes computed with (H + 2p - k)/s + 1 and checked against the forward pass", ""]
    for line in table:
        lines.append("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
    lines.append("")
    lines.append(f"total: {result.total_params:,} parameters, {_compact(result.total_macs)} multiply-accumulates, "
                 f"{_bytes(result.total_activation_bytes)} of layer outputs for one image (fp32)")
    if result.rows_params != result.total_params:
        lines.append(f"  ({result.total_params - result.rows_params:,} of the parameters belong to container "
                     "modules, e.g. layer scales, and appear in no row)")
    lines.append("RF: receptive field, the input pixels one output value can see (rf += (k-1)*d*jump, jump *= s)")
    if result.flagged:
        lines.append("")
        lines.append(f"{len(result.flagged)} layer(s) never read the last rows/columns of their input "
                     "((H + 2p - k)/s is not a whole number; handle with care):")
        for row in result.flagged:
            rows_dropped, columns_dropped = row["dropped"]
            lines.append(f"  #{row['index']} {row['name']} ({row['type']} {_geometry_text(row)}) on "
                         f"{row['input_shape'][1]}x{row['input_shape'][2]}: ignores the last {rows_dropped} "
                         f"row(s) and {columns_dropped} column(s)")
    channels, height, width = result.input_shape
    ratio = result.total_params / result.mlp_params
    lines.append("")
    lines.append(f"MLP comparison: a fully connected first layer of {result.mlp_hidden:,} units on a {shape_text} "
                 f"image has {channels}*{height}*{width}*{result.mlp_hidden} weights + {result.mlp_hidden:,} biases "
                 f"= {result.mlp_params:,} parameters, in that layer alone.")
    lines.append(f"{result.model} has {result.total_params:,} parameters in all: {100 * ratio:.3g} % of that"
                 + (f" ({1 / ratio:,.0f}x fewer)." if ratio < 1 else "."))
    return "\n".join(lines)


__all__ = ["Field", "ModelSummary", "layer_table", "mlp_first_layer_params", "parse_input_shape", "summarize_model", "summary"]
