"""What a user sees in MLflow, fetched from a real `mlflow server` on loopback through its REST
API: the experiment opens on the model-development view, a run carries only the parameters it
used, MLflow's standard tags and a description, and an offline run its dataset as an input."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import imageio
import pytest

from conftest import REPO, rest
from dmarl.cli import main
from dmarl.mlflow_ui import RENDERED_STD, chromium, pixel_std
from dmarl.tracking import git_sha
from dmarl.train import run_training
from test_omsd_train import RUNNER, tiny
from test_train import SMALL

sys.path.insert(0, str(REPO / "scripts"))
from screenshot_mlflow import take  # noqa: E402

HASAC = str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")


def _rest(uri: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return rest(uri, f"/api/2.0/mlflow/{endpoint}", body)


def _run(uri: str, run_id: str) -> dict[str, Any]:
    return _rest(uri, f"runs/get?run_id={run_id}")["run"]


def test_runs_through_the_rest_api_show_what_the_user_needs(mlflow_server: str, workdir: Path) -> None:
    # an OMAD binding in a HASAC run: parsed and valid, but not used by the run
    online = run_training([HASAC], [*SMALL, "OMAD.critic_lr = 0.5"], tracking_uri=mlflow_server, experiment="ui",
                          progress=False)
    assert online.status == "FINISHED"

    experiment = _rest(mlflow_server, "experiments/get-by-name?experiment_name=ui")["experiment"]
    kinds = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert kinds["mlflow.experimentKind"] == "custom_model_development"
    found = _rest(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [r["info"]["run_id"] for r in found] == [online.run_id]

    run = _run(mlflow_server, online.run_id)
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["HASAC.hidden"] == "(32, 32)" and params["OnlineRunner.total_env_steps"] == "2400"
    assert "HASAC.polyak" in params  # a default the run used is a parameter too
    assert not [k for k in params if k.startswith("OMAD.")], "bindings the run never used are not params"
    if git_sha() != "unknown":  # a git checkout: MLflow's commit tag is the commit the run was made from
        assert tags["mlflow.source.git.commit"] == tags["git_sha"] and len(tags["git_sha"]) == 40
    assert tags["mlflow.source.name"] == "dmarl" and tags["mlflow.user"]
    assert "**hasac** on **mpe/simple_spread_n3**" in tags["mlflow.note.content"]

    data = workdir / "spread_random"
    assert main(["collect", "--task", "mpe/simple_spread_n3", "--policy", "random", "--episodes", "4",
                 "--num-envs", "2", "--out", str(data)]) == 0
    bindings = ["run.task = 'mpe/simple_spread_n3'", f"run.dataset = '{data}'", *RUNNER, *tiny("OMSD")]
    offline = run_training([str(REPO / "gin/algorithms/omsd.gin")], bindings, tracking_uri=mlflow_server,
                           experiment="ui", progress=False)
    assert offline.status == "FINISHED"
    inputs = _run(mlflow_server, offline.run_id)["inputs"]["dataset_inputs"]
    assert len(inputs) == 1
    dataset = inputs[0]["dataset"]
    assert dataset["name"] == "spread_random" and dataset["source"] == str(data) and len(dataset["digest"]) == 16
    assert json.loads(dataset["profile"])["episodes"] == 4
    assert {t["key"]: t["value"] for t in inputs[0]["tags"]}["mlflow.data.context"] == "training"


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="the Debian package chromium is not installed")
def test_screenshot_of_the_comparison_view_shows_both_algorithms(workdir: Path) -> None:
    omad = str(REPO / "gin/experiments/omad_simple_spread_cpu.gin")
    small_omad = [b.replace("HASAC.hidden", "OMAD.actor_hidden") for b in SMALL] + ["OMAD.critic_hidden = (32, 32)"]
    for config, bindings in ((HASAC, SMALL), (omad, small_omad)):
        assert run_training([config], bindings, experiment="compare", progress=False).status == "FINISHED"
    out = workdir / "mlflow.png"
    url = take(None, "compare", out)
    assert url.endswith("/runs?compareRunsMode=CHART&workflowType=machine_learning")
    image = imageio.v3.imread(out)
    assert image.shape[0] >= 900 and image.shape[1] >= 1500
    # a rendered page (charts, run names), not a blank or error screen
    assert pixel_std(out) > RENDERED_STD


def test_pixel_std_tells_a_blank_capture_from_a_drawn_one(tmp_path: Path) -> None:
    """The rule `screenshot` retakes a capture by: a uniform page is ~0, drawn content is not."""
    import numpy as np

    blank = np.full((100, 160, 3), 247, np.uint8)
    drawn = blank.copy()
    drawn[::4] = 30  # dark lines on a light page
    imageio.v3.imwrite(tmp_path / "blank.png", blank)
    imageio.v3.imwrite(tmp_path / "drawn.png", drawn)
    assert pixel_std(tmp_path / "blank.png") == 0.0
    assert pixel_std(tmp_path / "drawn.png") > RENDERED_STD
