"""The web app of a trained run (Starlette; `cnnlab serve RUN` runs it on uvicorn: cnnlab.commands.serve).

    GET  /              one self-contained page (inline CSS and plain JavaScript, no CDN): drop or choose images,
                        see the top-k classes and the Grad-CAM overlay (the per-window heatmap for tiled runs)
    POST /api/predict   for scripts, one image per request: the image as the body (Content-Type image/* or
                        application/octet-stream) or the file field "image" of a multipart form; ?top_k=N. Answers
                        {"top": [{"class", "probability"}], "overlay": "data:image/png;base64,...", "unknown":
                        true when the top probability is below the run's threshold (then "top" are the closest
                        classes), "threshold", ...}
                        or {"error": "..."} with 400 (bad request), 403 (from another site's page), 413 (over
                        --max-upload-mb), 415 (not an image), 422 (damaged, over the pixel cap, too small for a tile)
    GET  /api/info      the run's model, classes, preprocessing and the upload limit

Safety, in the order a request meets it:
  - the server binds 127.0.0.1 unless --host names another address and --allow-remote says so (with a warning);
  - the Host header must name this server (127.0.0.1, localhost, [::1], or the bound host), which defeats DNS
    rebinding; a request from a page of another origin (an Origin header other than this server) gets 403;
  - the body is counted as it arrives and refused with 413 as soon as it passes the limit (a Content-Length over
    it is refused before reading anything); multipart forms are parsed in memory, within that limit;
  - the image is decoded from memory by cnnlab.data.images with the run's pixel cap, checked from the header
    before any pixel is decoded, and the same rules as training; nothing uploaded is ever written to disk;
  - the model is loaded once at start-up; predictions run in worker threads (at most `threads` decoding at once,
    which bounds memory) so the event loop keeps answering, and the model itself under one lock.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import html
import ipaddress
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import anyio
from python_multipart.multipart import FormParser, parse_options_header
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from cnnlab.serve.predictor import UploadPredictor
from cnnlab.errors import CnnlabError, ImageReadError
from cnnlab.runs.inference import open_trained
from cnnlab.runs.reject import resolve_threshold

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 32  # a 50-megapixel JPEG is ~25 MB; anything larger is rarely a photo
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # the Host header names always accepted
IMAGE_FIELD = "image"  # the multipart field the page sends (any file field is taken when it is absent)
PAGE = Path(__file__).with_name("page.html")
# HTTP status per ImageReadError.problem; anything else that cannot be decoded is 422
STATUS_BY_PROBLEM = {"empty-file": 400, "not-an-image": 415, "unsupported-mode": 415}


class RequestError(Exception):
    """A request we refuse: the HTTP status and one sentence for {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------
# where the server listens, and which Host headers name it
# --------------------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str | None:
    """None for a loopback host; for another, a CnnlabError without `allow_remote`, else the warning to print."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise CnnlabError(f"--host {host} would let other machines reach the server (no login, no TLS); serve on "
                          f"{DEFAULT_HOST} (the default), or add --allow-remote if that is what you want")
    return (f"warning: serving on {host}: anyone who can reach this machine there can upload images and use the model "
            "(no login, no TLS); stop it with Ctrl-C when done")


def allowed_hosts(host: str) -> list[str]:
    """Host-header names the app answers to: the loopback names, and when bound elsewhere that host (for a wildcard
    address, this machine's name and the addresses it resolves to)."""
    names = list(LOOPBACK_HOSTS)
    if not is_loopback(host):
        bare = host.strip("[]")
        if bare in ("0.0.0.0", "::"):
            machine = {socket.gethostname(), socket.getfqdn()}
            for name in list(machine):
                try:
                    machine |= {info[4][0] for info in socket.getaddrinfo(name, None)}
                except OSError:
                    pass
            candidates = machine
        else:
            candidates = {bare}
        names += sorted(f"[{n}]" if ":" in n else n.lower() for n in candidates)
    return names


def host_name(header: str) -> str:
    """The name in a Host header, without the port: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '[::1]'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else ""
    return header.rsplit(":", 1)[0] if ":" in header else header


class HostCheck:
    """ASGI middleware: 400 {"error"} unless the Host header names this server. A web page whose DNS name was made
    to point at 127.0.0.1 (DNS rebinding) still sends its own name, so it cannot reach the app."""

    def __init__(self, app, hosts: list[str]):
        self.app = app
        self.hosts = set(hosts)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            header = Headers(scope=scope).get("host", "")
            if host_name(header) not in self.hosts:
                response = JSONResponse({"error": f"Host {header or '(none)'!r} is not this server; use "
                                                  f"http://{DEFAULT_HOST}:PORT/ (or the --host it was started with)"},
                                        status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a CnnlabError saying why not (in use, not allowed, unknown host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise CnnlabError(f"cannot serve on --host {host}: {error.strerror}; use {DEFAULT_HOST}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after Ctrl-C (TIME_WAIT)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:  # SO_REUSEADDR still refuses a port someone is listening on
            raise CnnlabError(f"port {port} on {host} is in use (another server is listening there); choose another "
                              f"with --port, e.g. --port {port + 1}") from None
        raise CnnlabError(f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port "
                          "(ports below 1024 need root)") from None
    return sock


# --------------------------------------------------------------------------------------------
# reading an upload
# --------------------------------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
    """The request body, counted as it arrives: 413 as soon as it passes `limit` bytes (nothing more is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the upload is {int(declared):,} bytes, over the limit of {limit:,} bytes "
                                f"({limit / 1e6:g} MB, cnnlab serve --max-upload-mb); send a smaller image")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the upload passed the limit of {limit:,} bytes while it was read "
                                    f"({limit / 1e6:g} MB, cnnlab serve --max-upload-mb); send a smaller image")
    return bytes(body)


def image_from_body(content_type: str, body: bytes, limit: int) -> tuple[bytes, str]:
    """(the image's bytes, its file name for messages) from a raw body or a multipart form."""
    kind, params = parse_options_header(content_type)
    kind = kind.decode("latin-1").lower()
    if kind == "multipart/form-data":
        return _from_form(params.get(b"boundary"), body, limit)
    if kind.startswith("image/") or kind == "application/octet-stream":
        return body, "upload"
    raise RequestError(415, f"Content-Type {kind or 'missing'}: send the image's bytes as image/* or "
                            f"application/octet-stream, or a multipart form with the file in the field '{IMAGE_FIELD}'")


def _from_form(boundary: bytes | None, body: bytes, limit: int) -> tuple[bytes, str]:
    """The file of field 'image' (or the first file) of a multipart body, parsed in memory."""
    if not boundary:
        raise RequestError(400, "a multipart/form-data body without a boundary; let the browser or `curl -F` build it")
    files = []
    # MAX_MEMORY_FILE_SIZE above the body limit: parts stay in memory, python-multipart never writes a file
    parser = FormParser("multipart/form-data", on_field=None, on_file=files.append, boundary=boundary,
                        config={"MAX_MEMORY_FILE_SIZE": limit + 1, "MAX_FIELDS": 16})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # noqa: BLE001 - python-multipart raises its own FormParserError subclasses
        raise RequestError(400, f"the multipart form cannot be parsed ({error})") from None
    if not files:
        raise RequestError(400, f"the form holds no file; send the image in the field '{IMAGE_FIELD}'")
    chosen = next((f for f in files if f.field_name == IMAGE_FIELD.encode()), files[0])
    chosen.file_object.seek(0)
    data = chosen.file_object.read()
    name = os.path.basename((chosen.file_name or b"upload").decode("utf-8", "replace"))[:120] or "upload"
    for part in files:
        part.close()
    return data, name


# --------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


def render_page(predictor: UploadPredictor, max_upload: int) -> tuple[str, str]:
    """(the page's HTML, its Content-Security-Policy): the inline script and style are allowed by their hashes,
    everything else (other scripts, frames, remote images, forms elsewhere) is not."""
    record = predictor.trained.record
    pre = predictor.trained.preprocessing
    if pre.tile:
        how = f"{pre.tile} px windows at pixel scale {pre.scale:g}; heatmap of the predicted class per window"
    else:
        how = f"{pre.center_crop} px centre crop; Grad-CAM of the predicted class" if predictor.has_cam else \
            f"{pre.center_crop} px centre crop (no feature maps: no overlay)"
    if predictor.threshold is not None:
        how += f"; unknown below a top probability of {predictor.threshold:.3f}"
    values = {"run": Path(record.run_dir).name, "model": record.model, "how": how,
              "classes": ", ".join(record.classes), "max_mb": f"{max_upload / 1e6:g}", "max_bytes": str(max_upload)}
    text = PAGE.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    hashes = {}
    for tag in ("script", "style"):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        hashes[tag] = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                               for b in blocks)
    policy = (f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; img-src data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return text, policy


def create_app(run_dir: str | os.PathLike, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, host: str = DEFAULT_HOST,
               which: str = "best", device: str = "auto", threads: int = 4, reject: str = "auto") -> Starlette:
    """The web app of a run: loads the model now (errors surface before any port is bound). `reject`: as predict's
    (auto: the run's reject.json, none without one; off; or a probability)."""
    if max_upload_mb <= 0:
        raise CnnlabError(f"--max-upload-mb {max_upload_mb:g}: give a size in MB above 0")
    predictor = UploadPredictor(open_trained(run_dir, which, device), resolve_threshold(reject, run_dir))
    limit = int(max_upload_mb * 1e6)
    page, policy = render_page(predictor, limit)
    hosts = allowed_hosts(host)
    decoding = anyio.CapacityLimiter(max(1, threads))

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=SECURITY_HEADERS | {"Content-Security-Policy": policy})

    async def api_predict(request: Request) -> Response:
        try:
            _check_origin(request)
            top_k = _top_k(request.query_params.get("top_k", "3"))
            body = await read_body(request, limit)
            if not body:
                raise RequestError(400, "the upload is empty (0 bytes); send an image file")
            data, name = image_from_body(request.headers.get("content-type", ""), body, limit)
            prediction = await anyio.to_thread.run_sync(_predict, predictor, data, name, top_k, limiter=decoding)
        except RequestError as error:
            return JSONResponse({"error": error.message}, status_code=error.status, headers=SECURITY_HEADERS)
        return JSONResponse(prediction.to_dict(), headers=SECURITY_HEADERS)

    async def info(request: Request) -> Response:
        record = predictor.trained.record
        return JSONResponse({"run": Path(record.run_dir).name, "model": record.model, "classes": record.classes,
                             "preprocessing": predictor.trained.preprocessing.to_dict(), "max_upload_bytes": limit},
                            headers=SECURITY_HEADERS)

    routes = [Route("/", index, methods=["GET"]), Route("/api/predict", api_predict, methods=["POST"]),
              Route("/api/info", info, methods=["GET"])]
    app = Starlette(routes=routes, middleware=[Middleware(HostCheck, hosts=hosts)],
                    exception_handlers={HTTPException: _http_error})
    app.state.predictor = predictor
    return app


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's own refusals (404 unknown path, 405 wrong method) as {"error": ...} like ours."""
    return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}; the API is POST /api/predict"},
                        status_code=error.status_code, headers=SECURITY_HEADERS)


def _predict(predictor: UploadPredictor, data: bytes, name: str, top_k: int):
    """In a worker thread: the prediction, or the RequestError that names what is wrong with the image."""
    try:
        return predictor.predict(data, name, top_k)
    except ImageReadError as error:
        raise RequestError(STATUS_BY_PROBLEM.get(error.problem, 422), f"{name}: {error.reason}") from None
    except CnnlabError as error:  # e.g. smaller than one tile of a tiled run
        raise RequestError(422, str(error)) from None


def _top_k(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise RequestError(400, f"top_k={value!r}: give a whole number >= 1")
    return int(value)


def _check_origin(request: Request) -> None:
    """403 for a request sent by a page of another origin (browsers name it in Origin; a form on any web site could
    otherwise post to this server): only the page this server serves may use the API from a browser."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # curl and scripts send none
    if urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        raise RequestError(403, f"requests from pages of {origin} are refused; open the page this server serves")
