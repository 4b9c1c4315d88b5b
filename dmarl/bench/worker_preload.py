"""Imported once by the local pool's fork server (``multiprocessing``'s forkserver preload):
every cell process forked from it starts with torch, gin, MLflow's sqlite store and every
registered algorithm and task already imported, instead of importing them again and tearing
them down at exit (measured ~4.5 s import + ~1.6 s interpreter teardown of CPU per cell,
``scripts/profile_quickstart.py``). An import error here is left for the cell itself to
report: the cell imports the same modules again and fails with its usual message.
"""
from __future__ import annotations

# Imported lazily by a cell otherwise: torch._dynamo (with sympy) by the first optimiser a
# cell builds (~1 s CPU), mpe2's base env (with pygame) by the first MPE env.
LAZY_MODULES = ("torch._dynamo", "mpe2._mpe_utils.simple_env")


def preload() -> None:
    """Import what a cell needs. Never raises: an exception escaping a forkserver preload kills
    the fork server, and every cell would then fail with a broken-pipe error instead of its own
    message; so a broken module is left for the cell, which imports it again and reports it.
    An optional package that is not installed (mpe2) is simply not preloaded."""
    import contextlib
    import importlib

    with contextlib.suppress(Exception):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the sqlite store's engine and migrations)

        import dmarl.train  # noqa: F401
        from dmarl import registry

        registry.load_all()
    for module in LAZY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


preload()
