"""Training on many devices: the `parallel:` / `parallel_config:` blocks of a config turned into MindSpore calls.

Data parallelism (数据并行), the one kind that also runs on CPU: every device holds the whole model, takes its own
rows of each global batch, and the gradients are averaged across devices (an AllReduce) before the update, so
all replicas stay identical and the run equals one device with the same global batch.

    python -m mindllm.launch -n 2 -- configs/gpt_char_shakespeare_dp2.yaml    # starts 2 workers with msrun

Tensor (模型并行) and pipeline (流水线并行) parallelism split the model itself: `shard_megatron` annotates GPT's
matmuls with Megatron's column/row split and `pipeline_stage` on its blocks; MindSpore's semi_auto_parallel
inserts the communication. MindSpore runs those only on GPU/Ascend, so on CPU `validate` refuses them in one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank, init

from .errors import UserError
from .models.bert import BertLayer
from .models.gpt import Block
from .models.layers import DecoderLayer, EncoderLayer
from .models.llama import LlamaDecoderLayer

SHARDED_MODES = ("semi_auto_parallel", "auto_parallel")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""
    rank: int = 0
    world: int = 1
    split_batches: bool = False  # data_parallel: mindllm gives each rank its rows and averages gradients itself

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints: the other ranks hold the same weights."""
        return self.rank == 0


_current = Dist()


def current() -> Dist:
    return _current


def launched_workers() -> int:
    """How many workers msrun (or the MS_* environment) started this process among; 0 if none."""
    return int(os.environ.get("MS_WORKER_NUM", "0")) if os.environ.get("MS_ROLE") == "MS_WORKER" else 0


def validate(cfg, target: str, world: int) -> None:
    """Refuse a layout the backend or the device count cannot run, before any work is done."""
    par, layout, train = cfg.parallel, cfg.parallel_config, cfg.train
    mode = par.parallel_mode
    if mode in SHARDED_MODES and target == "CPU":
        raise UserError(f"parallel.parallel_mode={mode} shards tensors across devices, which MindSpore runs only on "
                        f"GPU/Ascend; on CPU use parallel.parallel_mode=data_parallel with python -m mindllm.launch")
    if mode == "stand_alone":
        if world > 1:
            raise UserError(f"launched as {world} workers but parallel.parallel_mode=stand_alone would train {world} "
                            f"independent copies; set parallel.parallel_mode=data_parallel")
        return
    if world < 1:
        raise UserError(f"parallel.parallel_mode={mode} needs several processes: start it with "
                        f"python -m mindllm.launch -n 2 -- CONFIG [key=value ...]")
    if mode == "data_parallel":
        if layout.model_parallel > 1 or layout.pipeline_stage > 1:
            raise UserError("parallel_config.model_parallel/pipeline_stage > 1 need "
                            "parallel.parallel_mode=semi_auto_parallel (GPU/Ascend); data_parallel copies the model")
        if layout.data_parallel not in (1, world):
            raise UserError(f"parallel_config.data_parallel={layout.data_parallel} but {world} workers were launched; "
                            f"make them equal")
        if train.batch_size % world:
            raise UserError(f"train.batch_size={train.batch_size} (the global batch) must divide evenly among the "
                            f"{world} workers")
        if par.enable_parallel_optimizer:
            raise UserError("parallel.enable_parallel_optimizer (optimizer sharding) needs "
                            "parallel.parallel_mode=semi_auto_parallel on GPU/Ascend")
        return
    if not par.full_batch:
        raise UserError(f"parallel.parallel_mode={mode} in mindllm feeds every device the whole global batch and "
                        f"lets MindSpore split it: set parallel.full_batch=true")
    devices = layout.data_parallel * layout.model_parallel * layout.pipeline_stage
    if devices != world:
        raise UserError(f"parallel_config: data_parallel x model_parallel x pipeline_stage = "
                        f"{layout.data_parallel} x {layout.model_parallel} x {layout.pipeline_stage} = {devices}, but "
                        f"{world} devices were launched")
    check_layout(cfg)


def check_layout(cfg) -> None:
    """The divisibility a tensor/pipeline split needs (checked on any machine, so a cluster config can be
    validated on a laptop)."""
    layout, model, train = cfg.parallel_config, cfg.model, cfg.train
    if cfg.model.arch != "gpt" and (layout.model_parallel > 1 or layout.pipeline_stage > 1):
        raise UserError(f"tensor/pipeline parallel layouts are written for model.arch=gpt, not {cfg.model.arch}")
    if model.n_head % layout.model_parallel:
        raise UserError(f"model.n_head={model.n_head} must be divisible by parallel_config.model_parallel="
                        f"{layout.model_parallel}: each device takes whole attention heads")
    if model.n_layer % layout.pipeline_stage:
        raise UserError(f"model.n_layer={model.n_layer} must be divisible by parallel_config.pipeline_stage="
                        f"{layout.pipeline_stage}: each stage takes whole layers")
    if layout.pipeline_stage > 1 and layout.micro_batch_num < layout.pipeline_stage:
        raise UserError(f"parallel_config.micro_batch_num={layout.micro_batch_num} < pipeline_stage="
                        f"{layout.pipeline_stage} leaves stages idle; use at least {layout.pipeline_stage}")
    rows = layout.data_parallel * layout.micro_batch_num
    if train.batch_size % rows:
        raise UserError(f"train.batch_size={train.batch_size} must be divisible by data_parallel x micro_batch_num = "
                        f"{rows}")


def setup(cfg, target: str) -> Dist:
    """Join the job (communication.init) and set MindSpore's parallel context; stand_alone does nothing."""
    global _current
    if os.environ.get("MS_ROLE") == "MS_SCHED":  # msrun's scheduler runs this script too: it serves the
        init()  # rendezvous inside init() and exits there when the job ends
        raise SystemExit(0)
    world = launched_workers()
    validate(cfg, target, world)
    if cfg.parallel.parallel_mode == "stand_alone":
        _current = Dist()
        return _current
    init()
    _current = Dist(get_rank(), get_group_size(), cfg.parallel.parallel_mode == "data_parallel")
    par = cfg.parallel
    kwargs = dict(parallel_mode=par.parallel_mode, gradients_mean=par.gradients_mean, device_num=_current.world)
    if par.parallel_mode in SHARDED_MODES:
        kwargs.update(full_batch=par.full_batch, enable_parallel_optimizer=par.enable_parallel_optimizer,
                      pipeline_stages=cfg.parallel_config.pipeline_stage)
    ms.set_auto_parallel_context(**kwargs)
    return _current


def rows(batch, dist: Dist):
    """This rank's share of a global batch: rows [rank*B/world, (rank+1)*B/world) of every array."""
    if not dist.split_batches:  # one process, or semi/auto parallel (full_batch: MindSpore splits it)
        return batch
    n = len(batch[0]) // dist.world
    return tuple(a[dist.rank * n:(dist.rank + 1) * n] for a in batch)


def grad_reducer(params, dist: Dist, mean: bool = True):
    """Average (or sum) gradients over the data-parallel ranks; one process: the gradients as they are."""
    if not dist.split_batches:  # semi/auto parallel insert their own gradient AllReduce
        return nn.Identity()
    return nn.DistributedGradReducer(params, mean=mean, degree=dist.world)


def loss_reducer(dist: Dist):
    """The mean of a scalar over ranks (the global batch's loss, for logging); identity on one process."""
    if not dist.split_batches:
        return nn.Identity()

    class _Mean(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce()

        def construct(self, x):
            return self.all_reduce(x) / dist.world

    return _Mean()


def barrier(dist: Dist) -> None:
    """Wait until every rank gets here. An AllReduce of one number: MindSpore's Barrier op has no CPU kernel."""
    if dist.world > 1:
        ops.AllReduce()(ms.Tensor([1.0], ms.float32)).asnumpy()


def apply_recompute(model) -> int:
    """Activation checkpointing (重计算) per Transformer block: keep each block's input, recompute its insides in
    the backward pass. Returns how many blocks were marked."""
    kinds = (Block, LlamaDecoderLayer, BertLayer, EncoderLayer, DecoderLayer)  # isinstance: kernels.fuse() swaps in a FusedBlock
    blocks = [c for _, c in model.cells_and_names() if isinstance(c, kinds)]
    for b in blocks:
        b.recompute()
    return len(blocks)


def shard_gpt(model, layout) -> None:
    """Megatron-style tensor parallelism (张量并行) and pipeline stages for semi_auto_parallel, as shard
    strategies on GPT's primitives: MindSpore inserts the communication when it compiles the step (GPU/Ascend).

    Column-parallel first matmuls (c_attn, c_fc: each device computes a slice of the output features, so whole
    heads / MLP columns), row-parallel second matmuls (the two c_proj: each device multiplies its slice, the partial
    sums are added by an AllReduce). x is (dp*rows, C) 2-D, weights (in, out). The attention products run on the
    (batch x heads) axis split dp*mp ways. Blocks are given consecutive pipeline stages."""
    dp, mp, pp = layout.data_parallel, layout.model_parallel, layout.pipeline_stage
    n = len(model.transformer.h)
    for i, block in enumerate(model.transformer.h):
        for column in (block.attn.c_attn, block.mlp.c_fc):
            column.matmul.shard(((dp, 1), (1, mp)))
        for row in (block.attn.c_proj, block.mlp.c_proj):
            row.matmul.shard(((dp, mp), (mp, 1)))
        for bmm in (block.attn.attention.qk, block.attn.attention.av):
            bmm.shard(((dp * mp, 1, 1), (dp * mp, 1, 1)))
        block.pipeline_stage = i * pp // n
    model.transformer.wte.pipeline_stage = 0
    model.transformer.ln_f.pipeline_stage = pp - 1
