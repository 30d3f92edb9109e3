"""The CUDA path users get: strict determinism, the causality probe, bf16 autocast, and the crash row of
an op that has no deterministic kernel. Run whenever CUDA is present (`bench/gpu_check.sh` runs them);
skipped, with the reason, elsewhere."""

import dataclasses

import pytest
import torch

import train
from conftest import block, git, just, ledger, new
from model import GPT, GPTConfig
from referee.worker import local_data, local_score

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = ["--device", "cuda", "tiny", "--budget-tokens", "200000"]


def test_two_runs_with_one_seed_give_the_identical_val_bpb_on_cuda(project):
    result = just(project, "determinism", *CUDA)
    assert result.returncode == 0 and "deterministic: yes" in result.stdout, result.stdout + result.stderr
    assert set(ledger(project)["device"]) == {"cuda"}


def test_the_probes_work_on_cuda():
    device = torch.device("cuda")
    model = GPT(GPTConfig(n_layer=1, d_model=64, d_head=32)).to(device)
    val = torch.randint(256, (40_000,), dtype=torch.uint8)
    assert local_score(model, val, 256, device) > 0  # causal, stateless: both probes pass in bf16 autocast

    class PeeksAhead(torch.nn.Module):
        def forward(self, idx):
            return model(idx.roll(-1, dims=1))

    with pytest.raises(ValueError, match="not causal"):
        local_score(PeeksAhead(), val, 256, device)


def test_training_on_cuda_runs_in_bf16_autocast():
    dtypes = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: dtypes.add(out.dtype) if isinstance(module, torch.nn.Linear) else None
    )
    try:
        cfg = train.CONFIGS["tiny"]
        tokens = torch.randint(256, (100_000,), dtype=torch.uint8)
        stream = local_data(tokens, 4 * cfg.batch_size * cfg.seq_len, 0, torch.device("cuda"))
        train.train(dataclasses.replace(cfg, compile=False), stream, torch.device("cuda"))
    finally:
        hook.remove()
    assert torch.bfloat16 in dtypes


def test_an_op_without_a_deterministic_kernel_is_a_crash_row_that_names_it(project):
    wt = new(project, "histogram")
    model_py = wt / "model.py"
    model_py.write_text(
        model_py.read_text().replace(
            "        return self.head(self.norm(x))",
            "        spread = torch.histc(x.float(), bins=4)  # no deterministic CUDA kernel\n"
            "        return self.head(self.norm(x)) + 0 * spread.sum()",
        )
    )
    git("commit", "-qam", "histc", cwd=wt)
    result = just(wt, "eval", *CUDA)
    assert result.returncode == 1 and block(result.stdout)["status"] == "crash"
    error = ledger(project)["error"][0]
    assert (
        error.startswith("non-deterministic op: ") and "histc" in error and "Replace it in train.py/model.py" in error
    )
