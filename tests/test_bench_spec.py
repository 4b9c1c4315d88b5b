"""Benchmark gin files -> cells: resolution of algorithm/task gin files, bindings, keys, errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from dmarl import cli
from dmarl.bench.spec import REPO_ROOT, cell_key, expand, load_benchmark
from dmarl.bench.sweep import format_plan, plan_cells
from dmarl.errors import UserError


# Cells are resolved with train's checks: the stand-in gin files bind a real algorithm and task.
GIN_BODY = {"algorithms": "run.algorithm = 'hasac'", "tasks": "run.task = 'mpe/simple_spread_n3'"}


def make_gin_tree(root: Path) -> Path:
    """gin/algorithms/{fast,slow}.gin, gin/tasks/{t1,t2}.gin; returns the benchmarks folder."""
    for kind, names in (("algorithms", ("fast", "slow")), ("tasks", ("t1", "t2"))):
        (root / "gin" / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "gin" / kind / f"{name}.gin").write_text(f"# {name}\n{GIN_BODY[kind]}\n")
    bench_dir = root / "gin" / "benchmarks"
    bench_dir.mkdir(exist_ok=True)
    return bench_dir


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_single_comparison_expands_to_algorithms_x_tasks_x_seeds(tmp_path: Path) -> None:
    bench_file = write(make_gin_tree(tmp_path) / "duel.gin", """
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['fast', 'slow']
comparison.tasks = ['t1', 't2']
comparison.seeds = 3
comparison.budget = {'OnlineRunner.total_env_steps': 1000}
comparison.evaluation = {'OnlineRunner.eval_interval': 100}
comparison.bindings = ['HASAC.polyak = 0.01']
""")
    bench = load_benchmark(bench_file)
    assert bench.name == "duel"  # default: the file's stem
    cells = expand(bench)
    assert len(cells) == 2 * 2 * 3
    assert [c.key for c in cells[:3]] == ["fast|t1|0", "fast|t1|1", "fast|t1|2"]
    cell = cells[4]
    assert (cell.algorithm, cell.task, cell.seed) == ("fast", "t2", 1)
    assert cell.config_files == (
        str(tmp_path / "gin/algorithms/fast.gin"),
        str(tmp_path / "gin/tasks/t2.gin"),
    )
    assert cell.bindings == (
        "HASAC.polyak = 0.01",
        "OnlineRunner.total_env_steps = 1000",
        "OnlineRunner.eval_interval = 100",
        "run.seed = 1",
    )
    assert cell.budget == {"OnlineRunner.total_env_steps": 1000}
    assert cell.comparison == "main" and cell.run_name == "fast-t2-s1"
    # fast/slow and t1/t2 resolve to the same config: the hash follows content, not file names
    assert len({c.config_hash for c in cells}) == len({c.seed for c in cells}) == 3


def test_config_hash_is_stable_and_follows_the_budget(tmp_path: Path) -> None:
    text = """
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['fast']
comparison.tasks = ['t1']
comparison.seeds = [7]
comparison.budget = {'OnlineRunner.total_env_steps': %d}
"""
    bench_dir = make_gin_tree(tmp_path)
    first = expand(load_benchmark(write(bench_dir / "a.gin", text % 1000)))[0]
    again = expand(load_benchmark(write(bench_dir / "a.gin", text % 1000)))[0]
    other = expand(load_benchmark(write(bench_dir / "a.gin", text % 2000)))[0]
    assert first.key == other.key == cell_key("fast", "t1", 7)
    assert first.config_hash == again.config_hash != other.config_hash


def test_scoped_comparisons_dict_entries_and_dataset_bindings(tmp_path: Path) -> None:
    bench_file = write(make_gin_tree(tmp_path) / "two.gin", """
benchmark.name = 'two-parts'
benchmark.comparisons = [@online/comparison(), @offline/comparison()]
comparison.seeds = 2
online/comparison.algorithms = ['fast', 'slow']
online/comparison.tasks = ['t1']
online/comparison.baselines = ['slow']
offline/comparison.algorithms = {'fast-small': ['fast', 'HASAC.hidden = (8, 8)']}
offline/comparison.tasks = {'t2-expert': ['gin/tasks/t2.gin', "run.dataset = 'omar/mpe/simple_spread/Expert'"]}
offline/comparison.seeds = [5]
""")
    bench = load_benchmark(bench_file)
    assert bench.name == "two-parts"
    assert [c.name for c in bench.comparisons] == ["online", "offline"]
    assert bench.comparisons[0].baselines == ("slow",)
    cells = expand(bench)
    assert [c.key for c in cells] == [
        "fast|t1|0", "fast|t1|1", "slow|t1|0", "slow|t1|1", "fast-small|t2-expert|5",
    ]
    offline = cells[-1]
    assert offline.comparison == "offline"
    assert offline.config_files == (str(tmp_path / "gin/algorithms/fast.gin"), str(tmp_path / "gin/tasks/t2.gin"))
    assert offline.bindings[-3:] == ("HASAC.hidden = (8, 8)", "run.dataset = 'omar/mpe/simple_spread/Expert'", "run.seed = 5")


def test_bare_names_fall_back_to_the_repository_gin_files(tmp_path: Path) -> None:
    bench = load_benchmark(write(tmp_path / "repo.gin", """
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['hasac']
comparison.tasks = ['mpe_simple_spread_n3']
comparison.seeds = 1
"""))
    (cell,) = expand(bench)
    assert cell.config_files == (
        str(REPO_ROOT / "gin/algorithms/hasac.gin"),
        str(REPO_ROOT / "gin/tasks/mpe_simple_spread_n3.gin"),
    )


def test_a_task_may_be_named_as_the_registry_names_it(tmp_path: Path) -> None:
    bench = load_benchmark(write(tmp_path / "repo.gin", """
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['hasac']
comparison.tasks = ['mpe/simple_spread_n3']
comparison.seeds = 1
"""))
    (cell,) = expand(bench)
    assert cell.task == "mpe_simple_spread_n3" and cell.run_name == "hasac-mpe_simple_spread_n3-s0"
    assert cell.config_files[1] == str(REPO_ROOT / "gin/tasks/mpe_simple_spread_n3.gin")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("comparison.algorithms = ['fsat']\ncomparison.tasks = ['t1']", "did you mean 'fast'"),
        ("comparison.algorithms = ['fast']\ncomparison.tasks = ['nope/t9.gin']", "task gin file not found"),
        ("comparison.algorithms = ['fast']\ncomparison.tasks = ['t1']\ncomparison.baselines = ['slow']",
         "not among its algorithms"),
        ("comparison.algorithms = ['fast', 'gin/algorithms/fast.gin']\ncomparison.tasks = ['t1']",
         "duplicate algorithm labels"),
        ("comparison.algorithms = ['fast']\ncomparison.tasks = ['t1']\ncomparison.seeds = [1, 1]", "distinct seeds"),
        ("comparison.algoritms = ['fast']", "algoritms"),
    ],
)
def test_bad_declarations_fail_before_any_work(tmp_path: Path, body: str, message: str) -> None:
    bench_file = write(make_gin_tree(tmp_path) / "bad.gin", "benchmark.comparisons = [@comparison()]\n" + body + "\n")
    with pytest.raises(UserError, match=message):
        expand(load_benchmark(bench_file))


def test_a_cell_declared_twice_is_an_error(tmp_path: Path) -> None:
    bench_file = write(make_gin_tree(tmp_path) / "twice.gin", """
benchmark.comparisons = [@a/comparison(), @b/comparison()]
comparison.algorithms = ['fast']
comparison.tasks = ['t1']
comparison.seeds = 1
""")
    with pytest.raises(UserError, match=r"fast\|t1\|0 is declared by comparisons 'a' and 'b'"):
        expand(load_benchmark(bench_file))


def test_gin_errors_name_the_file_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="benchmark file not found"):
        load_benchmark(tmp_path / "missing.gin")
    bad = write(make_gin_tree(tmp_path) / "syntax.gin", "benchmark.comparisons = [@comparison(\n")
    with pytest.raises(UserError, match="syntax.gin"):
        load_benchmark(bad)


def test_dry_run_listing_shows_cells_actions_and_cost(tmp_path: Path) -> None:
    bench = load_benchmark(write(make_gin_tree(tmp_path) / "cost.gin", """
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['fast', 'slow']
comparison.tasks = ['t1']
comparison.seeds = 2
comparison.budget = {'OnlineRunner.total_env_steps': 5000}
"""))
    text = format_plan(bench, plan_cells(expand(bench), {}), workers=2)
    assert "benchmark cost: 4 cells" in text
    assert "slow|t1|1" in text and "run" in text
    assert "OnlineRunner.total_env_steps = 20,000" in text
    assert "4 new" in text


def test_dry_run_command_lists_cells_without_creating_a_store(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_file = write(make_gin_tree(workdir) / "cli.gin", """
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['fast']
comparison.tasks = ['t1', 't2']
comparison.seeds = 1
""")
    assert cli.main(["bench", str(bench_file), "--dry-run", "--bind", "comparison.seeds = 2"]) == 0
    out = capsys.readouterr().out
    assert "benchmark cli: 4 cells" in out and "fast|t2|1" in out
    assert not (workdir / "mlflow.db").exists()
    assert cli.main(["bench", str(workdir / "nope.gin"), "--dry-run"]) == 2
    assert "benchmark file not found" in capsys.readouterr().err
