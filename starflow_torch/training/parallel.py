"""Processes and parallelism: single process, DDP, or FSDP2, plus the EMA of the weights.

Under torchrun (RANK / WORLD_SIZE set) the process group uses nccl on CUDA and gloo
on CPU. FSDP2 shards every transformer layer (`attn_blocks[i]`), every FlowBlock, the
learned self-denoiser and the objective (the root), with bf16 parameters on CUDA only. Gradient checkpointing
wraps each transformer layer with torch.utils.checkpoint through the composable
`checkpoint` API, which keeps the module (and weight) names unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..flow_block import FlowBlock


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_processes() -> ProcessInfo:
    """Join the torchrun process group if there is one; pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessInfo(rank, local_rank, world_size, device)


def close_processes(info: ProcessInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: ProcessInfo) -> torch.Tensor:
    """Sum a small float tensor over processes (a no-op for one process)."""
    if info.distributed:
        values = values.to(info.device)
        dist.all_reduce(values)
    return values.cpu()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer layer's activations in the backward pass."""
    from torch.distributed._composable import checkpoint

    for block in model.blocks:
        if isinstance(block, FlowBlock):
            for layer in block.attn_blocks:
                checkpoint(layer)


def wrap(objective: nn.Module, mode: str, info: ProcessInfo, bf16: bool) -> nn.Module:
    """The module to call for the loss: the objective itself, DDP(objective) or FSDP2-sharded."""
    objective.to(info.device)
    if not info.distributed:
        return objective
    if mode == "ddp":
        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    if info.device.type == "cuda" and bf16:
        # gradients are reduced in fp32: bf16 sums over many ranks lose the small updates
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for block in objective.model.blocks:
        if isinstance(block, FlowBlock):
            for layer in block.attn_blocks:
                fully_shard(layer, mesh=mesh, mp_policy=policy)
            fully_shard(block, mesh=mesh, mp_policy=policy)
    denoiser = getattr(objective.model, "learnable_self_denoiser", None)
    if denoiser is not None:
        # its own unit: it runs after the objective's inner gradient pass (TrainingObjective),
        # which ends with the root's parameters resharded
        for layer in denoiser.attn_blocks:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(denoiser, mesh=mesh, mp_policy=policy)
    fully_shard(objective, mesh=mesh, mp_policy=policy)
    return objective


@contextlib.contextmanager
def gradient_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if sync:
        yield
    elif isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def unwrapped(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU; for an FSDP shard (DTensor) a collective over all processes."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def model_parameters(objective: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters by their model name (`blocks.0...`), shards under FSDP."""
    return dict(unwrapped(objective).model.named_parameters())


def full_model_state(objective: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state_dict on CPU (collective under FSDP: call on every process)."""
    return {name: full_tensor(t) for name, t in unwrapped(objective).model.state_dict().items()}


class EMA:
    """Exponential moving average of the parameters (same sharding as the parameters)."""

    def __init__(self, parameters: dict[str, nn.Parameter], decay: float):
        self.decay = decay
        self.parameters = parameters
        self.shadow = {name: p.detach().clone().float() for name, p in parameters.items()}

    @torch.no_grad()
    def update(self, decay: float | None = None) -> None:
        """shadow <- decay * shadow + (1 - decay) * parameter (`decay` None: the EMA's own)."""
        weight = 1.0 - (self.decay if decay is None else decay)
        for name, p in self.parameters.items():
            self.shadow[name].lerp_(p.detach().float(), weight)

    def full_state(self, buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """EMA weights plus the model's (non-averaged) buffers, full tensors on CPU."""
        state = {name: full_tensor(t) for name, t in self.shadow.items()}
        state.update({name: full_tensor(t) for name, t in buffers.items()})
        return state

    @torch.no_grad()
    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, shadow in self.shadow.items():
            full = state[name].float()
            if hasattr(shadow, "device_mesh"):  # a DTensor shard: keep this process's part
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full.to(shadow.device), shadow.device_mesh, shadow.placements)
            shadow.copy_(full)
