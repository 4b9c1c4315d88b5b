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
    """Import what a cell needs; never raises (the fork server must survive a broken module)."""
    import importlib

    try:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the sqlite store's engine and migrations)

        import dmarl.train  # noqa: F401
        from dmarl import registry

        registry.load_all()
    except Exception:  # noqa: BLE001 - reported by the cell that imports it again
        pass
    for module in LAZY_MODULES:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - an optional package (mpe2) that is not installed
            pass


preload()
