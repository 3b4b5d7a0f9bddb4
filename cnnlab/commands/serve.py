"""`cnnlab serve RUN`: the run's web app (cnnlab.serve.app) on uvicorn, on a socket bound before the model is
served, until Ctrl-C."""

from __future__ import annotations

import os
import sys

from cnnlab.serve.app import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, bind, check_host, create_app


def serve(run_dir: str | os.PathLike, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, allow_remote: bool = False,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, which: str = "best", device: str = "auto",
          threads: int = 4, log_level: str = "info") -> None:
    """Serve the run's web app until Ctrl-C (see the module docstring); CnnlabError for a remote host without
    `allow_remote`, a port in use, or a run without weights."""
    import uvicorn

    warning = check_host(host, allow_remote)
    app = create_app(run_dir, max_upload_mb, host, which, device, threads)
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
