"""Scale-out for Monte Carlo objectives with torch.distributed (launched by `torchrun`).

Every process draws the SAME common random numbers from the same seeded generator (drawing
is cheap next to the denoiser calls) and keeps only its contiguous slice of the samples, so
the union over processes is exactly the single-process draw; per-sample sums are then
all-reduced. Decisions taken from all-reduced sums are identical on every rank, so all ranks
follow the same optimizer trajectory and the result equals the 1-process result for the same
seed (up to float summation order).

    torchrun --nproc_per_node 4 -m core optimize ays --toy grid8x8 --distributed --out s.json

gloo on CPU, nccl on GPUs (`init_from_env`).
"""
from __future__ import annotations

import os
import socket

import torch

from core.errors import ScheduleLabError


class Partition:
    """This process's share of the Monte Carlo samples and the reduction across processes.

    Attributes:
        rank, world_size: as in torch.distributed (0, 1 for a single process).
        device: where tensors must be for the collective (cuda for nccl, else cpu).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, group=None, device="cpu"):
        if world_size < 1 or not (0 <= rank < world_size):
            raise ScheduleLabError(f"bad partition rank {rank} of world size {world_size}")
        self.rank, self.world_size, self.group = rank, world_size, group
        self.device = torch.device(device)

    @classmethod
    def single(cls) -> "Partition":
        return cls(0, 1)

    @classmethod
    def from_torch(cls, group=None) -> "Partition":
        """The partition of an initialised default (or given) process group."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            raise ScheduleLabError("torch.distributed is not initialised; launch with torchrun "
                                   "(or call init_from_env()) before asking for a distributed partition")
        dev = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
        return cls(dist.get_rank(group), dist.get_world_size(group), group, dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slice(self, n: int) -> slice:
        """Contiguous block of sample indices [start, stop) owned by this rank (sizes differ by <= 1)."""
        if n < self.world_size:
            raise ScheduleLabError(f"{n} Monte Carlo samples cannot be split over {self.world_size} processes")
        q, r = divmod(n, self.world_size)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (1 if self.rank < r else 0))

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` over all ranks (a new float64 tensor on t's device)."""
        if self.world_size == 1:
            return t.clone()
        import torch.distributed as dist
        buf = t.detach().to(self.device, torch.float64).contiguous().clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        return buf.to(t.device)

    def broadcast_float(self, value, src: int = 0):
        """rank `src`'s float (or None) on every rank."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist
        buf = torch.tensor([float("nan") if value is None else float(value), 0.0 if value is None else 1.0],
                           dtype=torch.float64, device=self.device)
        dist.broadcast(buf, src, group=self.group)
        return float(buf[0]) if buf[1] > 0 else None


def init_from_env(device: str = "cpu") -> Partition:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT): nccl when `device` is cuda, else gloo."""
    import torch.distributed as dist
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ScheduleLabError(f"--distributed needs torchrun's environment ({', '.join(missing)} unset); "
                               "launch with `torchrun --nproc_per_node N -m core ...`")
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return Partition.from_torch()


def shutdown() -> None:
    """Wait for every rank, then tear the process group down (a rank that exits while another is
    still inside a collective makes gloo abort it)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for tests and local launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
