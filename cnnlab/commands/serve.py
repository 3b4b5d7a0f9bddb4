"""`cnnlab serve RUN`: the run's web app (cnnlab.serve.app) on uvicorn, on a socket bound before the model is
served, until Ctrl-C."""

from __future__ import annotations

import os
import sys
from typing import Annotated

from cnnlab.config import Help
from cnnlab.serve.app import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, bind, check_host, create_app


def serve(run_dir: str | os.PathLike, port: Annotated[int, Help("TCP port to listen on.")] = DEFAULT_PORT,
          host: Annotated[str, Help("Address to listen on; anything but loopback (127.0.0.1, ::1, localhost) needs "
                                    "--allow-remote.")] = DEFAULT_HOST,
          allow_remote: Annotated[bool, Help("Allow a --host other machines can reach (no login, no TLS: a warning "
                                             "is printed).")] = False,
          max_upload_mb: Annotated[float, Help("Largest upload in MB; bigger bodies get 413 while they are read.")]
          = DEFAULT_MAX_UPLOAD_MB,
          which: str = "best", device: str = "auto",
          threads: Annotated[int, Help("Uploads decoded at once (bounds memory; the model runs one at a time).")] = 4,
          log_level: str = "info",
          reject: Annotated[str, Help("auto (the run's threshold, reject.json), off, or a probability P: an image whose "
                                      "top probability is below it is answered unknown, with its closest classes.")]
          = "auto") -> None:
    """Serve a small local web app: drop images, see the top classes and where the network looked.

    One page at http://HOST:PORT/ and a JSON API for scripts:
    `curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/api/predict`.
    Images are decoded in memory with the run's pixel cap and never written to disk. Ctrl-C stops. A remote host
    without `allow_remote`, a port in use, or a run without weights is one error line."""
    import uvicorn

    warning = check_host(host, allow_remote)
    app = create_app(run_dir, max_upload_mb, host, which, device, threads, reject)
    sock = bind(host, port)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    record = app.state.predictor.trained.record
    print(f"serving {record.model} of {run_dir} ({len(record.classes)} classes) at http://{shown}:{port}/ ; API: "
          f"POST http://{shown}:{port}/api/predict ; Ctrl-C stops", flush=True)
    config = uvicorn.Config(app, log_level=log_level, proxy_headers=False, server_header=False,
                            limit_concurrency=64, timeout_keep_alive=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
