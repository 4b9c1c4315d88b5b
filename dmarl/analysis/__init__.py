"""Small analytic checks from the papers (e.g. OMSD's combinatorial mode shift)."""
from dmarl.analysis.mode_shift import (
    coordinated_modes,
    factorised,
    marginals,
    mode_shift_tv,
    tv_distance,
)

__all__ = ["coordinated_modes", "factorised", "marginals", "mode_shift_tv", "tv_distance"]
