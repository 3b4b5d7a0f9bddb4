"""Progress of a loop over batches: a tqdm bar on a terminal, plain log lines otherwise
(CI logs, `> file`, notebooks without widgets), so nothing floods a log with carriage returns."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

# When not on a terminal, print a line at most this often (seconds), plus the final line.
LOG_EVERY_SECONDS = 15.0


class Progress:
    """Counts images and shows images/s, running loss and ETA for one epoch (or any batch loop)."""

    def __init__(self, total_images: int, description: str, stream=None, enabled: bool = True,
                 show_loss: bool = True):
        self.stream = stream or sys.stderr
        self.show_loss = show_loss  # a pass without gradients (validation) has no training loss to show
        self.total = total_images
        self.description = description
        self.enabled = enabled
        self.images = 0
        self.loss_sum = 0.0
        self.start = time.perf_counter()
        self.last_log = self.start
        interactive = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total_images, desc=description, unit="img", file=self.stream,
                        leave=False, dynamic_ncols=True) if interactive else None

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1)

    def rate(self) -> float:
        """Images per second so far."""
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def update(self, images: int, loss: float | None = None) -> None:
        """Record one batch of `images` images with mean loss `loss`."""
        self.images += images
        if loss is not None:
            self.loss_sum += loss * images
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(images)
            if self.show_loss:
                self.bar.set_postfix(loss=f"{self.loss:.4f}", refresh=False)
        elif time.perf_counter() - self.last_log >= LOG_EVERY_SECONDS:
            self.last_log = time.perf_counter()
            self._line()

    def _line(self) -> None:
        rate = self.rate()
        eta = (self.total - self.images) / rate if rate > 0 else float("nan")
        loss = f"loss {self.loss:.4f}, " if self.show_loss else ""
        print(f"{self.description}: {self.images}/{self.total} images, {rate:.1f} img/s, "
              f"{loss}ETA {eta:.0f}s", file=self.stream, flush=True)

    def close(self) -> None:
        """Remove the bar (the caller prints the epoch summary)."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
