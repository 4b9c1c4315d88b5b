"""Critics: categorical distributional (C51 + CrossQ), twin Q with targets, IQL, CQL."""
from dmarl.critics.cql import cql_penalty
from dmarl.critics.distributional import (
    CategoricalCritic,
    c51_project,
    categorical_entropy,
    categorical_loss,
    categorical_td_target,
    crossq_forward,
)
from dmarl.critics.iql import expectile_loss, iql_q_loss, iql_value_loss
from dmarl.critics.twin_q import TwinQ, make_target, polyak_update

__all__ = [
    "CategoricalCritic",
    "TwinQ",
    "c51_project",
    "categorical_entropy",
    "categorical_loss",
    "categorical_td_target",
    "cql_penalty",
    "crossq_forward",
    "expectile_loss",
    "iql_q_loss",
    "iql_value_loss",
    "make_target",
    "polyak_update",
]
