"""The workers' wall, on the real kernel: Landlock refuses what its rules do not grant, to Python and to
native code, and is inherited by child processes; where there is none, a worker says so and runs with the
tripwire alone. The whole wall, in real runs, is tested by test_redteam.py."""

import os
import py_compile
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from referee import data, landlock, sandbox

linux_with_landlock = pytest.mark.skipif(isinstance(landlock.abi(), str), reason=f"no Landlock here: {landlock.abi()}")


def in_child(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with the checkout importable: a restriction never reaches the tests."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@linux_with_landlock
def test_landlock_refuses_what_no_rule_grants_to_python_native_code_and_children(tmp_path):
    allowed, refused = tmp_path / "allowed", tmp_path / "refused"
    allowed.mkdir()
    refused.mkdir()
    (allowed / "a.txt").write_text("yes")
    (refused / "b.txt").write_text("no")
    result = in_child(f"""
        import ctypes, subprocess, sys
        from referee import landlock
        libs = [line.split()[5] for line in open('/proc/self/maps') if line.count(' ') >= 5 and '/' in line]
        rules = {{p: landlock.READ_EXEC for p in libs}}
        rules.update({{'{allowed}': landlock.READ, '/usr': landlock.READ_EXEC, '/lib': landlock.READ_EXEC}})
        landlock.restrict(rules, landlock.abi())
        print(open('{allowed}/a.txt').read())
        try:
            open('{refused}/b.txt')
        except PermissionError:
            print('python refused')
        libc = ctypes.CDLL(None, use_errno=True)
        print('libc refused' if libc.open(b'{refused}/b.txt', 0) < 0 and ctypes.get_errno() == 13 else 'libc read it')
        sys.stdout.flush()
        libc.system(b'cat {refused}/b.txt || echo child refused')
    """)
    assert result.stdout.split("\n")[:4] == ["yes", "python refused", "libc refused", "child refused"], result.stderr


def test_without_landlock_a_worker_says_so_and_keeps_the_tripwire(monkeypatch, capsys):
    monkeypatch.setattr(landlock, "abi", lambda: "the kernel has no Landlock (5.13 or later has it)")
    policy = sandbox.Policy(root=str(ROOT), own=[], writable=[], data=[])
    assert sandbox.confine(policy) == "tripwire"
    assert open("/etc/hostname").read()  # nothing was restricted


@linux_with_landlock
def test_a_policy_that_would_expose_the_data_is_refused_before_the_wall_goes_up():
    site_packages = sandbox.site.getsitepackages()[0]
    result = in_child(f"""
        from referee import sandbox
        policy = sandbox.Policy(root='/nowhere', own=[], writable=[], data=['{site_packages}/corpus'])
        sandbox.confine(policy)
    """)
    assert result.returncode != 0 and "the sandbox would let workers read the data" in result.stderr
    assert f"{site_packages}/corpus (under {os.path.realpath(site_packages)})" in result.stderr


@linux_with_landlock
def test_the_checkout_on_the_library_path_is_refused_before_the_wall_goes_up(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from referee import sandbox; sandbox.confine(sandbox.Policy('{tmp_path}', [], [], []))",
        ],
        cwd=ROOT,
        env={**os.environ, "LD_LIBRARY_PATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and f"{tmp_path}/results.tsv (under {tmp_path})" in result.stderr


def test_bytecode_is_current_only_while_the_source_is_unchanged(tmp_path):
    source, cached = tmp_path / "m.py", tmp_path / "m.pyc"
    source.write_text("x = 1\n")
    assert not data.bytecode_is_current(source, cached)
    py_compile.compile(str(source), cfile=str(cached), invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    assert data.bytecode_is_current(source, cached)
    source.write_text("x = 22\n")  # another size
    assert not data.bytecode_is_current(source, cached)
    py_compile.compile(str(source), cfile=str(cached), invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    assert not data.bytecode_is_current(source, cached)  # a checked hash makes the importer read the source


def test_the_standard_library_has_bytecode_before_any_worker_starts():
    assert data.compile_stdlib() == ()  # every module compiled, or written now (this interpreter's is writable)
    folder = data.stdlib_dir().resolve()
    rules = sandbox.readable_stdlib(str(folder))
    sources = set(data.stdlib_files(folder))
    readable = {
        sandbox.corpus_file(sandbox.importlib.util.source_from_cache(p), str(folder))
        for p in rules
        if p.endswith(".pyc")
    }
    sealed = {s for s in sources if sandbox.split_of(s) != "train"}  # the validation and holdout splits
    assert len(sealed) > 100 and readable and not readable & sealed  # none of their bytecode is readable
    assert {"json/decoder.py", "difflib.py", "asyncio/tasks.py"} <= readable
