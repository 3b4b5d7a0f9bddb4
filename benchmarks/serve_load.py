"""Load test of `cnnlab serve` (not a test): a real uvicorn in a subprocess on 127.0.0.1, a fixed number of
uploads from a fixed number of concurrent clients, latency percentiles, throughput and the server's peak memory.

    .venv/bin/python benchmarks/serve_load.py                      # builds a small resnet9 run on 1024 px shapes
    .venv/bin/python benchmarks/serve_load.py --run runs/shapes --images data/shapes/val --requests 200

Every request is a real JPEG upload answered with the top-3 and a Grad-CAM overlay (one forward and one backward
pass, under the server's model lock), so this measures the whole path: body reading, decoding with the pixel cap,
resize and crop, Grad-CAM, PNG encoding, JSON. Only 127.0.0.1 is ever contacted. Results go to
benchmarks/results/serve_load.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serve_load.md"
STARTUP_TIMEOUT = 180  # seconds for the server to import torch and load the model on a busy machine


@dataclass
class LoadResult:
    """What one load test measured."""

    run_dir: str
    images: list[str]
    requests: int
    concurrency: int
    threads: int = 4  # the server's --threads
    latencies: list[float] = field(default_factory=list)  # seconds per request, in completion order
    statuses: dict[int, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    first_request_seconds: float = 0.0  # the warm-up request, not in the latencies
    rss_idle_mb: float = 0.0  # the server after loading the model and one request
    peak_rss_mb: float = 0.0  # VmHWM: the server's largest resident set over its whole life
    startup_seconds: float = 0.0
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before / after

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies, 50))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95))

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_seconds


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status_kb(pid: int, key: str) -> float:
    """A memory line of /proc/PID/status (VmRSS, VmHWM) in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise KeyError(key)


def load_test(run_dir: str | os.PathLike, images: list[Path], requests: int = 200, concurrency: int = 8,
              threads: int = 4) -> LoadResult:
    """Start `cnnlab serve RUN` on a free loopback port, send `requests` uploads of `images` (round robin) from
    `concurrency` clients, measure, stop the server."""
    result = LoadResult(str(run_dir), [str(p) for p in images], requests, concurrency, threads)
    bodies = [Path(p).read_bytes() for p in images]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(run_dir), "--port", str(port),
                               "--threads", str(threads)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"the server stopped: {log.read().decode(errors='replace')[-2000:]}")
                try:
                    if client.get("/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - started > STARTUP_TIMEOUT:
                    raise RuntimeError(f"the server did not answer within {STARTUP_TIMEOUT} s")
                time.sleep(0.2)
            result.startup_seconds = time.perf_counter() - started
            headers = {"Content-Type": "image/jpeg"}
            tick = time.perf_counter()
            client.post("/api/predict", content=bodies[0], headers=headers).raise_for_status()
            result.first_request_seconds = time.perf_counter() - tick
            result.rss_idle_mb = _status_kb(server.pid, "VmRSS") / 1024

            def one(k: int) -> tuple[int, float]:
                tick = time.perf_counter()
                response = client.post("/api/predict", content=bodies[k % len(bodies)], headers=headers)
                return response.status_code, time.perf_counter() - tick

            result.load_average = (os.getloadavg()[0], 0.0)
            tick = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                for status, seconds in pool.map(one, range(requests)):
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    result.latencies.append(seconds)
            result.wall_seconds = time.perf_counter() - tick
            result.load_average = (result.load_average[0], os.getloadavg()[0])
            result.peak_rss_mb = _status_kb(server.pid, "VmHWM") / 1024
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return result


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def write_report(result: LoadResult, out: str | os.PathLike, command: str) -> Path:
    """benchmarks/results/serve_load.md: the command, the machine, the run, the numbers."""
    import onnxruntime
    import starlette
    import torch
    import uvicorn

    from cnnlab.data.images import image_header
    from cnnlab.runs.reader import read_run

    record = read_run(result.run_dir)
    sizes = sorted({image_header(p)[:2] for p in result.images})
    mean_kb = np.mean([Path(p).stat().st_size for p in result.images]) / 1e3
    latencies = np.array(result.latencies) * 1000
    lines = [
        "# cnnlab serve under load",
        "",
        f"Generated by `{command}` on {datetime.datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "| machine | |", "|---|---|",
        f"| cpu | {_cpu()} |",
        f"| cores usable | {len(os.sched_getaffinity(0))} |",
        f"| python / torch / uvicorn / starlette / onnxruntime | {platform.python_version()} / {torch.__version__} / "
        f"{uvicorn.__version__} / {starlette.__version__} / {onnxruntime.__version__} |",
        f"| 1-minute load average before / after | {result.load_average[0]:.1f} / {result.load_average[1]:.1f} "
        "(other jobs share these cores: absolute numbers vary with them) |",
        "",
        f"Server: `cnnlab serve` on 127.0.0.1 (uvicorn, one process, {result.threads} decoding threads, the model "
        "under one lock), "
        f"run `{Path(result.run_dir).name}`: {record.model} at {record.img_size} px, {len(record.classes)} classes. "
        f"Every request uploads one JPEG ({len(result.images)} files of {', '.join(f'{w}x{h}' for w, h in sizes)} px, "
        f"{mean_kb:.0f} kB on average) as the body and gets the top-3 and a Grad-CAM overlay (PNG, base64) back.",
        "",
        f"**{result.requests} requests, {result.concurrency} concurrent** (httpx, one thread per client):",
        "",
        "| measure | value |", "|---|---|",
        f"| answers | {', '.join(f'{n}x {status}' for status, n in sorted(result.statuses.items()))} |",
        f"| p50 latency | {np.percentile(latencies, 50):.0f} ms |",
        f"| p95 latency | {np.percentile(latencies, 95):.0f} ms |",
        f"| max latency | {latencies.max():.0f} ms |",
        f"| mean latency | {latencies.mean():.0f} ms |",
        f"| throughput | {result.throughput:.1f} requests/s ({result.wall_seconds:.1f} s for all) |",
        f"| server resident memory after start-up and one request | {result.rss_idle_mb:.0f} MB |",
        f"| server peak resident memory (VmHWM) | {result.peak_rss_mb:.0f} MB |",
        f"| start-up (import, load the model, first answer) / first request | {result.startup_seconds:.1f} s / "
        f"{1000 * result.first_request_seconds:.0f} ms |",
        "",
        "With 8 clients and one model lock, requests queue: the latency is about 8 x the time of one prediction, "
        "and throughput is what one process computes on these cores.",
    ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def build_run(folder: Path) -> tuple[Path, list[Path]]:
    """A small realistic run: the built-in shapes at 1024 px (6 classes x 10), resnet9 at 128 px, 2 epochs."""
    from cnnlab.commands.train import fit
    from cnnlab.data.synth import synthesize

    data = folder / "shapes"
    synthesize(data, classes=6, per_class=10, size=1024, seed=0, val_fraction=0.2)
    fit(data=str(data), model="resnet9", img_size=128, epochs=2, batch_size=16, workers=0, cache="off",
        out=str(folder / "run"), verbose=False)
    return folder / "run", sorted((data / "val").rglob("*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run folder to serve (default: build a small resnet9 run in a temp folder)")
    parser.add_argument("--images", help="folder of JPEGs to upload (default: the built run's val images)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.run:
            run, images = Path(args.run), sorted(Path(args.images).rglob("*.jpg"))
        else:
            run, images = build_run(Path(scratch))
        result = load_test(run, images, args.requests, args.concurrency)
        command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
        path = write_report(result, args.out, command.strip())
    print(path.read_text())


if __name__ == "__main__":
    main()
