"""`cnnlab predict RUN INPUTS --engine ray --out results.parquet`: prediction over a whole archive with Ray Data,
on this machine or a cluster, resumable.

    driver (this process)                         Ray actors (one per CPU of the cluster, 1 torch thread each)
    expand INPUTS, stat each file (size, mtime)
    skip those already in results.parquet/   ->   open_predictor(RUN) once; for each batch of paths:
    stream the rest through the actors              predict_paths(): cnnlab's own decoding (pixel cap, reduced-
    write each PART_ROWS rows as one part    <-     scale decode, sliding window, bags) and model, the same
      file, atomically (tmp + rename)               rows as `cnnlab predict`, as an Arrow table
    progress: files/s, done/total, errors

Ray's own image reader decodes every file whole with Pillow and fails above Pillow's pixel limit; here each actor
runs the function plain `cnnlab predict` runs (cnnlab.runs.prediction), so an image gets the same probabilities
from either engine (tests/runs/test_ray_predict.py checks 1e-5 on every file).

The output is a Parquet dataset: the folder results.parquet/ of part files with the same columns (path, made
absolute, error, unknown, class_i, probability_i, plus size and mtime_ns, the key a rerun skips files by), which
pandas, pyarrow, DuckDB, Spark and Ray read as one table. A file changed since its row was written (another size or
mtime) loses that row and is predicted again: one row per file, its latest. A part is renamed into place only when
whole, so Ctrl-C or SIGTERM leaves complete parts (the rows in flight are predicted again by the rerun); an
unreadable file is a row with its error, never a failed job. Without --address a local Ray instance is started
with this machine's cores; with one (HOST:PORT, or auto for the cluster this machine belongs to) the job joins
that cluster, whose nodes need cnnlab and the files at the same paths (shared storage).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from cnnlab.data.folders import expand_inputs
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write
from cnnlab.runs.prediction import open_predictor, predict_paths
from cnnlab.runs.tables import arrow_table, fixed_columns, import_pyarrow, nested_rows, table_rows

KEYS = ("size", "mtime_ns")  # with the path: a file already predicted, unless it changed since
PART_ROWS = 1000  # rows per part file: small enough that an interruption loses little, large for Parquet
PART_SECONDS = 60.0  # ... or a part at least this often, so a slow archive (large images) shows progress
ACTOR_BATCH = 16  # paths per actor call: one actor's batch of the model; the sliding window batches its own
REACH_SECONDS = 5
RAY_INSTALL = "pip install 'cnnlab[ray]' (Ray Data, pinned)"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise CnnlabError(f"--engine ray needs Ray, which is not installed ({error.name}): {RAY_INSTALL}") from None
    return ray


def file_key(path: str) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of a file, (None, None) for what is not one (its row is an error, predicted again)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime_ns


def read_parts(out: Path, columns: list[str]) -> dict[Path, list[tuple]]:
    """{part file: its rows' (path, size, mtime_ns)} of `out` (a folder; none yet: empty). A folder of another
    table's columns (another --top-k, another run's threshold) is refused, not mixed."""
    pyarrow = import_pyarrow(out)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"--out {out} is a file; --engine ray writes a folder of Parquet parts: give a new name "
                          "(e.g. results.parquet, which becomes a folder) or remove the file")
    expected = columns + list(KEYS)
    parts = {}
    for part in sorted(out.glob("part-*.parquet")) if out.is_dir() else []:  # not the hidden temporaries
        names = pyarrow.parquet.read_schema(part).names
        if names != expected:
            raise CnnlabError(f"--out {out}: {part.name} has the columns {', '.join(names)}, not this "
                              f"prediction's {', '.join(expected)} (another --top-k, --reject or run?); give "
                              "another --out, or the options that wrote it")
        table = pyarrow.parquet.read_table(part, columns=["path", *KEYS])
        parts[part] = list(zip(*(table.column(name).to_pylist() for name in ("path", *KEYS))))
    return parts


def drop_stale(parts: dict[Path, list[tuple]], current: dict[str, tuple]) -> set[tuple]:
    """Remove from the part files the rows of inputs that changed since (another size or mtime: they are predicted
    again), each part rewritten whole; the (path, size, mtime_ns) keys still valid."""
    pyarrow = import_pyarrow(next(iter(parts), Path("x.parquet")))
    valid = set()
    for part, keys in parts.items():
        stale = {key for key in keys if key[0] in current and tuple(key[1:]) != current[key[0]]}
        valid.update(set(keys) - stale)
        if stale:
            table = pyarrow.parquet.read_table(part)
            keep = [tuple(key) not in stale for key in zip(*(table.column(n).to_pylist() for n in ("path", *KEYS)))]
            kept = table.filter(pyarrow.array(keep))
            if kept.num_rows:
                atomic_write(part, lambda tmp: pyarrow.parquet.write_table(kept, tmp))
            else:
                part.unlink()
    return valid


class PredictActor:
    """One Ray actor: a predictor opened once, then batches of {"path", "error", "size", "mtime_ns"} predicted
    into Arrow tables of `columns` + KEYS."""

    bound: tuple = ()
    """(run folder or ONNX file, open_predictor's options, the table's columns), set on a subclass per job."""

    def __init__(self):
        import torch
        torch.set_num_threads(1)  # one actor per core: more threads would fight the other actors for it
        run_dir, options, self.columns = self.bound
        self.predictor = open_predictor(run_dir, quiet=True, **options)

    def __call__(self, batch: dict):
        errors = [error if isinstance(error, str) and error else None for error in batch["error"]]
        expanded = [(str(path), error) for path, error in zip(batch["path"], errors)]
        rows = predict_paths(self.predictor, expanded, batch_size=ACTOR_BATCH, workers=0)
        records = table_rows(rows, self.columns)
        for record, size, mtime in zip(records, batch["size"], batch["mtime_ns"]):
            record["size"] = None if size is None or size != size else int(size)
            record["mtime_ns"] = None if mtime is None or mtime != mtime else int(mtime)
        return arrow_table(records, self.columns + list(KEYS))


def _reach(address: str) -> None:
    """A clear error when HOST:PORT does not accept a connection (Ray itself would retry for a minute)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CnnlabError(f"--address {address!r}: give HOST:PORT of the cluster's head (e.g. 10.0.0.5:6379), "
                          "auto, or leave it out for a local Ray instance")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_SECONDS).close()
    except OSError as error:
        raise CnnlabError(f"--address {address}: cannot reach a Ray cluster there ({error.strerror or error}); "
                          "start it (`ray start --head`), check the address, or leave --address out to run "
                          "on this machine") from None


def _start(ray, address: str | None) -> bool:
    """Connect to the cluster (or start a local instance); whether this process started it (and must stop it)."""
    for name in ("ray", "ray.data"):  # its INFO and WARNING lines (the plan, token set-up, ...) are not news here
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    if address not in (None, "auto") and not address.startswith("ray://"):  # ray:// is Ray Client's own protocol
        _reach(address)
    try:
        if address is None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise CnnlabError(f"--address {address}: could not join a Ray cluster ({str(error).splitlines()[0]}); "
                          "start one (`ray start --head`) or leave --address out") from None
    return True


def predict_with_ray(run_dir: str | os.PathLike, inputs: list[str | os.PathLike], out: str | os.PathLike,
                     address: str | None = None, options: dict | None = None, actors: int | None = None,
                     verbose: bool = True) -> list[dict]:
    """Predict every input with Ray Data and add its row to the Parquet parts in `out` (a folder), skipping files
    already there (same path, size and mtime). `options`: open_predictor's (top_k, which, device, reject, tta,
    tiled, scale). `actors`: how many (None: one per CPU of the cluster). Returns the rows predicted now."""
    options = dict(options or {})
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise CnnlabError(f"--engine ray writes a folder of Parquet parts: give --out NAME.parquet (not {out.name})")
    if not out.parent.is_dir():
        raise CnnlabError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another")
    ray = _import_ray()
    predictor = open_predictor(run_dir, **options)  # a wrong run or file fails here, before the cluster starts
    columns = fixed_columns(predictor.top_k, predictor.threshold is not None)
    # absolute paths: actors on other nodes (or in another working directory) open the same files, and a rerun from
    # another folder finds the rows it already wrote
    expanded = [(os.path.abspath(path), reason) for path, reason in expand_inputs(inputs)]
    current = {path: file_key(path) for path, _ in expanded}
    done = drop_stale(read_parts(out, columns), current)
    items = [{"path": path, "error": reason or "", "size": current[path][0], "mtime_ns": current[path][1]}
             for path, reason in expanded if (path, *current[path]) not in done]
    skipped = len(expanded) - len(items)
    if skipped and verbose:
        rest = f"predicting the other {len(items)}" if items else "nothing left to predict"
        print(f"{skipped} of {len(expanded)} inputs are already in {out}; {rest}", file=sys.stderr, flush=True)
    if not items:
        return []
    started = _start(ray, address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # cnnlab prints its own line per part
        context.print_on_execution_start = False
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = actors or min(cpus, max(1, -(-len(items) // ACTOR_BATCH)))
        dataset = ray.data.from_items(items, override_num_blocks=max(actors, -(-len(items) // ACTOR_BATCH)))
        # the actor's arguments ride in the class itself (cloudpickle sends a class made here by value); a failed
        # actor is restarted by Ray (its batch retried), and Ray's core says once that Ray Data's own constructor
        # arguments sit in its object store (ray-project/ray#53727): a note on Ray's design, not on this job
        bound = type("PredictActor", (PredictActor,), {"bound": (os.path.abspath(run_dir), options, columns)})
        predicted = dataset.map_batches(bound, batch_size=ACTOR_BATCH, batch_format="numpy",
                                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1)
        return _write_parts(predicted, out, columns, len(items), verbose)
    finally:
        if started:
            ray.shutdown()


def _write_parts(predicted, out: Path, columns: list[str], total: int, verbose: bool) -> list[dict]:
    """Stream the actors' tables into part files of `out` (each whole or absent); the rows, nested as predict's."""
    pyarrow = import_pyarrow(out)
    out.mkdir(exist_ok=True)
    run_id = uuid.uuid4().hex[:8]  # parts of two runs never share a name
    pending, rows, parts = [], [], 0
    errors = done = 0
    began = last = time.monotonic()
    for table in predicted.iter_batches(batch_size=None, batch_format="pyarrow"):
        pending.append(table)
        done += table.num_rows
        errors += sum(1 for error in table.column("error").to_pylist() if error)
        buffered = sum(t.num_rows for t in pending)
        if buffered >= PART_ROWS or time.monotonic() - last >= PART_SECONDS or done == total:
            parts += 1
            rows += _write_part(pyarrow, pending, out / f"part-{run_id}-{parts:05d}.parquet", columns)
            pending, last = [], time.monotonic()
            if verbose:
                rate = done / max(time.monotonic() - began, 1e-9)
                print(f"predicted {done}/{total} files ({rate:.1f} files/s, {errors} errors) -> {out}",
                      file=sys.stderr, flush=True)
    if pending:
        rows += _write_part(pyarrow, pending, out / f"part-{run_id}-{parts + 1:05d}.parquet", columns)
    return rows


def _write_part(pyarrow, tables: list, path: Path, columns: list[str]) -> list[dict]:
    """One part file from the tables, whole or absent; its rows as predict's."""
    table = pyarrow.concat_tables(tables).select(columns + list(KEYS))
    atomic_write(path, lambda tmp: pyarrow.parquet.write_table(table, tmp))  # a hidden temporary, renamed
    return nested_rows(table.to_pylist())
