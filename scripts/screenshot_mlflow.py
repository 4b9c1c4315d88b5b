"""Screenshot MLflow's comparison view of a benchmark experiment (headless Chromium).

    python scripts/screenshot_mlflow.py --experiment quickstart --out leaderboards/quickstart/mlflow.png

Starts `mlflow server` on loopback over the store (default: ./mlflow.db), opens the link the
README gives (the experiment's runs in chart view) and writes a PNG of the page.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from dmarl.errors import UserError
from dmarl.mlflow_ui import comparison_url, mlflow_server, screenshot
from dmarl.tracking import resolve_tracking_uri


def take(tracking_uri: str | None, experiment: str, out: Path) -> str:
    """Screenshot ``experiment``'s comparison view to ``out``; returns the URL shown."""
    uri = resolve_tracking_uri(tracking_uri)
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"tracking store {uri}: no experiment {experiment!r}")
    with tempfile.TemporaryDirectory() as artifacts, mlflow_server(uri, Path(artifacts)) as base:
        url = comparison_url(base, found.experiment_id)
        screenshot(url, out)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None, help="sqlite:///FILE store (default: ./mlflow.db)")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    url = take(args.tracking_uri, args.experiment, args.out)
    print(f"{args.out}: {url}")


if __name__ == "__main__":
    main()
