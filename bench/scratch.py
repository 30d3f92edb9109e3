"""A scratch research project for the benchmarks that drive the harness's commands: a clone of this checkout's
HEAD with an empty ledger, sharing its virtual environment, as a fresh clone is after `uv run just ...`."""

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from repo.ledger import RESULTS_COLUMNS  # noqa: E402

IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@example.com"]


def sh(*cmd: str, cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def scratch_project(prefix: str) -> Path:
    where = Path(tempfile.mkdtemp(prefix=prefix)) / "project"
    sh("git", "clone", "--quiet", str(ROOT), str(where), cwd=ROOT)
    (where / ".venv").symlink_to(ROOT / ".venv")
    (where / "results.tsv").write_text("\t".join(RESULTS_COLUMNS) + "\n")
    sh("git", *IDENTITY, "commit", "-qam", "empty ledger", cwd=where)
    return where


def change(path: Path, name: str, before: str, after: str, message: str) -> None:
    """Replace `before` by `after` in the file `name` of the checkout at `path`, and commit it."""
    text = (path / name).read_text()
    if before not in text:
        raise SystemExit(f"{name} has no {before!r}: the benchmark's change is out of date")
    (path / name).write_text(text.replace(before, after, 1))
    sh("git", *IDENTITY, "commit", "-qam", message, cwd=path)
