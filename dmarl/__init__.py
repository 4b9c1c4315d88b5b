"""dmarl: a benchmark suite for diffusion-policy multi-agent reinforcement learning."""

__version__ = "0.1.0"
