"""Apply each curated mutant (scripts/mutants/kernel_mutants.py) to a throwaway
copy of the tree, run the tests that should kill it, and report the result.

    .venv/bin/python scripts/mutants/run_kernel_mutants.py            # all mutants
    .venv/bin/python scripts/mutants/run_kernel_mutants.py --list     # ids, files, tests
    .venv/bin/python scripts/mutants/run_kernel_mutants.py --check    # do the patterns still match?
    .venv/bin/python scripts/mutants/run_kernel_mutants.py attention-span-end-short ...
    .venv/bin/python scripts/mutants/run_kernel_mutants.py --from-head  # committed tree only

The copy holds the working tree as it is now (tracked files with their
uncommitted edits, plus untracked files git does not ignore), or with
--from-head the last commit. Nothing in the working tree is ever written, so
other people can run tests in it meanwhile. Tests run under
TRITON_INTERPRET=1, one mutant at a time.

Each mutant is an exact-text substitution that must match exactly once in
its file; when the code has moved, the result is "pattern not found" (or
"pattern ambiguous"), never a silent pass. Results: killed (a test
failed; the first failure is shown), killed (timeout), killed (crash:
SIGABRT, ...: the test process died, e.g. an out-of-bounds read under the
interpreter), SURVIVED (the tests passed: a missing test, or an equivalent
mutant to document in docs/testing.md), pattern not found / ambiguous,
error (the tests could not run: no test collected, a usage error, or the
unmutated baseline fails).
Exit status 0 only when every mutant selected was killed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# pytest exit codes that mean the mutant was caught: 1 a test failed, 2 the
# run stopped on an error (e.g. an import or collection error the mutant caused).
# 4 (usage error) and 5 (no tests collected) mean the list itself is wrong.
PYTEST_RC_KILLED = (1, 2)


def tree_files(from_head: bool) -> list[str]:
    """Paths (relative to ROOT) that make up the copy."""
    if from_head:
        out = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    else:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def make_copy(dest: Path, from_head: bool) -> None:
    for rel in tree_files(from_head):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if from_head:
            blob = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, check=True).stdout
            target.write_bytes(blob)
        elif (ROOT / rel).is_file():  # a tracked file deleted in the working tree is left out
            shutil.copy2(ROOT / rel, target)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """pytest's exit status (negative: killed by that signal; None: timed out) and output."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("MIGT_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    return proc.returncode, (proc.stdout + proc.stderr)


def check_imports_from(copy: Path) -> None:
    """The tests must import the copy's packages, not the working tree's (the
    venv has the project installed in editable mode)."""
    probe = "import kernels, migt; print(kernels.__file__); print(migt.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=copy, capture_output=True, text=True, check=True,
                         env=dict(os.environ, TRITON_INTERPRET="1")).stdout.split()
    for path in out:
        if not Path(path).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"the copy's tests would import {path}, outside the copy {copy}; refusing to run")


def apply(copy: Path, mutant: Mutant) -> tuple[str, str | None]:
    """Mutate the copy's file in place; returns (status, original text)."""
    path = copy / mutant.file
    if not path.is_file():
        return f"pattern not found: {mutant.id} (no file {mutant.file})", None
    text = path.read_text()
    count = text.count(mutant.find)
    if count == 0:
        return f"pattern not found: {mutant.id}", None
    if count > 1:
        return f"pattern ambiguous: {mutant.id} ({count} matches in {mutant.file})", None
    path.write_text(text.replace(mutant.find, mutant.replace))
    return "applied", text


def first_failure(output: str) -> str:
    """The short summary line of the first failed test (what killed the mutant)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return "    " + line[:200]
    return last_lines(output, 3)


def last_lines(output: str, n: int = 6) -> str:
    return "\n".join("    " + line for line in output.strip().splitlines()[-n:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true",
                        help="only check that every pattern still matches once (no tests run)")
    parser.add_argument("--from-head", action="store_true", help="copy the last commit, not the working tree")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--tests", action="append", metavar="PATH",
                        help="run this test path (repeatable) for every selected mutant instead of the listed "
                             "ones, e.g. to show that a mutant survives the tests that existed before its own")
    args = parser.parse_args()

    by_id = {m.id: m for m in MUTANTS}
    unknown = [i for i in args.ids if i not in by_id]
    if unknown:
        parser.error(f"unknown mutant id(s) {unknown}; known: {sorted(by_id)}")
    selected = [by_id[i] for i in args.ids] if args.ids else list(MUTANTS)
    if args.tests:
        selected = [dataclasses.replace(m, tests=tuple(args.tests)) for m in selected]
    if args.list:
        for m in selected:
            print(f"{m.id:40s} {m.kind:9s} {m.file:22s} {' '.join(m.tests)}\n    {m.why}")
        return 0

    if args.check:
        bad = 0
        for m in selected:
            text = (ROOT / m.file).read_text() if (ROOT / m.file).is_file() else ""
            count = text.count(m.find)
            if count != 1:
                bad += 1
                print(f"pattern not found: {m.id}" if count == 0 else f"pattern ambiguous: {m.id} ({count} matches)")
        print(f"{len(selected) - bad}/{len(selected)} patterns match exactly once")
        return 1 if bad else 0

    copy = Path(tempfile.mkdtemp(prefix="migt-mutants-"))
    try:
        make_copy(copy, args.from_head)
        check_imports_from(copy)
        print(f"copy of the {'last commit' if args.from_head else 'working tree'} in {copy}", flush=True)

        # The unmutated tests must pass, or every mutant would look killed.
        baseline_tests = tuple(dict.fromkeys(t for m in selected for t in m.tests))
        start = time.monotonic()
        rc, output = run_tests(copy, baseline_tests, args.timeout * 2)
        print(f"baseline ({len(baseline_tests)} test paths): rc {rc}, {time.monotonic() - start:.0f} s", flush=True)
        if rc != 0:
            print("the tests fail without any mutant; fix that first:\n" + last_lines(output, 20))
            return 2

        results = []
        for m in selected:
            status, original = apply(copy, m)
            seconds = 0.0
            if original is not None:
                start = time.monotonic()
                rc, output = run_tests(copy, m.tests, args.timeout)
                seconds = time.monotonic() - start
                (copy / m.file).write_text(original)
                if rc in PYTEST_RC_KILLED:
                    status = "killed\n" + first_failure(output)
                elif rc is None:
                    status = "killed (timeout)"  # e.g. a loop bound that never ends
                elif rc < 0:
                    # the test process died (e.g. SIGABRT on an out-of-bounds
                    # read under the interpreter; an illegal access on a GPU)
                    status = f"killed (crash: {signal.Signals(-rc).name})"
                elif rc == 0:
                    status = "SURVIVED"
                else:
                    status = f"error (rc {rc}):\n" + last_lines(output)
            results.append((m, status, seconds))
            print(f"{m.id:40s} {status.splitlines()[0]:22s} {seconds:6.1f} s  {' '.join(m.tests)}", flush=True)
            if "\n" in status:
                print(status.split("\n", 1)[1])
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)

    killed = sum(status.startswith("killed") for _, status, _ in results)
    print(f"\n{killed}/{len(results)} killed")
    for m, status, _ in results:
        if not status.startswith("killed"):
            print(f"  {m.id}: {status.splitlines()[0]}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
