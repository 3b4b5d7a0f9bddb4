"""Shared fixtures: a tiny built-in dataset and one short training run, made once per session."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Keep every test offline and quiet: no hub downloads, a private cache folder per session.
os.environ.setdefault("TORCH_HOME", "/nonexistent-torch-home")

# Two kinds of x86-64 CPU: `--precision auto` is bf16 on one with AVX-512 BF16 or AMX and fp32 on the others
# (cnnlab.training.device). The suite passes on both: a test that needs a precision names it, a test about auto
# asserts what auto chose. To run it as the other kind of machine, set CNNLAB_FAST_BF16 (cpu_has_fast_bf16 reads
# it; child processes inherit it; bf16 runs emulated, slower, where the CPU lacks the instructions):
#     CNNLAB_FAST_BF16=1 make test    # an AVX2 / AVX-512 machine run as one with AVX-512 BF16/AMX
#     CNNLAB_FAST_BF16=0 make test    # a machine with AVX-512 BF16/AMX run as an AVX2 one
# The header of the test session says which kind it runs as.


def pytest_collection_modifyitems(config, items):
    """A test that asks for the `chromium` fixture is a browser test (the fast tier leaves those out)."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def pytest_report_header(config):
    from cnnlab.training.device import FAST_BF16_ENV, cpu_has_fast_bf16

    how = f"{FAST_BF16_ENV}={os.environ[FAST_BF16_ENV]}" if os.environ.get(FAST_BF16_ENV) else "detected"
    return f"cnnlab: --precision auto is {'bf16' if cpu_has_fast_bf16() else 'fp32'} on this CPU ({how})"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 classes x 16 images of 64 px, split 12/4 per class."""
    from cnnlab.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny-data")
    synthesize(root / "shapes", classes=3, per_class=16, size=64, seed=0, val_fraction=0.25)
    return root / "shapes"


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A 2-epoch simple_cnn run at 32 px on tiny_data (returns the TrainResult).

    In fp32, the precision prediction and evaluation run in: tests compare its validation numbers with what
    `evaluate` and `predict` compute, which a bf16 run (auto on a CPU with AVX-512 BF16/AMX) would only match
    to bf16's rounding. bf16 training is tested where it is named (tests/training/test_device.py, test_state.py)."""
    from cnnlab.commands.train import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return fit(data=str(tiny_data), img_size=32, epochs=2, batch_size=8, workers=0, out=str(out),
               model="simple_cnn", model_options={"widths": [8, 16]}, cache="off", precision="fp32", verbose=False)


@pytest.fixture(scope="session")
def tiny_tiled_run(tiny_data, tmp_path_factory):
    """A 1-epoch simple_cnn run on 32 px tiles of tiny_data's 64 px images at scale 1 (3x3 windows per image);
    fp32 as tiny_run."""
    from cnnlab.commands.train import fit

    out = tmp_path_factory.mktemp("runs") / "tiled"
    return fit(data=str(tiny_data), tile=32, scale=1.0, epochs=1, batch_size=8, workers=0, out=str(out),
               model="simple_cnn", model_options={"widths": [8, 16]}, cache="off", precision="fp32", verbose=False)


@pytest.fixture(scope="session")
def tiny_eval(tiny_run):
    """evaluate() of tiny_run on its 12 validation images (writes eval_val.json, plots, report.html)."""
    from cnnlab.commands.evaluate import evaluate

    return evaluate(tiny_run.run_dir, split="val", workers=0, verbose=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: on a shared 2-core machine spinning OpenMP threads
    waste most of the CPU, and forked children then never touch the parent's thread pool."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- shared by test files in several folders (imported: `from conftest import TINY, TILED, cnnlab`) --------------
# fit(data=..., epochs=..., out=..., **TINY): a simple_cnn of two narrow stages at 32 px, trained in seconds.
TINY = {"model": "simple_cnn", "img_size": 32, "batch_size": 8, "workers": 0, "model_options": {"widths": [8, 16]},
        "cache": "off", "verbose": False}
# fit(data=objects, ..., **TILED): 48 px tiles of the `objects` images decoded at half size (256 px).
TILED = {"model": "simple_cnn", "model_options": {"widths": [8, 16, 32]}, "tile": 48, "scale": 0.5,
         "batch_size": 8, "workers": 0, "cache": "off", "verbose": False}
ONE_THREAD = os.environ | {"OMP_NUM_THREADS": "1"}


def cnnlab(*args, cwd=None):
    """The real CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=ONE_THREAD)


@pytest.fixture(scope="session")
def objects(tmp_path_factory):
    """2 classes x 8 images of 512 px with small shapes (8 px at 512 / 64)."""
    from cnnlab.data.synth import synthesize

    root = tmp_path_factory.mktemp("objects") / "objects"
    synthesize(root, classes=2, per_class=8, size=512, seed=0, val_fraction=0.25, kind="objects")
    return root


@pytest.fixture(scope="session")
def tiled_run(objects, tmp_path_factory):
    """A 2-epoch run on TILED tiles of `objects` (returns the TrainResult)."""
    from cnnlab.commands.train import fit

    return fit(data=str(objects), epochs=2, out=str(tmp_path_factory.mktemp("tiled") / "run"), **TILED)


# --- headless Chromium: does a self-contained page render without errors? ----------------------------------------
CHROMIUM = Path("/usr/bin/chromium")

# Injected into a copy of the page, before the Content-Security-Policy <meta> (so the policy, which forbids
# scripts, still applies to everything after it). It records errors, failed loads and CSP violations, and on
# `load` writes what it found into a <pre> that --dump-dom returns.
CHECK_SCRIPT = """<script>
(function () {
  var problems = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    problems.push(t && t.tagName ? 'failed to load ' + t.tagName : 'error: ' + e.message);
  }, true);
  window.addEventListener('securitypolicyviolation', function (e) {
    problems.push('blocked by CSP: ' + e.violatedDirective + ' ' + e.blockedURI);
  });
  ['error', 'warn'].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      problems.push('console.' + level + ': ' + Array.prototype.join.call(arguments, ' '));
      original.apply(console, arguments);
    };
  });
  window.addEventListener('load', function () {
    var result = {
      problems: problems,
      images: Array.prototype.map.call(document.images, function (i) {
        return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                shown: i.getBoundingClientRect().width};
      }),
      sections: Array.prototype.map.call(document.querySelectorAll('section[id]'), function (s) {
        var h = s.querySelector('h2');
        return {id: s.id, heading: h ? h.textContent : '', height: s.getBoundingClientRect().height};
      }),
      height: document.documentElement.scrollHeight,
      overflow: document.documentElement.scrollWidth > window.innerWidth
    };
    var pre = document.createElement('pre');
    pre.id = 'cnnlab-check';
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
  });
})();
</script>
"""



class Chromium:
    """Headless Chromium for a page: check(page) -> what CHECK_SCRIPT found (problems, images, sections, height,
    overflow) and the browser's console lines; screenshot(page, height) -> a PNG of the real page."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path

    def run(self, *args: str) -> subprocess.CompletedProcess:
        profile = self.tmp_path / f"profile-{len(list(self.tmp_path.glob('profile-*')))}"
        command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                   f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=180)

    def check(self, page: Path) -> dict:
        text = page.read_text(encoding="utf-8")
        assert text.count("<head>\n") == 1
        checked = self.tmp_path / f"checked-{page.name}"
        checked.write_text(text.replace("<head>\n", "<head>\n" + CHECK_SCRIPT, 1), encoding="utf-8")
        run = self.run("--virtual-time-budget=5000", "--window-size=1280,1000", "--dump-dom", checked.as_uri())
        assert run.returncode == 0, run.stderr[-2000:]
        match = re.search(r'<pre id="cnnlab-check">(.*?)</pre>', run.stdout, re.S)
        assert match, f"the check script did not run; stderr: {run.stderr[-2000:]}"
        result = json.loads(html.unescape(match.group(1)))
        result["console"] = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
        return result

    def screenshot(self, page: Path, height: int) -> Path:
        path = self.tmp_path / f"{page.stem}_screenshot.png"
        shot = self.run(f"--window-size=1280,{height}", f"--screenshot={path}", page.as_uri())
        assert shot.returncode == 0 and path.is_file(), shot.stderr[-2000:]
        return path


@pytest.fixture
def chromium(tmp_path):
    """Headless Chromium (Chromium class); the test is skipped where it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium is not installed at /usr/bin/chromium "
                    "(apt-get install -y chromium; CI's .ci/run installs it)")
    return Chromium(tmp_path)
