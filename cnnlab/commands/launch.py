"""`cnnlab train --nproc N`: start N training processes on this machine with torchrun's own launcher
(torch.distributed.run, the elastic agent), each running the same `cnnlab train` command; they find each
other through torchrun's rendezvous on a free local port (--standalone) and train with DistributedDataParallel
(cnnlab.training.distributed). On a cluster the same command runs under an external torchrun or srun instead.
"""

from __future__ import annotations

import os
import sys

from cnnlab.errors import CnnlabError


def launch(nproc: int, arguments: list[str]) -> int:
    """Run `cnnlab <arguments>` in `nproc` processes; returns the exit code to leave with: 0, or the first failed
    process's (2 for an error it printed, 130/143 when a signal stopped the run after its checkpoint)."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import get_args_parser, run

    available = torch.cuda.device_count() if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    what = "GPUs" if torch.cuda.is_available() else "CPU cores"
    if nproc > available:
        raise CnnlabError(f"--nproc {nproc} is more than the {available} {what} of this machine; use at most "
                          f"{available} (one process per {'GPU' if torch.cuda.is_available() else 'core'})")
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # the processes share the cores: each gets its part (torchrun would set 1 and print a warning about it)
        os.environ["OMP_NUM_THREADS"] = str(max(1, available // nproc))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "cnnlab",
                                         *arguments])
    try:
        run(args)
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        if code not in (2, 130, 143):  # those printed their own line (an error, or how to resume)
            print(f"error: training process {failure.local_rank} failed with exit code {failure.exitcode}; its "
                  f"output is above", file=sys.stderr)
        return code
    except SignalException as error:  # the launcher itself was signalled: the processes saved and stopped
        return 128 + int(error.sigval)
    return 0
