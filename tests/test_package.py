"""The wheel ships the gin configs and leaderboard references, and the installed package
resolves them from any working directory (dmarl.resources); the Python API is importable
without the heavy dependencies.

Installing the wheel into a fresh venv would download every dependency (minutes), so the
built wheel is unpacked and put first on PYTHONPATH instead: the interpreter then imports
``dmarl`` from the wheel's files, exactly the layout a ``pip install`` of the wheel creates,
with the dependencies of this venv.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dmarl import resources
from dmarl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "dmarl", "algorithms", "envs", "gin",
           "leaderboards/references.json", "leaderboards/reported")


def _setuptools_builds_wheels() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the sources (no network, no build files in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, target)
    # offline with this venv's setuptools (the dev extra; >= 70.1 builds wheels by itself), else isolated
    offline = ["--no-build-isolation"] if _setuptools_builds_wheels() else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *offline, "-q", "-w", str(root / "out")],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = (root / "out").glob("dmarl-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """The wheel unpacked as site-packages would hold it."""
    target = wheel.parent.parent / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def _run(args: list[str], site: Path | None, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``cwd`` importing dmarl from ``site`` (None: this checkout's install)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DMARL_CHECKPOINT_DIR": str(cwd / "ck")}
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_ships_every_gin_file_and_the_references(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_gin = {n for n in names if n.endswith(".gin")}
    expected_gin = {f"dmarl/{p.relative_to(REPO).as_posix()}" for p in (REPO / "gin").glob("*/*.gin")}
    assert expected_gin and shipped_gin == expected_gin
    assert "dmarl/leaderboards/references.json" in names
    reported = {f"dmarl/{p.relative_to(REPO).as_posix()}" for p in (REPO / "leaderboards/reported").glob("*.csv")}
    assert reported <= names
    assert {"dmarl/resources.py", "dmarl/api.py", "dmarl/algorithms/omad.py", "dmarl/envs/factory.py"} <= names
    assert not any(n.startswith("dmarl/leaderboards/quickstart") for n in names)  # outputs are not data


def test_installed_package_resolves_shipped_files_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    probe = ("import dmarl, dmarl.resources as r; "
             "print(dmarl.__file__); print(r.DATA_ROOT); print(r.REFERENCES_FILE.is_file()); "
             "print(len(dmarl.list_configs('experiments')))")
    out = _run(["-c", probe], installed, tmp_path)
    assert out.returncode == 0, out.stderr
    package_file, data_root, refs, experiments = out.stdout.split()
    assert Path(package_file).is_relative_to(installed) and Path(data_root) == installed / "dmarl"
    assert refs == "True" and int(experiments) == len(list((REPO / "gin/experiments").glob("*.gin")))



@pytest.mark.parametrize("layout", ["wheel", "checkout"])
def test_bench_resolves_a_shipped_benchmark_outside_the_repository(layout: str, request: pytest.FixtureRequest,
                                                                   tmp_path: Path) -> None:
    site = request.getfixturevalue("installed") if layout == "wheel" else None
    for name in ("gin/benchmarks/quickstart.gin", "benchmarks/quickstart"):
        bench = _run(["-m", "dmarl.cli", "bench", name, "--dry-run"], site, tmp_path)
        assert bench.returncode == 0, bench.stderr
        assert "to run: 12 new" in bench.stdout and "hasac|mpe_simple_spread_n3|0" in bench.stdout
    assert not (tmp_path / "mlflow.db").exists()
    missing = _run(["-m", "dmarl.cli", "bench", "benchmarks/nope.gin", "--dry-run"], site, tmp_path)
    assert missing.returncode == 2 and "benchmark file not found: benchmarks/nope.gin" in missing.stderr


TINY = [
    "OnlineRunner.total_env_steps = 400", "OnlineRunner.random_steps = 200", "OnlineRunner.learning_starts = 200",
    "OnlineRunner.eval_interval = 400", "OnlineRunner.eval_episodes = 2", "OnlineRunner.eval_num_envs = 2",
    "OnlineRunner.checkpoint_interval = 400",
]


def test_installed_package_trains_a_shipped_experiment_by_name(installed: Path, tmp_path: Path) -> None:
    args = ["-m", "dmarl.cli", "train", "experiments/hasac_simple_spread_cpu", "--no-progress",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    out = _run(args + [x for b in TINY for x in ("--bind", b)], installed, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FINISHED, final eval return" in out.stdout


def test_python_api_trains_from_outside_the_repository(tmp_path: Path) -> None:
    code = ("import dmarl, sys; r = dmarl.train('gin/experiments/hasac_simple_spread_cpu.gin', bind=sys.argv[1:], "
            f"tracking_uri='sqlite:///{tmp_path / 'mlflow.db'}'); print(r.status, r.final_score is not None)")
    out = _run(["-c", code, *TINY], None, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["FINISHED", "True"]


def test_resolver_order_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = resources.GIN_DIR / "experiments" / "hasac_simple_spread_cpu.gin"
    for name in ("gin/experiments/hasac_simple_spread_cpu.gin", "experiments/hasac_simple_spread_cpu",
                 "gin/experiments/hasac_simple_spread_cpu", str(shipped)):
        assert resources.find(name) == shipped.resolve()
    own = tmp_path / "gin" / "experiments" / "hasac_simple_spread_cpu.gin"  # a user's file wins
    own.parent.mkdir(parents=True)
    own.write_text("run.seed = 1\n")
    assert resources.find("gin/experiments/hasac_simple_spread_cpu.gin") == own.resolve()
    assert resources.find("experiments/hasac_simple_spread_cpu") == shipped.resolve()  # cwd has no experiments/
    with pytest.raises(UserError, match=r"config file not found: nope\.gin \(looked in the working directory"):
        resources.resolve("nope.gin")
    with pytest.raises(UserError, match="expected one of algorithms, tasks, experiments, benchmarks"):
        resources.list_configs("recipes")


def test_import_dmarl_is_light_and_exposes_the_api() -> None:
    code = ("import sys, dmarl; heavy = [m for m in ('torch', 'mlflow', 'gin', 'jax') if m in sys.modules]; "
            "print(heavy); print(sorted(set(dmarl.__all__) & set(dir(dmarl))) == sorted(dmarl.__all__)); "
            "print(dmarl.list_algorithms('offline'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    heavy, complete, offline = out.stdout.splitlines()
    assert heavy == "[]" and complete == "True"
    assert "omsd" in offline and "omad" not in offline
    import dmarl

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dmarl.nope  # noqa: B018
    import gin

    try:
        settings = dmarl.load_config(["algorithms/omsd", "tasks/toy_bandit", "experiments/omsd_bandit_cpu"],
                                     bind=["run.seed = 3", "run.dataset = 'toy/omsd_bandit'"])
    finally:
        gin.clear_config()
    assert settings.algorithm == "omsd" and settings.seed == 3
