"""Unreadable images during training: find them once, read them never again, stop if there are too many.

The dataset turns a file it cannot read into None, prints one warning line for it and the collate
function drops it, so a batch returns fewer dataset indices than its sampler asked for. The main
process compares the two (`record_batch`, `record_pass`) and remembers each unreadable index with
the epoch it was found in. From the next epoch on, SkipIndices leaves those indices out of the
sampling, so no DataLoader worker decodes -- and warns about -- the same file a second time.

The set left out of an epoch is fixed when the epoch starts (files found in epoch e are left out from
e + 1), so an epoch is the same batches whether the run was interrupted in it or not.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from cnnlab.data.loaders import SkipIndices, loader_batch_size, skip_sampler
from cnnlab.errors import CnnlabError, ImageReadError


class UnreadableImages:
    """Per split: which dataset indices could not be read, and whether that is more than `max_bad` allows."""

    def __init__(self, loaders: dict[str, DataLoader], max_bad: float, found: dict | None = None):
        """`loaders`: {split: a loader from make_loader}, whose SkipIndices this object drives."""
        self.datasets = {split: loader.dataset for split, loader in loaders.items()}
        self.max_bad = max_bad
        # {split: {index: epoch in which it was found}}
        self.found: dict[str, dict[int, int]] = {split: {} for split in loaders}
        for split, pairs in (found or {}).items():
            self.found.setdefault(split, {}).update({int(index): int(epoch) for index, epoch in pairs})
        self._samplers: dict[str, SkipIndices] = {split: skip_sampler(loader) for split, loader in loaders.items()}
        self._batch_size: dict[str, int] = {split: loader_batch_size(loader) for split, loader in loaders.items()}
        self._reasons: dict[tuple[str, int], str] = {}

    def begin_pass(self, split: str, epoch: int, start_batch: int = 0) -> None:
        """Before a pass over `split` in `epoch`: leave out the files found in earlier epochs, and skip the
        first `start_batch` batches (resuming mid-epoch)."""
        sampler = self._samplers[split]
        sampler.skip = {index for index, found_in in self.found[split].items() if found_in < epoch}
        sampler.start = start_batch * self._batch_size[split]

    def record_batch(self, split: str, batch_number: int, returned: torch.Tensor, epoch: int) -> None:
        """After batch `batch_number` of the current pass (counted from its start): note the missing indices."""
        size = self._batch_size[split]
        asked = self._samplers[split].yielded[batch_number * size:(batch_number + 1) * size]
        self._note(split, set(asked) - set(returned.tolist()), epoch)

    def record_pass(self, split: str, returned: torch.Tensor, epoch: int) -> None:
        """After a whole pass over `split` (e.g. validation): note every index that did not come back."""
        self._note(split, set(self._samplers[split].yielded) - set(returned.tolist()), epoch)

    def _note(self, split: str, missing: set[int], epoch: int) -> None:
        for index in missing:
            self.found[split].setdefault(index, epoch)
        if missing:
            self.check(split)

    def merge(self, found_by_process: list[dict]) -> None:
        """Take in what the other training processes found (each reads its own share of the files), so that
        every process leaves the same files out of the next epoch."""
        for found in found_by_process:
            for split, indices in found.items():
                mine = self.found.setdefault(split, {})
                for index, epoch in indices.items():
                    mine[index] = min(epoch, mine.get(index, epoch))

    def known_in_advance(self) -> None:
        """Check files a decoded-image cache already found unreadable, before any training step."""
        for split in self._samplers:  # the splits training reads (not test/)
            source = self.datasets[split].source  # the decoded-image cache, if any
            problems = source.problems if source is not None else {}
            self.check(split, also=set(problems))

    def check(self, split: str, also: set[int] = frozenset()) -> None:
        """CnnlabError if more than max_bad of the split is unreadable (counting `also` as unreadable too)."""
        total = len(self.datasets[split])
        bad = set(self.found[split]) | set(also)
        count = len(bad)
        if total and count > self.max_bad * total:
            example = self.datasets[split].samples[min(bad)].path
            raise CnnlabError(f"found {count} unreadable images among the {total} of the {split} split "
                              f"({count / total:.0%}), more than --max-bad {self.max_bad:g} allows"
                              f" (e.g. {example}); run `cnnlab data check` on the "
                              "data folder to list them, fix or remove them, or raise --max-bad")

    def count(self) -> dict[str, int]:
        """{split: number of unreadable images found}."""
        return {split: len(found) for split, found in self.found.items() if found}

    def state(self) -> dict:
        """JSON for the checkpoint: {split: [[index, epoch found], ...]}."""
        return {split: sorted([index, epoch] for index, epoch in found.items())
                for split, found in self.found.items() if found}

    def report(self) -> dict:
        """For dataset.json: {split: [{path, reason}]}."""
        return {split: [{"path": self.datasets[split].samples[index].path, "reason": self._reason(split, index)}
                        for index in sorted(found)]
                for split, found in self.found.items() if found}

    def _reason(self, split: str, index: int) -> str:
        # the worker that failed printed the reason; this process reads the file once more to keep it
        if (split, index) not in self._reasons:
            try:
                self.datasets[split].load(index)
                reason = "could not be read during training"
            except ImageReadError as error:
                reason = error.reason
            self._reasons[split, index] = reason
        return self._reasons[split, index]
