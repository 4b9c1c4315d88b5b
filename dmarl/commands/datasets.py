"""`dmarl datasets list | info | validate | convert`: inspect, check and convert offline datasets."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """\
Offline datasets in the formats the papers use (OMAR per-agent .npy directories, OG-MARL
vaults, OMIGA .hdf5) and the suite's native format. PATH is a dataset path or a catalogue
name (see `dmarl datasets list`), looked up under $DMARL_DATA_DIR (default ./datasets).
"""

EPILOG = """\
examples:
  dmarl datasets list
  dmarl datasets info og_marl/mamujoco/2halfcheetah/Good      where to get it, or its statistics
  dmarl datasets validate datasets/omar/simple_spread/expert --task mpe/simple_spread_n3
  dmarl datasets convert datasets/omar/simple_spread/expert spread_expert_native
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="list, inspect, validate and convert offline datasets",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND", required=True)
    sub.add_parser("list", help="the catalogue of known datasets and which are present locally").set_defaults(
        func=_list
    )

    def task_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--task", default=None, help="validate against this task's EnvSpec (agents, dims)")
        p.add_argument(
            "--global-obs",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="build the task in global-observation mode (default: off; omiga/* tasks observe as OMIGA's data)",
        )

    info = sub.add_parser("info", help="sizes, episodes, return statistics and histogram; or where to get a dataset")
    info.add_argument("path", metavar="PATH", help="dataset path or catalogue name")
    info.add_argument("--bins", type=int, default=10, help="histogram bins (default: 10)")
    task_options(info)
    info.set_defaults(func=_info)

    validate = sub.add_parser("validate", help="load a dataset with every check; exit 2 on the first problem")
    validate.add_argument("path", metavar="PATH", help="dataset path or catalogue name")
    task_options(validate)
    validate.set_defaults(func=_validate)

    convert = sub.add_parser("convert", help="convert any supported dataset to the native format or a vault")
    convert.add_argument("src", metavar="SRC", help="dataset path or catalogue name")
    convert.add_argument("dst", metavar="DST", help="output directory (a vault: its <UID> directory)")
    convert.add_argument(
        "--format", choices=("native", "vault"), default="native", help="output format (default: native)"
    )
    convert.add_argument(
        "--force", action="store_true",
        help="overwrite an existing DST that is a dataset dmarl wrote (never another folder, '.', or the source)",
    )
    task_options(convert)
    convert.set_defaults(func=_convert)


def _load(args: argparse.Namespace, source: str) -> Any:
    from dmarl.envs.datasets import load_dataset

    return load_dataset(source, task=args.task, global_obs=args.global_obs)


def _list(args: argparse.Namespace) -> int:
    from dmarl.envs.datasets.catalogue import catalogue, data_root

    entries = catalogue().values()
    rows = [("name", "format", "agents", "obs", "act", "steps", "mean return", "evaluation task", "local")]
    for e in entries:
        rows.append(
            (
                e.name,
                e.format,
                str(e.n_agents),
                "/".join(map(str, sorted(set(e.obs_dims)))) if e.obs_dims else "?",
                "discrete" if e.discrete else str(e.action_dim or "?"),
                str(e.steps or "?"),
                f"{e.returns['mean']:.4g}" if "mean" in e.returns else "?",
                e.task or "refused (`info` says why)",
                "yes" if e.path().exists() else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    print(
        f"\n{len(rows) - 1} datasets; data root {data_root()} ($DMARL_DATA_DIR); "
        "`dmarl datasets info NAME` says where to get one"
    )
    return 0


def histogram(values: Any, bins: int, width: int = 40) -> list[str]:
    """Text histogram lines ``[low, high)  count  ####``."""
    import numpy as np

    if len(values) == 0:
        return ["  (no episodes)"]
    counts, edges = np.histogram(values, bins=bins)
    top = max(int(counts.max()), 1)
    return [
        f"  [{edges[i]:>10.4g}, {edges[i + 1]:>10.4g})  {counts[i]:>8d}  {'#' * round(width * counts[i] / top)}"
        for i in range(len(counts))
    ]


def describe(dataset: Any, bins: int = 10) -> list[str]:
    """Lines for `info`: sizes, dims, episodes, returns, histogram, provenance, warnings."""
    import json

    from dmarl.envs.datasets import catalogue

    m = dataset.metadata
    stats = dataset.return_stats()
    lines = [
        f"dataset: {m.get('source')} (format {m.get('format')}"
        + (f", catalogue {m['catalogue']})" if m.get("catalogue") else ")"),
        f"  transitions {len(dataset)}, episodes {len(dataset.episodes)}, agents {dataset.n_agents}",
        f"  obs dims {dataset.obs_dims} (padded {dataset.obs_dim}), action dims {dataset.action_dims} "
        f"(padded {dataset.action_dim}), state dim {dataset.state_dim}",
        f"  array bytes {dataset.nbytes / 2**20:.1f} MiB, terminal transitions {int((dataset.terminated != 0).sum())}",
        f"  reward convention {m.get('reward_convention')}" + (f", task {m['task']}" if m.get("task") else ""),
    ]
    if len(dataset.episodes):
        lens = dataset.episodes.lengths
        lines.append(f"  episode length mean {lens.mean():.1f}, min {lens.min()}, max {lens.max()}")
        lines.append("  returns: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if k != "episodes"))
    entry = catalogue.lookup(m["catalogue"]) if m.get("catalogue") else None
    if entry is not None:
        lines.append(f"  evaluation task: {entry.task or 'none (refused: ' + entry.refused + ')'}")
    if len(dataset.episodes):
        if entry is not None and entry.returns:
            lines.append("  catalogue returns: " + ", ".join(f"{k} {v:.4g}" for k, v in entry.returns.items()))
        lines.append("  return histogram:")
        lines += histogram(dataset.episodes.returns, bins)
    if m.get("provenance"):
        lines.append("  provenance: " + json.dumps(m["provenance"], sort_keys=True))
    lines += [f"  warning: {w}" for w in m.get("warnings", [])]
    return lines


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dmarl.envs.datasets import catalogue, missing_message

    entry = catalogue.lookup(args.path)
    if entry is not None and not Path(args.path).exists():
        print("\n".join(entry.describe()))
        if not entry.path().exists():
            print(missing_message(entry))
            return 0
    print("\n".join(describe(_load(args, args.path), args.bins)))
    return 0


def _validate(args: argparse.Namespace) -> int:
    dataset = _load(args, args.path)
    m = dataset.metadata
    print(
        f"ok: {m.get('source')} ({m.get('format')}): {len(dataset)} transitions, {len(dataset.episodes)} episodes, "
        f"{dataset.n_agents} agents"
        + (f", matches task {m['task']}" if args.task else "")
        + (f", catalogue {m['catalogue']}" if m.get("catalogue") else "")
    )
    for warning in m.get("warnings", []):
        print(f"warning: {warning}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dmarl.envs.datasets import GENERATED, catalogue, write_dataset
    from dmarl.envs.datasets.common import check_output, write_errors_as_user_errors

    entry = catalogue.lookup(args.src)
    source = (
        Path(args.src) if Path(args.src).exists()
        else catalogue.data_root() / args.src if args.src in GENERATED
        else entry.path() if entry is not None
        else Path(args.src)
    )
    check_output(args.dst, args.force, sources=[source])  # before loading: fail in a second
    dataset = _load(args, args.src)
    with write_errors_as_user_errors(args.dst):
        out = write_dataset(dataset, args.dst, args.format, force=args.force)
    print(f"wrote {out} ({args.format}): {len(dataset)} transitions, {len(dataset.episodes)} episodes")
    return 0
