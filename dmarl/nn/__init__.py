"""Neural-network building blocks: MLPs, BatchRenorm, agent-batched layers, time embeddings."""
from dmarl.nn.agent_batched import (
    AgentBatchedBatchNorm,
    AgentBatchedLinear,
    AgentBatchedMLP,
    from_stacked,
    to_stacked,
)
from dmarl.nn.batch_renorm import BatchNorm, BatchRenorm, make_norm
from dmarl.nn.embeddings import FourierTimeEmbedding, SinusoidalTimeEmbedding, time_embedding
from dmarl.nn.mlp import ACTIVATIONS, MLP, Linear, make_activation, uniform_init_

__all__ = [
    "ACTIVATIONS",
    "AgentBatchedBatchNorm",
    "AgentBatchedLinear",
    "AgentBatchedMLP",
    "BatchNorm",
    "BatchRenorm",
    "FourierTimeEmbedding",
    "Linear",
    "MLP",
    "SinusoidalTimeEmbedding",
    "from_stacked",
    "make_activation",
    "make_norm",
    "time_embedding",
    "to_stacked",
    "uniform_init_",
]
