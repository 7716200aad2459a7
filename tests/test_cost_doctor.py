"""A study's projected cost (`ablate.cost`, `ablate bench --study`), the grid's seed-by-seed run order, and
`ablate doctor` (its table, its failures, its steps on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_grid_study

from ablate.cli import main
from ablate.cost import cell_seconds, project_study
from ablate.study import load_study
from resmasknet.recipe import TrainConfig


def _study(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "cost.yaml"
    path.write_text(yaml.safe_dump({**tiny_grid_study("cost"), **changes}))
    return path


def test_cell_seconds_is_the_hand_computation():
    cfg = TrainConfig(epochs=2, batch_size=10, early_stop_patience=None)
    # 100 train images = 10 batches of 10 at 20 img/s (5 s) + 50 val at 50 img/s (1 s), twice; then the best
    # checkpoint scored on the 50 val (1 s) and 40 test (0.8 s) images at 50 img/s
    assert cell_seconds(cfg, (100, 50, 40), 20.0, 50.0, tta=False) == pytest.approx(2 * (5 + 1) + 1 + 0.8)
    # the authors' TTA scores the test split 10 more times
    assert cell_seconds(cfg, (100, 50, 40), 20.0, 50.0, tta=True) == pytest.approx(2 * (5 + 1) + 1 + 8.8)
    # max_train_batches caps the batches; limit caps train and val during training, not the final scoring
    assert cell_seconds(cfg.replace(max_train_batches=3), (100, 50, 40), 20.0, 50.0, tta=False) == pytest.approx(
        2 * (1.5 + 1) + 1 + 0.8)
    assert cell_seconds(cfg.replace(limit=30), (100, 50, 40), 20.0, 50.0, tta=False) == pytest.approx(
        2 * (1.5 + 0.6) + 1 + 0.8)


def test_projection_measures_each_network_once_and_sums_the_cells(tmp_path, monkeypatch):
    import resmasknet.bench as bench

    calls = []

    def fake_bench(model, *, batch_size, **kw):
        calls.append(model.config)
        rate = 10.0 if model.config.masks[0].enabled else 40.0
        return {"train_img_s": rate, "eval_img_s": 4 * rate, "bf16": False}

    monkeypatch.setattr(bench, "bench_model", fake_bench)
    study = load_study(_study(tmp_path, seeds=[0, 1, 2]))
    cost = project_study(study, (160, 40, 40), device="cpu")
    assert len(calls) == 2  # two variants; their seeds share the measurement
    rows = {r.variant: r for r in cost.rows}
    on, off = rows["on"], rows["off"]
    assert on.seeds == off.seeds == 3
    # 3 batches of 16 (max_train_batches) per epoch, 1 epoch, 40 val + 40 test images, tta on by default
    assert on.seconds_per_seed == pytest.approx(3 * 16 / 10 + 40 / 40 + (40 + 40 * 11) / 40)
    assert off.seconds_per_seed == pytest.approx(3 * 16 / 40 + 40 / 160 + (40 + 40 * 11) / 160)
    assert cost.total_s == pytest.approx(3 * (on.seconds_per_seed + off.seconds_per_seed))
    assert "projected" in cost.format() and "6 cells" in cost.format()


def test_projection_under_bf16_is_what_the_recipe_or_the_flag_asks_for(tmp_path, monkeypatch):
    import resmasknet.bench as bench

    asked = []

    def fake_bench(model, *, batch_size, cpu_bf16, **kw):
        asked.append(cpu_bf16)
        # as on a CPU with bf16 units: twice the fp32 rate when bf16 is asked for
        rate = 20.0 if cpu_bf16 else 10.0
        return {"train_img_s": rate, "eval_img_s": 4 * rate, "bf16": cpu_bf16}

    monkeypatch.setattr(bench, "bench_model", fake_bench)
    plain = load_study(_study(tmp_path))
    fp32 = project_study(plain, (160, 40, 40), device="cpu")
    flagged = project_study(plain, (160, 40, 40), device="cpu", cpu_bf16=True)
    recipe = tiny_grid_study("cost")
    recipe["base"]["train"] = {**recipe["base"].get("train", {}), "cpu_bf16": True}
    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(recipe))
    from_recipe = project_study(load_study(path), (160, 40, 40), device="cpu")
    assert asked == [False, False, True, True, True, True]
    assert [r.bf16 for r in fp32.rows] == [False, False] and all(r.bf16 for r in flagged.rows + from_recipe.rows)
    # same splits, twice the rate: half the time, and the table says which precision it measured
    assert flagged.total_s == pytest.approx(fp32.total_s / 2) == pytest.approx(from_recipe.total_s)
    assert "bf16" in flagged.format() and "bf16" not in fp32.format()


def test_projection_scores_at_the_rate_prediction_runs_at(tmp_path, monkeypatch):
    import resmasknet.bench as bench

    def fake_bench(model, *, batch_size, cpu_bf16, **kw):
        # a CPU with bf16 units: bf16 training and inference twice as fast, prediction (validation, scoring) in fp32
        return {"train_img_s": 20.0, "eval_img_s": 80.0, "eval_fp32_img_s": 40.0, "bf16": True}

    monkeypatch.setattr(bench, "bench_model", fake_bench)
    recipe = tiny_grid_study("cost")
    recipe["base"]["tta"] = False
    study = load_study(_study(tmp_path, base=recipe["base"]))
    cost = project_study(study, (160, 40, 40), device="cpu", cpu_bf16=True)
    # by hand: 1 epoch of 3 batches of 16 at 20 img/s (2.4 s), 40 val at 40 img/s (1 s), then val and test once
    # more at 40 img/s (2 s); not the 80 img/s of bf16 inference, which no CPU evaluation runs
    assert [r.seconds_per_seed for r in cost.rows] == pytest.approx([2.4 + 1 + 2, 2.4 + 1 + 2])
    assert {r.eval_img_s for r in cost.rows} == {40.0} and "score img/s" in cost.format()


def test_projection_for_several_workers_measures_beside_the_others(tmp_path, monkeypatch):
    import contextlib

    import resmasknet.bench as bench

    real = bench.other_workers
    started, live, seen = [], [], []

    @contextlib.contextmanager
    def tracking(model, n, **kw):
        started.append((model.config, n))
        with real(model, n, **kw) as procs:
            live[:] = procs
            yield procs
        live.clear()

    def fake_bench(model, **kw):
        seen.append((model.config, len(live), all(p.poll() is None for p in live)))
        return {"train_img_s": 10.0, "eval_img_s": 40.0, "bf16": False}

    monkeypatch.setattr(bench, "other_workers", tracking)
    monkeypatch.setattr(bench, "bench_model", fake_bench)
    study = load_study(_study(tmp_path))
    alone = project_study(study, (160, 40, 40), device="cpu")
    assert started == [] and alone.workers == 1 and "beside" not in alone.format()
    two = project_study(study, (160, 40, 40), device="cpu", workers=2)
    # each of the two networks is measured once, while one other worker trains that very network
    assert len(started) == 2 and [c for c, _ in started] == [c for c, _, _ in seen[2:]]
    assert all(n == 1 for _, n in started) and all(k == 1 and alive for _, k, alive in seen[2:])
    assert two.workers == 2 and "beside 1 other training worker" in two.format()
    with pytest.raises(ValueError, match="workers=0"):
        project_study(study, (160, 40, 40), device="cpu", workers=0)


def test_whole_seeds_within_a_time_limit_are_dealt_as_the_runner_deals_them():
    from ablate.cost import CellCost, StudyCost

    # two variants of 30 and 10 s a seed, 3 seeds, popped seed by seed by the first free of 2 workers:
    # on0 [0,30] | off0 [0,10]; on1 [10,40]; off1 [30,40]; on2 [40,70]; off2 [40,50]  (by hand)
    cost = StudyCost("s", "cpu", (1, 1, 1), (CellCost("on", 3, 1, 1.0, 1.0, 30.0, False),
                                            CellCost("off", 3, 1, 1.0, 1.0, 10.0, False)))
    assert [cost.makespan_s(k, workers=2) for k in (1, 2, 3)] == [30.0, 40.0, 70.0]
    assert [cost.makespan_s(k) for k in (1, 2, 3)] == [40.0, 80.0, 120.0]  # one worker: the plain sum
    assert cost.seed_s == 40.0
    assert cost.seeds_within(45, workers=2) == 2 and cost.seeds_within(70, workers=2) == 3
    assert cost.seeds_within(29, workers=2) == 0
    assert cost.fit(45 / 60, workers=2) == ("within 0.75 min on 2 workers: ablate run s --workers 2 --first-seeds 2"
                                            "  (2 of 3 seeds, projected 0.7 min)")
    assert "--first-seeds" not in cost.fit(70 / 60, workers=2)  # every seed fits: the plain command
    assert cost.fit(0.25, workers=2).startswith("not one whole seed fits 0.25 min on 2 workers")
    # on a GPU the workers share it: the command says so
    on_gpu = StudyCost("s", "cuda:0", cost.sizes, cost.rows)
    assert "ablate run s --workers-per-gpu 2 --first-seeds 2" in on_gpu.fit(45 / 60, workers=2)


def test_bench_study_cli_and_its_errors(tmp_path, capsys):
    path = _study(tmp_path)
    rc = main(["bench", "--study", str(path), "--data-sizes", "64,16,16", "--steps", "1", "--warmup", "0",
               "--seconds", "1", "--rounds", "1", "--device", "cpu", "--json", str(tmp_path / "cost.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "projected" in out and "4 cells" in out
    assert main(["bench", "--study", str(path), "--data-sizes", "64,16,16", "--steps", "1", "--warmup", "0",
                 "--seconds", "1", "--rounds", "1", "--device", "cpu", "--fit", "600", "--workers", "2"]) == 0
    assert f"within 600 min on 2 workers: ablate run {load_study(path).name} --workers 2  (2 of 2 seeds" in (
        capsys.readouterr().out)
    assert main(["bench", "--study", str(path), "--fit", "10", "--workers", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    saved = json.loads((tmp_path / "cost.json").read_text())
    assert saved["sizes"] == [64, 16, 16] and len(saved["rows"]) == 2 and saved["total_s"] > 0
    assert main(["bench", "--study", str(path), "--data-sizes", "64,16", "--device", "cpu"]) == 2
    assert "three positive integers" in capsys.readouterr().err
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"name": "s", "mode": "search", "base": {"model": "resmasknet_tiny",
                                      "data": "generated:n=140"}, "seeds": [0],
                                      "search": {"n_trials": 2, "space": {"train.lr": {"float": [0.001, 0.01]}}},
                                      "objectives": [{"metric": "val_acc", "direction": "maximize"}]}))
    assert main(["bench", "--study", str(search), "--data-sizes", "64,16,16", "--device", "cpu"]) == 2
    assert "only grid studies" in capsys.readouterr().err


def test_grid_cells_are_enqueued_seed_by_seed(tmp_path):
    from ablate.runner import Paths, Session, load_optuna_study, seed_major

    path = _study(tmp_path, variants={"a": {}, "b": {"masks.enabled": False}, "c": {"mask1.enabled": False}},
                  baseline="a", seeds=[7, 3])
    study = load_study(path)
    # cells are variant-major (a7 a3 b7 b3 c7 c3); they run seed-major: every variant of seed 7 first
    assert seed_major(study) == [0, 2, 4, 1, 3, 5]
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--workers", "0"]) == 0
    paths = Paths(out)
    session = Session(study=study, storage_url=str(paths.journal), tracking_uri=paths.tracking_uri, paths=paths)
    waiting = [t.system_attrs.get("fixed_params", {}).get("cell") for t in load_optuna_study(session).get_trials()]
    assert waiting == [0, 2, 4, 1, 3, 5]


def test_describe_device_names_the_cpu(tmp_path, monkeypatch):
    import resmasknet.runtime as rt

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nmodel name : Test CPU 9000\ncpu family : 25\nmodel : 1\nflags : fpu avx2\n")
    monkeypatch.setattr(rt, "CPUINFO", info)
    line = rt.describe_device("cpu")
    assert line.startswith("cpu (Test CPU 9000 family 25 model 1, ") and " threads" in line


def test_doctor_table_and_a_failing_step(tmp_path, monkeypatch, capsys):
    import ablate.doctor as doctor

    def broken(dev, out, **kw):
        raise RuntimeError("no kernel image is available\nsecond line")

    monkeypatch.setattr(doctor, "step_bench", broken)
    rc = main(["doctor", "--device", "cpu", "--out", str(tmp_path), "--only", "device", "bench"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "failed step(s): bench" in captured.err
    steps = json.loads((tmp_path / "doctor.json").read_text())
    assert [(s["name"], s["status"]) for s in steps] == [("device", "pass"), ("bench", "fail")]
    assert steps[1]["detail"] == "RuntimeError: no kernel image is available"
    md = (tmp_path / "doctor.md").read_text()
    assert md.startswith("| step | result | s | detail |") and "| bench | fail |" in md


def test_doctor_says_so_when_pytest_is_missing(tmp_path, monkeypatch):
    """A GPU node without network has no pytest unless the wheelhouse brought it: one line says what to do."""
    import sys

    import torch

    from ablate.doctor import step_tests

    python = tmp_path / "python"  # a Python without pytest, as such a node answers `python -m pytest`
    python.write_text("#!/bin/sh\necho \"$0: No module named pytest\" >&2\nexit 1\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    step = step_tests(torch.device("cpu"), tmp_path)
    assert step.status == "fail" and step.detail.startswith("pytest is not installed for this Python")
    assert "tools/wheelhouse.py" in step.detail


def test_doctor_tests_step_does_not_import_what_a_gpu_node_lacks(tmp_path, monkeypatch):
    """pytest imports every module it is handed before `-m device` selects: a module importing a package the
    node lacks (the notebook tests need nbformat) must not stop the device tests at collection."""
    import torch

    import ablate.doctor as doctor

    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        "import pytest\n"
        "def pytest_configure(config):\n    config.addinivalue_line('markers', 'device: device tests')\n"
        "@pytest.fixture(params=[pytest.param('cpu', marks=pytest.mark.device)])\n"
        "def device(request):\n    return request.param\n")
    (tests / "test_device.py").write_text("def test_on(device):\n    assert device == 'cpu'\n\n\n"
                                          "def test_on_too(tmp_path,\n                device):\n    pass\n")
    (tests / "test_notebooks.py").write_text("import a_package_this_node_lacks\n\n\n"
                                             "def test_other(tmp_path):\n    pass\n")
    (tests / "test_names.py").write_text("def test_other_device(other_device, device_count):\n    pass\n")
    assert doctor.device_test_files(tests) == [tests / "test_device.py"]
    monkeypatch.setattr(doctor, "_tests_dir", lambda: tests)
    step = doctor.step_tests(torch.device("cpu"), tmp_path)
    assert step.status == "pass", (tmp_path / "device-tests.log").read_text()
    assert step.data == {"passed": 2}


def test_doctor_hands_pytest_every_module_with_device_tests(tmp_path):
    """The files the doctor selects hold every test that pytest itself collects under `-m device`."""
    import subprocess
    import sys

    from ablate.doctor import _tests_dir, device_test_files

    tests = _tests_dir()
    assert tests is not None
    chosen = {p.name for p in device_test_files(tests)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "device", str(tests),
                           "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=tests.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = {line.split("::")[0].rsplit("/", 1)[-1] for line in proc.stdout.splitlines() if "::" in line}
    assert collected and collected == chosen


def test_doctor_stopped_mid_way_leaves_a_table_that_says_so(tmp_path, monkeypatch):
    """A time limit that stops the doctor keeps the steps it ran, and the others read "not run", never pass."""
    import ablate.doctor as doctor

    seen = {}

    def stopped(dev, out, **kw):
        seen["during"] = [(s["name"], s["status"]) for s in json.loads((out / "doctor.json").read_text())]
        raise KeyboardInterrupt  # as a time limit's signal would end it: not caught as one step's failure

    monkeypatch.setattr(doctor, "step_bench", stopped)
    with pytest.raises(KeyboardInterrupt):
        doctor.run_doctor("cpu", tmp_path, only=("device", "bench", "cost"))
    assert seen["during"] == [("device", "pass"), ("bench", "not run"), ("cost", "not run")]
    after = [(s["name"], s["status"]) for s in json.loads((tmp_path / "doctor.json").read_text())]
    assert after == seen["during"]
    md = (tmp_path / "doctor.md").read_text()
    assert "| device | pass |" in md and "| bench | not run |" in md and "| cost | not run |" in md


def test_doctor_bench_step_on_cpu(tmp_path):
    import torch

    from ablate.doctor import step_bench

    bench = step_bench(torch.device("cpu"), tmp_path, models=("resmasknet_tiny",), seconds=0.5)
    assert bench.status == "pass", bench.detail
    modes = [r["mode"] for r in bench.data["rows"]]
    assert modes[0] == "fp32" and "channels_last" in modes and "compile" not in modes
    assert (tmp_path / "bench.txt").read_text().startswith("model")


@pytest.mark.slow
def test_doctor_on_cpu_end_to_end(tmp_path, capsys):
    rc = main(["doctor", "--device", "cpu", "--out", str(tmp_path), "--only", "device", "study", "analysis"])
    assert rc == 0, capsys.readouterr().err
    steps = {s["name"]: s for s in json.loads((tmp_path / "doctor.json").read_text())}
    assert steps["study"]["data"]["records"] == 6 and steps["analysis"]["data"]["device"] == "cpu"


def test_doctor_cost_step_gives_the_wall_time_on_its_workers(tmp_path, monkeypatch):
    import contextlib

    import torch

    import resmasknet.bench as bench
    from ablate.doctor import FER_SIZES, step_cost

    asked, threads = [], []

    def fake_bench(model, *, batch_size, **kw):
        threads.append(torch.get_num_threads())
        return {"train_img_s": 100.0, "eval_img_s": 1000.0, "bf16": False}

    import ablate.runner as runner

    monkeypatch.setattr(runner, "worker_threads", lambda n: 7 if n == 2 else 99)  # what `ablate run` would give
    before = torch.get_num_threads()
    monkeypatch.setattr(bench, "bench_model", fake_bench)
    monkeypatch.setattr(bench, "other_workers", lambda net, n, **kw: asked.append(n) or contextlib.nullcontext())
    step = step_cost(torch.device("cpu"), tmp_path, studies=(("crn_effect", None, 2),))
    study = load_study("crn_effect")
    tcfg = TrainConfig(**study.train)
    # every variant has the same rates, so each cell takes the same time; by hand from the recipe and FER2013's
    # splits, dealt seed by seed to 2 workers: ceil(cells / 2) cells end to end
    cell = cell_seconds(tcfg, FER_SIZES, 100.0, 1000.0, study.tta)
    cells = len(study.variants) * len(study.seeds)
    wall = -(-cells // 2) * cell
    assert asked and set(asked) == {1}  # measured beside one other worker
    # at the thread count each of `ablate run`'s 2 workers gets, given back afterwards
    assert set(threads) == {7} and torch.get_num_threads() == before
    assert step.data["crn_effect"]["wall_s"] == pytest.approx(wall)
    assert f"crn_effect {wall / 60:.1f} min on 2 workers" == step.detail
    assert (tmp_path / "cost-crn_effect.txt").read_text().count("beside 1 other training worker") == 1
