"""More than one process: PyTorch's own distributed engine (torch.distributed + DistributedDataParallel),
started by torchrun (or Slurm's srun), never anything home-made.

    cnnlab train --nproc 2 ...                                    # this machine: torchrun's launcher, in-process
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m cnnlab train ...       # several machines: the same command
    srun --ntasks 8 python -m cnnlab train ...                    # Slurm: SLURM_PROCID / SLURM_NTASKS

What each process does differently is decided here, from the environment torchrun or Slurm set: its rank,
the world size, its device (cuda:LOCAL_RANK, or the CPU with gloo), and the few collective operations the
training loop needs (a sum over processes, gathering validation logits, agreeing on a stop). With one process
every function is the identity, so the single-process path is the same code.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnnlab.errors import CnnlabError

RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=5)  # how long a process waits for the others to show up


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = World()


def environment_world() -> World:
    """The world torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID)
    describe, or a single process."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and int(env["SLURM_NTASKS"]) > 1:
        if "MASTER_ADDR" not in env:
            raise CnnlabError("Slurm started several tasks but MASTER_ADDR is not set: export MASTER_ADDR (the first "
                              "node's host name) and MASTER_PORT in the batch script, or launch with torchrun")
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return SINGLE


def init(device_name: str) -> tuple[World, str]:
    """Join the process group if this process is one of several; returns the world and the device to use
    (each process its own GPU, cuda:LOCAL_RANK; or the CPU)."""
    world = environment_world()
    if not world.distributed:
        return world, device_name
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise CnnlabError(f"process {world.rank} has local rank {world.local_rank} but this machine has "
                              f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    else:
        device_name = "cpu"
        # the cores of this machine are shared by its processes: intra-op threads per process
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local, 1)))
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        try:
            dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.world_size,
                                    timeout=RENDEZVOUS_TIMEOUT)
        except (RuntimeError, ValueError, TimeoutError) as error:
            raise CnnlabError(f"process {world.rank} of {world.world_size} could not join the others at "
                              f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} "
                              f"({str(error).splitlines()[0][:160]}); check the rendezvous endpoint and that every "
                              "node can reach it") from None
    return world, device_name


def finish() -> None:
    """Leave the process group (at the end of a run, or on an error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every process (e.g. until rank 0 has built the image cache)."""
    if _active():
        dist.barrier()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over all processes of a few numbers (one collective)."""
    if not _active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_objects(value):
    """Every process's `value`, in rank order (a list of one with one process)."""
    if not _active():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast(value):
    """Rank 0's `value` on every process."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_agree(name: str, value) -> None:
    """A clear error on every process when the processes do not agree on `value` (e.g. the classes found in the
    data folder: nodes that mount different folders)."""
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        different = next(rank for rank, v in enumerate(values) if v != values[0])
        raise CnnlabError(f"the training processes disagree on the {name}: process 0 has {values[0]!r}, process "
                          f"{different} has {values[different]!r}; every node must see the same data folder")


# --- cnnlab train --nproc N: start the processes on this machine ------------------------------------------------
# torchrun's own launcher (torch.distributed.run, the elastic agent) starts N processes, each running the same
# `cnnlab train` command; they find each other through its rendezvous on a free local port (--standalone) and
# train with DistributedDataParallel. On a cluster the same command runs under an external torchrun or srun instead.

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
