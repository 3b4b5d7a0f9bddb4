"""Resolution cache: decode each image once, at the size training needs, and keep it as uint8.

`size` is the short side in pixels (an int), or for tiled runs a pixel scale (a float: 0.5 keeps every
image at half its own resolution, whatever its size).

Training at 128-448 px on 2-12 MP photos spends nearly all its time in the JPEG decoder when every
epoch decodes every file again. The cache decodes each file once, through `read_at` (DCT-domain
reduction, EXIF, pixel cap, then a resize so that its short side is `size`: the side the transforms
start from, `transforms.decode_size(img_size)`; smaller images are kept as they are) and keeps the
uint8 pixels. A cached image is then a memory copy, equal to what every uncached reader gets from
`read_at`, and the transforms' first Resize is a no-op.

    disk  one store per data folder and size, reused by later epochs, runs and commands:
            <cache dir>/<folder>-s<size>-<key>/pixels-<n>.u8  every image as (3, h, w) uint8, back to back
                                              /index.json     file -> bytes, mtime, offset, h, w (or read error)
          memory-mapped, so from the second epoch on the pixels come from the OS page cache
    ram   the same pixels in one tensor of this process (shared with DataLoader workers, not written)
    off   decode from the file on every read
    auto  disk when the decoded images take at most half of the free disk space, else ram when they
          take at most a quarter of the available memory, else off. Small datasets go to disk too:
          the page cache makes a warm store as fast as ram, and the next run does not decode again.

Nothing stale is served: every open compares each file's size and mtime with the index; changed
and added files are decoded and appended. Entries of changed and removed files become dead bytes at
that update, and the store is compacted once more than half of it is dead. The store's key covers
the folder, the size, the pixel cap and the decoder (the sources of cnnlab/data/images.py, tiff.py and
resample.py, the Pillow, torchvision, tifffile and imagecodecs versions), so a change to any of them starts a
new store instead of serving pixels decoded another way; `eval` and `predict` (one pass) only reuse a store
that exists, never build one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import imagecodecs
import numpy as np
import PIL
import platformdirs
import tifffile
import torch
import torchvision
from tqdm import tqdm

from cnnlab.data import images, resample, tiff
from cnnlab.config import CACHE_MODES, Help, check_choice
from cnnlab.errors import CnnlabError, ImageReadError
from cnnlab.signals import leave_signals_to_parent
from cnnlab.data.images import DEFAULT_MAX_PIXELS, read_at

# Bump when the store layout or the resize changes.
CACHE_FORMAT = 1
INDEX_NAME = "index.json"
# Decoding is cheaper in this process than starting a pool (fork + torch import) below this many files.
POOL_MIN_FILES = 16
FILES_PER_TASK = 4
# Aspect ratio assumed when estimating a store's size before building it (most photos are 4:3).
ESTIMATE_ASPECT = 4 / 3
ESTIMATE_HEADERS = 32  # headers read to estimate a scaled store (tiled runs): enough for a mean size
DISK_SHARE = 0.5  # auto -> disk if the estimate is at most this share of the free disk space
RAM_SHARE = 0.25  # auto -> ram if the estimate is at most this share of the available memory

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builders of one store are not supported
    fcntl = None


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the stores: cache_dir, else <$CNNLAB_CACHE or the user cache dir>/images.

    $CNNLAB_CACHE replaces cnnlab's whole cache folder, as it does for the demo's datasets.
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("CNNLAB_CACHE") or platformdirs.user_cache_dir("cnnlab")
    return Path(base).expanduser() / "images"


@functools.cache
def _decoder_digest() -> str:
    """Identifies the code that produces the pixels: a change to any part must not serve old pixels."""
    reader = b"".join(Path(module.__file__).read_bytes() for module in (images, tiff, resample))
    versions = (f"{CACHE_FORMAT}|{PIL.__version__}|{torchvision.__version__}|{tifffile.__version__}|"
                f"{imagecodecs.__version__}").encode()
    return hashlib.sha1(reader + versions).hexdigest()


def store_dir(root: Path, folder: str, size: int, max_pixels: int) -> Path:
    """The store of `folder` at `size`: a readable name plus a key of everything the pixels depend on."""
    key = hashlib.sha1(f"{folder}|{size!r}|{max_pixels}|{_decoder_digest()}".encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(folder) or "root")[:40]
    return root / f"{name}-{_resolution_tag(size)}-{key}"


def _resolution_tag(size: int | float) -> str:
    """s147 for a short side of 147 px, x0.5 for a pixel scale of 0.5."""
    return f"x{size:g}" if isinstance(size, float) else f"s{size}"


def describe_resolution(size: int | float) -> str:
    """'short side 147' or 'scale 0.5'."""
    return f"scale {size:g}" if isinstance(size, float) else f"short side {size}"


def _find_store(root: Path, folder: str, size: int, max_pixels: int) -> Path | None:
    """An existing store for `folder` or a folder above it: `predict data/val/cat` reuses data's store."""
    for candidate in [folder, *map(str, Path(folder).parents)]:
        store = store_dir(root, candidate, size, max_pixels)
        if (store / INDEX_NAME).is_file():
            return store
    return None


# --------------------------------------------------------------------------------------------
# decoding (in worker processes)
# --------------------------------------------------------------------------------------------

def decode_for_cache(path: str, size: int | float, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(3, h, w) uint8 array, short side `size` (or smaller, as the file is) or at pixel scale `size` (a
    float), or (problem, reason). The pixels are read_at's: a cached image equals a decoded one."""
    try:
        return read_at(path, size, max_pixels=max_pixels).numpy()
    except ImageReadError as error:
        return error.problem, error.reason
    except Exception as error:  # noqa: BLE001 - one odd file must not stop a build of thousands
        return "unexpected-error", f"{type(error).__name__}: {error}"


def _decode_task(task: tuple) -> list:
    """Pool task: decode a few files; only the reduced pixels travel back, never a full-size copy."""
    paths, size, max_pixels = task
    return [decode_for_cache(path, size, max_pixels) for path in paths]


def _worker_init() -> None:
    torch.set_num_threads(1)  # one process per core; torch's own threads would only compete
    leave_signals_to_parent()  # a group signal is for the main process, which then ends the pool


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def decode_all(paths: list[str], size: int, max_pixels: int, description: str = "caching images",
               verbose: bool = True):
    """Yield (position, decode_for_cache result) for every path, in completion order.

    A process pool over the usable cores does the work; at most two tasks per process are in
    flight, so memory stays bounded by a few reduced images whatever the dataset size.
    """
    bar = tqdm(total=len(paths), desc=description, unit="img", file=sys.stderr, leave=False,
               dynamic_ncols=True, disable=not (verbose and sys.stderr.isatty()))
    cores = _usable_cores()
    with bar:
        # daemonic processes (a DataLoader or Pool worker) may not start a pool of their own
        if cores < 2 or len(paths) < POOL_MIN_FILES or multiprocessing.current_process().daemon:
            for position, path in enumerate(paths):
                yield position, decode_for_cache(path, size, max_pixels)
                bar.update(1)
            return
        starts = iter(range(0, len(paths), FILES_PER_TASK))
        with ProcessPoolExecutor(cores, initializer=_worker_init) as pool:
            pending = {}

            def submit() -> None:
                start = next(starts, None)
                if start is not None:
                    task = (paths[start:start + FILES_PER_TASK], size, max_pixels)
                    pending[pool.submit(_decode_task, task)] = start

            for _ in range(2 * cores):
                submit()
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        start = pending.pop(future)
                        results = future.result()
                        for offset, result in enumerate(results):
                            yield start + offset, result
                        bar.update(len(results))
                        submit()
            finally:
                for future in pending:
                    future.cancel()


# --------------------------------------------------------------------------------------------
# the dataset-facing side: load(index)
# --------------------------------------------------------------------------------------------

class CachedImages:
    """Decoded images of a list of files, in that order: the `source` an ImageDataset reads from.

    Picklable for DataLoader workers: the memory map is opened lazily in each process and never
    pickled; a ram cache is one tensor, which torch passes to workers through shared memory.
    """

    def __init__(self, paths: list[str], offsets: np.ndarray, shapes: np.ndarray, problems: dict,
                 *, pixel_file: str | None = None, pixels: torch.Tensor | None = None,
                 mode: str = "disk", location: str = "", stats: dict | None = None):
        self.paths = paths
        self.offsets = offsets  # (N,) int64 byte offset of each image, -1 for unreadable files
        self.shapes = shapes  # (N, 2) int64 (h, w)
        self.problems = problems  # {position: (problem, reason)} for unreadable files
        self.pixel_file = pixel_file
        self.pixels = pixels  # ram mode: flat uint8 tensor
        self.mode = mode
        self.location = location
        self.stats = stats or {}
        self._map = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}

    def _flat(self):
        if self.pixels is not None:
            return self.pixels
        if self._map is None:
            try:
                self._map = np.memmap(self.pixel_file, dtype=np.uint8, mode="r")
            except FileNotFoundError:
                raise CnnlabError(f"the image cache {self.pixel_file} was removed or rebuilt by another "
                                  "process while this one used it; run again (or use --cache off)") from None
        return self._map

    def load(self, index: int) -> torch.Tensor:
        """The cached uint8 image (3, h, w); ImageReadError for a file found unreadable when cached."""
        if index in self.problems:
            problem, reason = self.problems[index]
            raise ImageReadError(self.paths[index], reason, problem)
        height, width = (int(v) for v in self.shapes[index])
        start = int(self.offsets[index])
        flat = self._flat()[start:start + 3 * height * width]
        if isinstance(flat, torch.Tensor):
            return flat.view(3, height, width).clone()
        # A copy: the map is read-only, and transforms may write in place.
        return torch.from_numpy(np.array(flat)).view(3, height, width)

    def select(self, paths: list[str]) -> "CachedImages":
        """The same cache seen through another list of its files (e.g. one split)."""
        position = {path: i for i, path in enumerate(self.paths)}
        try:
            rows = [position[os.path.abspath(path)] for path in paths]
        except KeyError as error:
            raise CnnlabError(f"{error.args[0]} is not in the image cache; open the cache with every "
                              "file the datasets read") from None
        rows_array = np.asarray(rows, dtype=np.int64)
        problems = {new: self.problems[old] for new, old in enumerate(rows) if old in self.problems}
        view = CachedImages([self.paths[i] for i in rows], self.offsets[rows_array], self.shapes[rows_array],
                            problems, pixel_file=self.pixel_file, pixels=self.pixels, mode=self.mode,
                            location=self.location, stats=self.stats)
        return view

    def describe(self) -> str:
        """One line: where, how many, how big, what was decoded now."""
        stats = self.stats
        built = (f"decoded {stats['decoded']} in {stats['seconds']:.1f} s "
                 f"({stats['decoded'] / max(stats['seconds'], 1e-9):.0f} img/s)" if stats.get("decoded")
                 else "nothing to decode")
        unreadable = f", {len(self.problems)} unreadable" if self.problems else ""
        return (f"image cache ({self.mode}): {len(self)} images at {describe_resolution(stats.get('size'))}"
                f"{unreadable}, {stats.get('bytes', 0) / 1e6:,.1f} MB"
                f"{' on disk in ' + self.location if self.mode == 'disk' else ' in memory'}; {built}, "
                f"reused {stats.get('reused', 0)}")


# --------------------------------------------------------------------------------------------
# the disk store
# --------------------------------------------------------------------------------------------

def _file_stat(path: str) -> tuple[int, int]:
    """(bytes, mtime_ns) identifying a file's version; (-1, -1) when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _read_index(store: Path) -> dict:
    """The store's index, or an empty one (missing, unreadable or of another format)."""
    try:
        index = json.loads((store / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"entries": {}, "end": 0, "pixels": "pixels-1.u8"}
    if index.get("format") != CACHE_FORMAT:
        return {"entries": {}, "end": 0, "pixels": "pixels-1.u8"}
    return index


def _write_index(store: Path, index: dict) -> None:
    """Atomic replace: readers see the old index or the new one, never half of one."""
    temporary = store / f"{INDEX_NAME}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(index | {"format": CACHE_FORMAT}, separators=(",", ":")), encoding="utf-8")
    os.replace(temporary, store / INDEX_NAME)


@contextmanager
def _locked(store: Path):
    """Exclusive lock on the store while it is updated (another run may be building it too)."""
    with open(store / "lock", "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _is_current(entry: dict | None, stat: tuple[int, int]) -> bool:
    return entry is not None and (entry["bytes"], entry["mtime_ns"]) == stat


def _append(store: Path, index: dict, paths: list[str], stats: dict, size: int, max_pixels: int,
            verbose: bool) -> int:
    """Decode `paths` and append them to the pixel file; returns how many were decoded.

    Bytes are only ever appended after index["end"] (the committed length), so a process that
    still maps an older index never sees its images overwritten.
    """
    entries = index["entries"]
    pixel_path = store / index["pixels"]
    end = index["end"]
    with open(pixel_path, "r+b" if pixel_path.exists() else "w+b") as handle:
        handle.truncate(end)  # drop what an interrupted build wrote past the committed end
        handle.seek(end)
        written = 0
        try:
            for position, result in decode_all(paths, size, max_pixels, f"caching {len(paths)} images", verbose):
                path = paths[position]
                file_bytes, mtime_ns = stats[path]
                if isinstance(result, np.ndarray):
                    handle.write(memoryview(np.ascontiguousarray(result)).cast("B"))
                    _, height, width = result.shape
                    entries[path] = {"bytes": file_bytes, "mtime_ns": mtime_ns, "offset": end,
                                     "height": height, "width": width}
                    end += result.nbytes
                else:
                    entries[path] = {"bytes": file_bytes, "mtime_ns": mtime_ns, "problem": result[0],
                                     "reason": result[1]}
                written += 1
        except KeyboardInterrupt:
            # keep what is done: the next run continues from here instead of starting again
            handle.flush()
            _write_index(store, index | {"end": end})
            raise
        handle.flush()
        os.fsync(handle.fileno())  # pixels on disk before the index that points at them
    index["end"] = end
    return written


def _compact(store: Path, index: dict) -> None:
    """Copy the live images into a new pixel file when more than half of the old one is dead."""
    entries = index["entries"]
    live = sum(3 * e["height"] * e["width"] for e in entries.values() if "offset" in e)
    if index["end"] - live <= live:
        return
    old_path = store / index["pixels"]
    generation = int(re.search(r"(\d+)", index["pixels"]).group(1)) + 1
    new_name = f"pixels-{generation}.u8"
    old = np.memmap(old_path, dtype=np.uint8, mode="r") if index["end"] else None
    end = 0
    with open(store / new_name, "wb") as handle:
        for entry in entries.values():
            if "offset" in entry:
                count = 3 * entry["height"] * entry["width"]
                handle.write(memoryview(old[entry["offset"]:entry["offset"] + count]))
                entry["offset"] = end
                end += count
        handle.flush()
        os.fsync(handle.fileno())
    del old
    _write_index(store, index | {"pixels": new_name, "end": end})
    index.update(pixels=new_name, end=end)
    try:
        old_path.unlink()  # processes that still map it keep their copy (POSIX)
    except OSError:
        pass


def _view(store: Path, index: dict, paths: list[str], stats: dict) -> CachedImages:
    """CachedImages for `paths` (all of them current in `index`)."""
    entries = index["entries"]
    offsets = np.full(len(paths), -1, dtype=np.int64)
    shapes = np.zeros((len(paths), 2), dtype=np.int64)
    problems = {}
    for i, path in enumerate(paths):
        entry = entries[path]
        if "offset" in entry:
            offsets[i] = entry["offset"]
            shapes[i] = entry["height"], entry["width"]
        else:
            problems[i] = (entry["problem"], entry["reason"])
    stats = stats | {"bytes": index["end"]}
    return CachedImages(paths, offsets, shapes, problems, pixel_file=str(store / index["pixels"]),
                        mode="disk", location=str(store), stats=stats)


def _open_store(store: Path, paths: list[str], size: int, max_pixels: int, verbose: bool) -> CachedImages:
    """Validate the store against the files, update it if needed, and return a view of `paths`."""
    start = time.perf_counter()
    file_stats = {path: _file_stat(path) for path in paths}
    index = _read_index(store)
    if all(_is_current(index["entries"].get(p), s) for p, s in file_stats.items()):
        # Everything current: nothing is written, so a read-only store still serves.
        return _view(store, index, paths, {"size": size, "decoded": 0, "reused": len(paths), "seconds": 0.0})
    store.mkdir(parents=True, exist_ok=True)
    with _locked(store):
        index = _read_index(store)  # re-read: another process may have built it while we waited
        entries = index["entries"]
        for path in list(entries):
            # changed or removed files: their bytes become dead space, reclaimed by compaction
            if not _is_current(entries[path], file_stats.get(path) or _file_stat(path)):
                del entries[path]
        missing = [path for path in paths if path not in entries]
        decoded = _append(store, index, missing, file_stats, size, max_pixels, verbose) if missing else 0
        _compact(store, index)
        _write_index(store, index)
    stats = {"size": size, "decoded": decoded, "reused": len(paths) - decoded,
             "seconds": time.perf_counter() - start}
    return _view(store, index, paths, stats)


# --------------------------------------------------------------------------------------------
# ram
# --------------------------------------------------------------------------------------------

def _build_in_memory(paths: list[str], size: int, max_pixels: int, verbose: bool) -> CachedImages:
    """Decode every file into one flat uint8 tensor of this process."""
    start = time.perf_counter()
    arrays: list = [None] * len(paths)
    for position, result in decode_all(paths, size, max_pixels, f"caching {len(paths)} images in memory", verbose):
        arrays[position] = result
    offsets = np.full(len(paths), -1, dtype=np.int64)
    shapes = np.zeros((len(paths), 2), dtype=np.int64)
    problems, end = {}, 0
    for i, result in enumerate(arrays):
        if isinstance(result, np.ndarray):
            offsets[i], shapes[i], end = end, result.shape[1:], end + result.nbytes
        else:
            problems[i] = result
    pixels = torch.empty(end, dtype=torch.uint8)
    for i, result in enumerate(arrays):
        if isinstance(result, np.ndarray):
            pixels[offsets[i]:offsets[i] + result.size] = torch.from_numpy(result.reshape(-1))
            arrays[i] = None  # free as we go
    stats = {"size": size, "decoded": len(paths), "reused": 0, "seconds": time.perf_counter() - start,
             "bytes": end}
    return CachedImages(paths, offsets, shapes, problems, pixels=pixels, mode="ram", stats=stats)


# --------------------------------------------------------------------------------------------
# choosing and opening
# --------------------------------------------------------------------------------------------

def estimate_bytes(paths: list[str], size: int | float) -> int:
    """Rough size of the cached images of `paths` at short side `size` (4:3 photos), or at pixel scale `size`
    (from the headers of up to ESTIMATE_HEADERS files)."""
    if isinstance(size, float):
        sample = paths[:: max(1, len(paths) // ESTIMATE_HEADERS)][:ESTIMATE_HEADERS]
        pixels = []
        for path in sample:
            try:
                width, height = images.image_size(path, max_pixels=2**62)
                pixels.append(width * height)
            except CnnlabError:
                continue
        mean = sum(pixels) / len(pixels) if pixels else 0
        return int(len(paths) * 3 * mean * size * size)
    return len(paths) * 3 * size * round(size * ESTIMATE_ASPECT)


def _free_disk(root: Path) -> int:
    for folder in [root, *root.parents]:
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 0


def available_memory() -> int:
    """Bytes of memory available to new allocations without swapping (MemAvailable), 0 if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def choose_mode(paths: list[str], size: int | float, root: Path) -> tuple[str, str]:
    """What `auto` means for this dataset: (disk|ram|off, why)."""
    needed = estimate_bytes(paths, size)
    free = _free_disk(root)
    if needed <= DISK_SHARE * free:
        return "disk", f"~{needed / 1e9:.2f} GB fits in the {free / 1e9:.0f} GB free"
    memory = available_memory()
    if needed <= RAM_SHARE * memory:
        return "ram", f"~{needed / 1e9:.2f} GB is over half the {free / 1e9:.1f} GB free on disk but fits in memory"
    return "off", (f"~{needed / 1e9:.1f} GB of decoded images fits neither on disk ({free / 1e9:.1f} GB free) "
                   f"nor in memory ({memory / 1e9:.1f} GB available)")


def _common_folder(paths: list[str]) -> str:
    """The folder a store of these (absolute) paths is named after: the deepest one holding them all."""
    folder = os.path.commonpath(paths)
    return os.path.dirname(folder) if len(paths) == 1 or os.path.isfile(folder) else folder


def stored_images(paths: list[str], size: int | float, cache_dir: str | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """How many of `paths` an existing disk store at `size` holds, current; reads its index, decodes nothing."""
    if not paths:
        return 0
    paths = [os.path.abspath(path) for path in paths]
    store = _find_store(cache_root(cache_dir), _common_folder(paths), size, max_pixels)
    if store is None:
        return 0
    entries = _read_index(store)["entries"]
    return sum(_is_current(entries.get(path), _file_stat(path)) for path in paths)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def open_cache(paths: list[str], size: int | float, mode: str = "auto", *, cache_dir: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, one_pass: bool = False,
               verbose: bool = True) -> CachedImages | None:
    """Decoded images of `paths` at short side `size` (or pixel scale `size`, a float), cached as `mode`;
    None means read the files.

    `one_pass` is for commands that read each image once (eval, predict): building a cache would
    only add a copy, so they use a disk store that exists already (kept current) and otherwise read
    the files. A store that cannot be written falls back to no cache with a one-line warning.
    """
    check_choice("cache", mode, CACHE_MODES)
    if mode == "off" or not paths:
        return None
    paths = [os.path.abspath(path) for path in paths]
    folder = _common_folder(paths)
    root = cache_root(cache_dir)
    existing = _find_store(root, folder, size, max_pixels) if mode in ("auto", "disk") else None
    if one_pass and existing is None:
        return None
    if mode == "auto" and existing is None:
        mode, why = choose_mode(paths, size, root)
        if mode == "off":
            _warn(f"not caching decoded images: {why}; every epoch decodes the files again")
            return None
    elif mode == "auto":
        mode = "disk"
    if mode == "ram":
        cache = _build_in_memory(paths, size, max_pixels, verbose)
    else:
        store = existing or store_dir(root, folder, size, max_pixels)
        try:
            cache = _open_store(store, paths, size, max_pixels, verbose)
        except OSError as error:
            _warn(f"cannot use the image cache in {store} ({error.strerror or error}); decoding the files "
                  "instead (set --cache-dir or CNNLAB_CACHE to a writable folder, or --cache off)")
            return None
    if verbose:
        print(cache.describe(), file=sys.stderr, flush=True)
    return cache


# --------------------------------------------------------------------------------------------
# seeing and clearing the stores (cnnlab cache list | clear)
# --------------------------------------------------------------------------------------------

@dataclass
class StoreInfo:
    """One disk store: its folder, the data folder it caches, the short side, images and bytes."""

    path: Path
    source: str
    size: str | None  # s147 (short side) or x0.5 (pixel scale)
    images: int
    bytes: int
    last_used: float  # modification time of its index (written whenever the store changes)


def _folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in folder.rglob("*") if entry.is_file())


def list_stores(cache_dir: str | os.PathLike | None = None) -> list[StoreInfo]:
    """List the decoded-image stores: the data folder each caches, its size on disk and its images."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return []
    stores = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        index_path = folder / INDEX_NAME
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            index = {}
        entries = index.get("entries", {})
        source = os.path.commonpath(list(entries)) if entries else "?"
        match = re.search(r"-(s\d+|x[0-9.e-]+)-[0-9a-f]{12}$", folder.name)
        stores.append(StoreInfo(folder, source, match.group(1) if match else None, len(entries),
                                _folder_bytes(folder), index_path.stat().st_mtime if index_path.exists() else 0.0))
    return sorted(stores, key=lambda store: -store.bytes)


def clear_stores(cache_dir: str | os.PathLike | None = None,
                 names: Annotated[list[str] | None, Help("Stores to delete, as `cnnlab cache list` names them "
                                                         "(default: all).")] = None) -> list[StoreInfo]:
    """Delete decoded-image stores (they are rebuilt from the images when needed).

    `names`: folder names as `cnnlab cache list` prints them (default: all); returns what went."""
    stores = list_stores(cache_dir)
    if names:
        known = {store.path.name: store for store in stores}
        missing = [name for name in names if name not in known]
        if missing:
            raise CnnlabError(f"no image store named {', '.join(missing)} in {cache_root(cache_dir)}; "
                              "`cnnlab cache list` shows the names")
        stores = [known[name] for name in names]
    for store in stores:
        shutil.rmtree(store.path)
    return stores
