"""Compute settings: precision resolution on both kinds of CPU, bf16 trains as well as fp32, compile fallback."""

from __future__ import annotations

import pytest
import torch
import yaml

from cnnlab.training.device import FAST_BF16_ENV, compile_model, cpu_has_fast_bf16, default_workers, \
    resolve_precision
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model


def test_auto_precision_follows_the_hardware(monkeypatch):
    """auto is bf16 exactly where the CPU reports AVX-512 BF16 or AMX, on both kinds of machine whatever this one
    is (the detection is faked); CNNLAB_FAST_BF16 overrides the detection (how the suite runs as the other kind)."""
    cpu = torch.device("cpu")
    monkeypatch.delenv(FAST_BF16_ENV, raising=False)
    for capabilities, expected in [({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16"),
                                   ({"avx512_bf16": False, "avx512": True, "avx2": True}, "fp32"), ({}, "fp32")]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
        auto = resolve_precision("auto", cpu)
        assert auto.name == expected, capabilities
        assert auto.autocast_dtype == (torch.bfloat16 if expected == "bf16" else None)
        assert auto.channels_last  # NHWC is faster on the CPU in every precision
    monkeypatch.setenv(FAST_BF16_ENV, "1")  # an AVX2 machine run as one with AVX-512 BF16
    assert cpu_has_fast_bf16() and resolve_precision("auto", cpu).name == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    monkeypatch.setenv(FAST_BF16_ENV, "0")  # and the other way round
    assert not cpu_has_fast_bf16() and resolve_precision("auto", cpu).name == "fp32"
    monkeypatch.setenv(FAST_BF16_ENV, "yes")
    with pytest.raises(CnnlabError, match="CNNLAB_FAST_BF16='yes' is not 0 or 1; unset it to detect the CPU"):
        resolve_precision("auto", cpu)
    assert resolve_precision("fp32", cpu).autocast_dtype is None  # an explicit precision never asks the CPU
    assert resolve_precision("bf16", cpu, channels_last=False).channels_last is False
    with pytest.raises(CnnlabError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", cpu)


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 2), (3, 2), (4, 3), (64, 8)])
def test_default_workers_follow_the_cores(monkeypatch, cores, workers):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_workers() == workers


@pytest.mark.slow
def test_bf16_learns_as_well_as_fp32(tmp_path, one_torch_thread):
    """Same seed, same batches: bf16 autocast (what auto picks on CPUs with AVX-512 BF16/AMX) must fit the data as
    fp32 does. Both precisions are named: comparing fp32 with auto would compare fp32 with itself on other CPUs
    (bf16 runs everywhere, emulated where the CPU lacks the instructions).

    Within a test's time budget the shapes dataset is learnt but not yet generalised (validation
    stays near chance for both), so the fitted accuracy is the one compared.
    """
    from cnnlab.data.synth import synthesize
    from cnnlab.commands.train import fit

    data = tmp_path / "shapes"
    synthesize(data, classes=3, per_class=40, size=64, seed=1, val_fraction=0.25)  # 90 train, 30 val
    common = dict(data=str(data), img_size=48, epochs=10, batch_size=10, lr=3e-3, workers=0, augment="none",
                  model="simple_cnn", model_options={"widths": [16, 32, 64, 128]}, dropout=0.0, cache="ram", verbose=False,
                  label_smoothing=0.0, ema=False, progressive=False)  # the plain loop: what precision changes
    fp32 = fit(out=str(tmp_path / "fp32"), precision="fp32", **common)
    bf16 = fit(out=str(tmp_path / "bf16"), precision="bf16", **common)
    for result, name in ((fp32, "fp32"), (bf16, "bf16")):
        assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["precision"] == name
    losses = [[row["train_loss"] for row in result.history] for result in (fp32, bf16)]
    assert losses[0] != losses[1]  # the bf16 run really rounded differently
    last32, last16 = fp32.history[-1], bf16.history[-1]
    assert last32["train_acc"] >= 0.8 and last16["train_acc"] >= 0.8, (fp32.history, bf16.history)  # chance 0.33
    assert abs(last32["train_acc"] - last16["train_acc"]) <= 6 / 90 + 1e-6  # within 6 of 90 images
    assert abs(last32["train_loss"] - last16["train_loss"]) < 0.2 * last32["train_loss"]
    assert abs(last32["val_acc"] - last16["val_acc"]) <= 5 / 30 + 1e-6


def test_compile_failure_falls_back_to_eager_with_one_warning(capsys):
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, widths=[8, 16]).eval()

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    net = compile_model(model, backend=broken_backend)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
        assert torch.equal(net(x), model(x))
    assert net.failure == "RuntimeError: no C++ compiler here"
    assert capsys.readouterr().err.count("warning: torch.compile failed") == 1


def test_compiled_model_gives_the_eager_result():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, widths=[8, 16]).eval()
    net = compile_model(model, backend="eager")  # dynamo tracing without a C++ toolchain
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-6)
    assert net.failure is None
