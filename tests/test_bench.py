"""bench/bench.py runs on CPU and prints one JSON line per config with every figure (no timing asserted)."""

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
        "--wall-s",
        "1",
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
        assert {"tokens_per_s", "mfu", "peak_mem_gb", "val_bpb", "params_m", "compile_s"} <= set(line)
        assert line["tokens"] > 0 and line["tokens_per_s"] > 0 and 0 < line["val_bpb"] < 9
    assert lines[0]["shape"]["n_layer"] == 2 and lines[1]["shape"]["d_model"] == 128
