"""Diffusion core: noise schedules, samplers, score networks, score-matching losses."""
from dmarl.diffusion.losses import (
    action_gradient,
    denoising_loss,
    diffusion_ql_loss,
    dsm_loss,
    issm_loss,
    issm_weights,
    max_entropy_actor_loss,
    srpo_loss,
    temperature_loss,
)
from dmarl.diffusion.samplers import (
    Denoiser,
    OUSample,
    ddim_sample,
    ddpm_sample,
    gaussian_log_prob,
    ou_forward_kernel,
    ou_reverse_kernel,
    ou_sample,
    tanh_log_det,
)
from dmarl.diffusion.schedules import VPSDE, DiscreteSchedule, Schedule
from dmarl.diffusion.score_networks import AgentBatchedScoreMLP, AgentLoopScoreMLP, ScoreMLP

__all__ = [
    "VPSDE",
    "AgentBatchedScoreMLP",
    "AgentLoopScoreMLP",
    "Denoiser",
    "DiscreteSchedule",
    "OUSample",
    "Schedule",
    "ScoreMLP",
    "action_gradient",
    "ddim_sample",
    "ddpm_sample",
    "denoising_loss",
    "diffusion_ql_loss",
    "dsm_loss",
    "gaussian_log_prob",
    "issm_loss",
    "issm_weights",
    "max_entropy_actor_loss",
    "ou_forward_kernel",
    "ou_reverse_kernel",
    "ou_sample",
    "srpo_loss",
    "tanh_log_det",
    "temperature_loss",
]
