"""bench/bench.py runs on CPU and prints one JSON line per config with every figure (no timing asserted); the
changes the other benchmarks make to main's code still apply to it."""

import importlib
import json
import sys

from conftest import ROOT, run


def test_bench_prints_one_json_line_per_config_on_cpu():
    args = [
        "--device",
        "cpu",
        "--configs",
        "tiny",
        "default",
        "--budget-tokens",
        "60000",
        "--warmup-steps",
        "1",
        "--eval-bytes",
        "20000",
    ]
    result = run([sys.executable, str(ROOT / "bench" / "bench.py"), *args], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["config"] for line in lines] == ["tiny", "default"]
    for line in lines:
        assert {"tokens_per_s", "mfu", "peak_mem_gb", "val_bpb", "params_m", "warmup_s"} <= set(line)
        assert line["tokens"] <= 60000 and line["tokens_per_s"] > 0 and 0 < line["val_bpb"] < 9
        assert line["deterministic"]  # the referee's settings, as in every scored run
    assert lines[0]["shape"]["n_layer"] == 2 and lines[1]["shape"]["d_model"] == 128


def test_profile_prints_the_top_kernels_of_this_checkouts_config():
    args = ["--device", "cpu", "--profile", "--configs", "tiny", "--warmup-steps", "1", "--profile-steps", "2"]
    result = run([sys.executable, str(ROOT / "bench" / "bench.py"), *args], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "tiny: top kernels over 2 steps" in result.stdout and "aten::mm" in result.stdout


def test_the_benchmarks_changes_are_still_in_mains_code(monkeypatch):
    """claim.py's default experiment and pairing.py's changes replace a text of main's files: a default that
    main's code has since moved past (as claim.py's batch size 32 -> 16 when 16 became main's) must fail here,
    not two hours into a benchmark."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    claim, pairing = importlib.import_module("claim"), importlib.import_module("pairing")
    for name, before, after in [claim.Args().change, *pairing.CHANGES.values()]:
        assert (ROOT / name).read_text().count(before) == 1, f"{name} has no single {before!r}"
        assert before != after
