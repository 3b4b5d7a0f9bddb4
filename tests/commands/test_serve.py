"""cnnlab serve: the JSON API on real images (the same top-k as `cnnlab predict`), every bad upload refused with a
clear 4xx, the body limit enforced while reading, Host and Origin checks, nothing written to disk, concurrent
requests, the errors of the command, and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import socket
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import numpy as np
import PIL.Image
import pytest
import yaml
from starlette.requests import Request
from starlette.testclient import TestClient

from cnnlab.commands.predict import predict
from cnnlab.commands.serve import serve
from cnnlab.serve.app import RequestError, allowed_hosts, bind, check_host, create_app, host_name, read_body
from cnnlab.data.images import read_at, read_image, save_image
from cnnlab.errors import CnnlabError

BASE = "http://127.0.0.1:8000"
CHROMIUM = Path("/usr/bin/chromium")


def val_images(data: Path) -> list[Path]:
    return sorted((data / "val").rglob("*.jpg"))


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run.run_dir, max_upload_mb=1), base_url=BASE) as test_client:
        yield test_client


def post_image(client, path: Path, form: bool = False, headers: dict | None = None, **kwargs):
    if form:
        return client.post("/api/predict", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                           headers=headers, **kwargs)
    return client.post("/api/predict", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"} | (headers or {}),
                       **kwargs)


def png_of(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    with PIL.Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


class _Server:
    """The app on a real uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.socket = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            threading.Event().wait(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


# --- the API on real images ------------------------------------------------------------------------------------------
def test_api_gives_predicts_top_k_and_a_grad_cam_overlay(client, tiny_run, tiny_data):
    images = val_images(tiny_data)
    expected = predict(tiny_run.run_dir, images, top_k=3, workers=0)
    for path, row in zip(images, expected):
        for form in (False, True):
            response = post_image(client, path, form=form)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert [t["class"] for t in answer["top"]] == [t["class"] for t in row["top"]]
            assert [t["probability"] for t in answer["top"]] == pytest.approx([t["probability"] for t in row["top"]],
                                                                             abs=1e-5)
            assert answer["name"] == (path.name if form else "upload")
            assert answer["image"] == {"width": 64, "height": 64, "format": "JPEG"}
            assert answer["overlay_kind"] == "grad-cam"
            overlay = png_of(answer["overlay"])
            assert overlay.shape == (32, 32, 3) and overlay.std() > 0  # the 32 px network view with the map over it
            assert response.headers["content-type"] == "application/json"


def test_top_k_and_info(client, tiny_data):
    path = val_images(tiny_data)[0]
    assert len(post_image(client, path, params={"top_k": 1}).json()["top"]) == 1
    assert len(post_image(client, path, params={"top_k": 99}).json()["top"]) == 3  # at most the classes
    bad = post_image(client, path, params={"top_k": "two"})
    assert bad.status_code == 400 and bad.json() == {"error": "top_k='two': give a whole number >= 1"}
    info = client.get("/api/info").json()
    assert info["classes"] == ["circle", "square", "triangle"] and info["max_upload_bytes"] == 1_000_000
    assert info["preprocessing"]["center_crop"] == 32


def test_tiled_run_answers_with_the_window_heatmap(tiny_tiled_run, tiny_data, tmp_path):
    images = val_images(tiny_data)[:4]
    expected = predict(tiny_tiled_run.run_dir, images, top_k=2, workers=0)
    with TestClient(create_app(tiny_tiled_run.run_dir), base_url=BASE) as tiled:
        for path, row in zip(images, expected):
            answer = post_image(tiled, path, params={"top_k": 2}).json()
            assert [t["class"] for t in answer["top"]] == [t["class"] for t in row["top"]]
            assert [t["probability"] for t in answer["top"]] == pytest.approx(
                [t["probability"] for t in row["top"]], abs=1e-5)
            assert answer["overlay_kind"] == "heatmap" and png_of(answer["overlay"]).shape == (64, 64, 3)
        small = tmp_path / "small.png"
        save_image(np.full((20, 40, 3), 128, np.uint8), small)
        response = tiled.post("/api/predict", content=small.read_bytes(), headers={"Content-Type": "image/png"})
        assert response.status_code == 422
        assert response.json()["error"] == ("upload is 40x20 px at this run's pixel scale 1, smaller than one of its "
                                            "32 px windows; send a larger image")


# --- bad uploads -----------------------------------------------------------------------------------------------------
def _jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png_bomb() -> bytes:
    """A valid 8x8 PNG whose header claims 20000 x 20000 px (400 MP, over the 200 MP cap)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", 20000, 20000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _jpeg_bomb() -> bytes:
    import struct

    data = bytearray(_jpeg_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    return bytes(data)


BAD_UPLOADS = {
    "empty": (b"", "image/jpeg", 400, "the upload is empty (0 bytes)"),
    "text named as an image": (b"this is not an image\n", "image/jpeg", 415, "upload: not an image file"),
    "JPEG cut in its pixels": (_jpeg_bytes(size=96)[:len(_jpeg_bytes(size=96)) // 2], "image/jpeg", 422,
                               "upload: corrupt or truncated"),
    "JPEG cut in its header": (_jpeg_bytes()[:300], "image/jpeg", 422, "upload: cannot read the header"),
    "PNG bomb": (_png_bomb(), "image/png", 422, "upload: 20000x20000 = 400 MP is over the pixel cap of 200 MP"),
    "JPEG bomb": (_jpeg_bomb(), "image/jpeg", 422, "upload: 30000x30000 = 900 MP is over the pixel cap of 200 MP"),
    "text/plain": (b"hello", "text/plain", 415, "Content-Type text/plain: send the image's bytes as image/*"),
    "JSON": (b'{"image": 1}', "application/json", 415, "Content-Type application/json"),
    "no Content-Type": (_jpeg_bytes(), "", 415, "Content-Type missing"),
    "form without a boundary": (b"--x\r\n", "multipart/form-data", 400, "a multipart/form-data body without a boundary"),
    "over the limit": (b"\xff\xd8" + bytes(1_000_000), "image/jpeg", 413,
                       "the upload is 1,000,002 bytes, over the limit of 1,000,000 bytes (1 MB, cnnlab serve"),
}


@pytest.mark.parametrize("name", BAD_UPLOADS)
def test_every_bad_upload_gets_a_clear_4xx(client, name, monkeypatch):
    body, content_type, status, message = BAD_UPLOADS[name]
    if "bomb" in name:  # refused from the header: no pixel buffer is ever allocated
        monkeypatch.setattr(PIL.Image.core, "new", lambda *args: pytest.fail("a pixel buffer for a forged header"))
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"].startswith(message), response.json()


def test_unknown_paths_and_methods_answer_json(client):
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found: GET /api/nothing; the API is POST "
                                                                      "/api/predict"}
    assert client.get("/api/predict").status_code == 405 and "Method Not Allowed" in client.get("/api/predict").json()[
        "error"]


def test_form_uploads_name_the_file_and_need_one(client):
    response = client.post("/api/predict", files={"image": ("notes.jpg", b"plain text", "image/jpeg")})
    assert response.status_code == 415 and response.json()["error"] == "notes.jpg: not an image file (unknown format)"
    fields_only = (b"--b0undary\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\nno file here\r\n"
                   b"--b0undary--\r\n")
    response = client.post("/api/predict", content=fields_only,
                           headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 400 and response.json()["error"] == "the form holds no file; send the image in " \
                                                                       "the field 'image'"
    response = client.post("/api/predict", data={"comment": "no file"})
    assert response.status_code == 415  # a urlencoded form is no image


def test_the_runs_pixel_cap_applies(tiny_run, tiny_data, tmp_path):
    run = shutil.copytree(tiny_run.run_dir, tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(config | {"max_pixels": 4000}))  # 64x64 = 4096 px
    with TestClient(create_app(run), base_url=BASE) as capped:
        response = post_image(capped, val_images(tiny_data)[0])
    assert response.status_code == 422 and "64x64 = 0 MP is over the pixel cap" in response.json()["error"]


def test_the_limit_is_enforced_while_the_body_arrives():
    """read_body stops pulling chunks as soon as the count passes the limit: the rest is never read."""
    chunks = [bytes(100_000)] * 50  # 5 MB in 100 kB chunks, no Content-Length (chunked upload)
    pulled = []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": chunks[len(pulled) - 1], "more_body": len(pulled) < len(chunks)}

    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/api/predict"}, receive)

    async def read():
        return await read_body(request, limit=250_000)

    with pytest.raises(RequestError) as refused:
        anyio.run(read)
    assert refused.value.status == 413 and len(pulled) == 3  # 300 kB read of 5 MB
    assert refused.value.message.startswith("the upload passed the limit of 250,000 bytes while it was read")
    declared = Request({"type": "http", "method": "POST", "headers": [(b"content-length", b"5000000")],
                        "path": "/api/predict"}, receive)
    pulled.clear()
    with pytest.raises(RequestError, match="the upload is 5,000,000 bytes, over the limit of 250,000 bytes"):
        anyio.run(read_body, declared, 250_000)
    assert pulled == []  # refused from the header, before a byte of the body


# --- Host and Origin -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host, status", [("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200),
                                          ("LOCALHOST", 200), ("evil.example:8000", 400), ("127.0.0.1.nip.io", 400),
                                          ("", 400)])
def test_host_header_must_name_this_server(client, host, status):
    response = client.get("/", headers={"Host": host})
    assert response.status_code == status
    if status == 400:
        assert "is not this server" in response.json()["error"]


def test_pages_of_other_sites_cannot_use_the_api(client, tiny_data):
    path = val_images(tiny_data)[0]
    other = post_image(client, path, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403 and "requests from pages of http://evil.example are refused" in other.json()["error"]
    assert post_image(client, path, headers={"Origin": "http://127.0.0.1:8001"}).status_code == 403  # another port
    assert post_image(client, path, headers={"Origin": BASE}).status_code == 200  # the page itself


def test_host_names_and_remote_binding():
    assert host_name("localhost:8000") == "localhost" and host_name("[::1]:80") == "[::1]" and host_name("a.b") == "a.b"
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("192.168.1.5")[-1] == "192.168.1.5" and allowed_hosts("::1") == ["127.0.0.1", "localhost",
                                                                                          "[::1]"]
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")
    assert check_host("127.0.0.1", False) is None and check_host("localhost", False) is None
    assert check_host("::1", False) is None
    with pytest.raises(CnnlabError, match="--host 0.0.0.0 would let other machines reach the server.*--allow-remote"):
        check_host("0.0.0.0", False)
    assert check_host("0.0.0.0", True).startswith("warning: serving on 0.0.0.0: anyone who can reach this machine")


# --- nothing on disk, concurrency ----------------------------------------------------------------------------------
def test_nothing_uploaded_is_written(client, tiny_run, tmp_path, monkeypatch):
    """Uploads are decoded in memory: the temporary folder and the run folder stay as they were, even for a form
    part above python-multipart's 1 MB in-memory default."""
    empty = tmp_path / "tmp"
    empty.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(empty))
    before = sorted(p.name for p in tiny_run.run_dir.rglob("*"))
    big = tmp_path / "big.png"
    save_image(np.random.default_rng(0).integers(0, 255, (600, 550, 3), dtype=np.uint8), big)  # ~1 MB PNG
    assert 0.9e6 < big.stat().st_size < 1e6
    with TestClient(create_app(tiny_run.run_dir, max_upload_mb=2), base_url=BASE) as roomy:
        response = roomy.post("/api/predict", files={"image": ("big.png", big.read_bytes(), "image/png")})
    assert response.status_code == 200 and response.json()["image"]["width"] == 550
    for form in (False, True):
        post_image(client, big, form=form)
    assert list(empty.iterdir()) == []
    assert sorted(p.name for p in tiny_run.run_dir.rglob("*")) == before
    big.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_concurrent_requests_get_their_own_answers(client, tiny_data):
    images = val_images(tiny_data)
    alone = {path: post_image(client, path).json() for path in images}
    jobs = [images[k % len(images)] for k in range(36)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda path: (path, post_image(client, path, form=True)), jobs))
    for path, response in answers:
        assert response.status_code == 200
        answer = response.json()
        assert [t["class"] for t in answer["top"]] == [t["class"] for t in alone[path]["top"]]
        assert [t["probability"] for t in answer["top"]] == pytest.approx(
            [t["probability"] for t in alone[path]["top"]], abs=1e-6)
        assert answer["overlay"] == alone[path]["overlay"]  # Grad-CAMs of concurrent requests never mix


def test_a_model_without_feature_maps_answers_without_overlay(tiny_run, tiny_data):
    """An MLP has no stage to explain: the same answer, no overlay."""
    import dataclasses

    import torch

    from cnnlab.serve.predictor import UploadPredictor
    from cnnlab.models import create_model
    from cnnlab.runs.inference import open_trained

    torch.manual_seed(0)
    trained = open_trained(tiny_run.run_dir, device="cpu")
    trained = dataclasses.replace(trained, model=create_model("mlp", num_classes=3, img_size=32).eval())
    path = val_images(tiny_data)[0]
    prediction = UploadPredictor(trained).predict(path.read_bytes(), path.name, top_k=3)
    assert prediction.overlay_png is None and prediction.overlay_kind is None
    with torch.no_grad():
        expected = torch.softmax(trained.model(trained.pipeline(trained.preprocessing.eval_transform()(
            read_at(path, trained.preprocessing.resolution))[None]))[0], 0)
    got = {t["class"]: t["probability"] for t in prediction.top}
    assert [got[c] for c in trained.record.classes] == pytest.approx(expected.tolist(), abs=1e-6)


def test_the_event_loop_answers_while_a_prediction_runs(tiny_run, tiny_data, monkeypatch):
    """A prediction held in its worker thread does not stop the server from answering other requests."""
    import httpx

    app = create_app(tiny_run.run_dir)
    entered, release = threading.Event(), threading.Event()
    real = app.state.predictor.predict

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(app.state.predictor, "predict", held)
    body = val_images(tiny_data)[0].read_bytes()
    with _Server(app) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, server.url + "api/predict", content=body,
                              headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert entered.wait(60)
        page = httpx.get(server.url, timeout=30)  # answered while the prediction still waits in its thread
        assert page.status_code == 200 and not pending.done()
        release.set()
        assert pending.result().status_code == 200


# --- the command's errors ------------------------------------------------------------------------------------------
def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from cnnlab.cli import main

    monkeypatch.setattr(sys, "argv", ["cnnlab", *map(str, args)])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code, capsys.readouterr().err


def test_remote_host_without_the_flag_is_refused(tiny_run, monkeypatch, capsys):
    code, error = _cli(monkeypatch, capsys, "serve", tiny_run.run_dir, "--host", "0.0.0.0")
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith("error: --host 0.0.0.0 would let other machines reach the server")


def test_a_port_in_use_is_a_clear_error(tiny_run, monkeypatch, capsys):
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        code, error = _cli(monkeypatch, capsys, "serve", tiny_run.run_dir, "--port", port)
    finally:
        taken.close()
    assert code == 2 and error == f"error: port {port} on 127.0.0.1 is in use (another server is listening there); " \
                                  f"choose another with --port, e.g. --port {port + 1}\n"


def test_cli_defaults_are_the_librarys():
    import inspect

    from typer.main import get_command

    from cnnlab.cli import app

    params = {p.name: p.default for p in get_command(app).commands["serve"].params}
    defaults = {name: p.default for name, p in inspect.signature(serve).parameters.items()}
    for name in ("port", "host", "allow_remote", "max_upload_mb", "which", "device", "threads"):
        assert params[name] == defaults[name], name
    assert (defaults["host"], defaults["port"], defaults["max_upload_mb"]) == ("127.0.0.1", 8000, 32)


def test_a_run_without_weights_is_a_clear_error(tiny_run, tmp_path, monkeypatch, capsys):
    run = shutil.copytree(tiny_run.run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("*.safetensors"))
    code, error = _cli(monkeypatch, capsys, "serve", run, "--port", "0")
    assert code == 2 and error.startswith(f"error: run folder {run} has no weights")
    with pytest.raises(CnnlabError, match="--max-upload-mb 0: give a size in MB above 0"):
        create_app(tiny_run.run_dir, max_upload_mb=0)


# --- the page --------------------------------------------------------------------------------------------------------
def test_the_page_is_self_contained_and_locked_down(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "img-src data:" in policy
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy  # the one inline script, by its hash; nothing else runs
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no CDN, no remote anything
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    assert "simple_cnn" in page and "circle, square, triangle" in page and "at most 1 MB" in page
    assert response.headers["x-frame-options"] == "DENY" and response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.browser
def test_upload_through_the_page_in_headless_chromium(tiny_run, tiny_data, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium is not installed at /usr/bin/chromium "
                    "(apt-get install -y chromium; CI's .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    image = val_images(tiny_data)[0]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image")
    with _Server(create_app(tiny_run.run_dir)) as server, playwright.sync_playwright() as driver:
        expected = __import__("httpx").post(server.url + "api/predict", content=image.read_bytes(),
                                            headers={"Content-Type": "image/jpeg"}).json()
        browser = driver.chromium.launch(executable_path=str(CHROMIUM),
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            problems = []
            page.on("console", lambda message: problems.append(f"{message.type}: {message.text}")
                    if message.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.goto(server.url)
            page.set_input_files("#files", [str(image), str(not_an_image)])
            page.wait_for_selector(".result[data-status='done']", timeout=60_000)
            page.wait_for_selector(".result[data-status='error']", timeout=60_000)
            done = page.locator(".result[data-status='done']")
            assert done.locator("h2").text_content() == image.name
            rows = done.locator(".top li")
            assert rows.count() == 3
            assert rows.nth(0).locator(".class").text_content() == expected["top"][0]["class"]
            assert rows.nth(0).locator(".p").text_content() == f"{100 * expected['top'][0]['probability']:.1f}%"
            overlay = done.locator("img")
            assert overlay.get_attribute("alt") == f"Grad-CAM of {expected['top'][0]['class']}"
            assert overlay.evaluate("img => img.complete && img.naturalWidth") == 32
            failed = page.locator(".result[data-status='error'] .status").text_content()
            assert failed == "notes.jpg: not an image file (unknown format)"
            page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
            # no CSP violation, no script error: only Chromium's own line for the refused upload
            assert problems == ["error: Failed to load resource: the server responded with a status of 415 "
                                "(Unsupported Media Type)"], problems
        finally:
            browser.close()
    assert read_image(tmp_path / "serve_page.png").shape[1] > 100
    print(f"page screenshot: {tmp_path / 'serve_page.png'}")


def test_load_benchmark_runs(tiny_run, tiny_data, tmp_path, monkeypatch):
    """benchmarks/serve_load.py, small: a real uvicorn in a subprocess, all answers 200, the report written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).parents[2] / "benchmarks" /
                                                  "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "serve_load", module)  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    result = module.load_test(tiny_run.run_dir, val_images(tiny_data), requests=16, concurrency=4)
    assert result.statuses == {200: 16} and len(result.latencies) == 16
    assert 0 < result.p50 <= result.p95 and result.peak_rss_mb > 50
    report = module.write_report(result, tmp_path / "serve_load.md", command="test")
    assert "| p50 latency |" in report.read_text() and "16 requests, 4 concurrent" in report.read_text()
