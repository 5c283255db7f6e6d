"""Mutation check of one module at a time, with mutmut 3.

    pip install "mutmut>=3.8,<4"
    python tools/mutation.py augment              # mutate eva8_utils/augment.py, run its tests
    python tools/mutation.py checkpoint rundir    # several, one after the other
    python tools/mutation.py rundir --rerun       # its survivors again, with the end-to-end test files
    python tools/mutation.py rundir --rerun --only '*restore*'   # some of them
    python tools/mutation.py --list               # the modules and the test files that cover them

mutmut changes one thing in the module at a time (a constant, an operator, a comparison, an
argument dropped) and runs the tests that reach the changed function; a test that fails
"kills" the mutant. A mutant that survives is either a missing test or a change nobody can see
(a message's wording, an equivalent expression): docs/testing.md lists each survivor and which.

Each module runs in its own scratch copy of the checkout (.scratch/mutation/MODULE/), with a
mutmut configuration written there: only that module mutated, only its test files run, in
one process (no xdist workers, one torch thread). The summary, and every survivor's change,
goes to .scratch/mutation/MODULE/survivors.md (one line each: the mutant, the line before and
after). ``--rerun`` gives a module's survivors a second chance against its slow end-to-end files
(RERUN_TESTS), in .scratch/mutation/MODULE-rerun/. Not part of CI: a module takes from minutes
(augment) to about 90 (rundir's first pass) on 2 cores.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The test files that check each module's promises (in this process, on small inputs; a CLI
# run there is in-process too). Files of other modules' end-to-end runs are left out where
# they would make one mutant cost minutes.
MODULE_TESTS: dict[str, list[str]] = {
    "augment": ["tests/test_augment.py", "tests/test_promises.py"],
    "checkpoint": ["tests/test_checkpoint.py", "tests/test_checkpoint_trust.py", "tests/test_promises.py",
                   "tests/test_write_faults.py::test_a_checkpoint_write_that_fills_the_disk_raises_the_os_error",
                   "tests/test_faults.py::test_truncated_checkpoint_falls_back_to_the_previous_one_then_fails_clearly",
                   "tests/test_faults.py::test_resume_with_another_model_says_which",
                   "tests/test_faults.py::test_a_kill_at_any_moment_leaves_a_whole_checkpoint"],
    "rundir": ["tests/test_rundir.py", "tests/test_promises.py", "tests/test_write_faults.py"],
    "engine/loop": ["tests/test_engine.py", "tests/test_promises.py"],
    "engine/callbacks": ["tests/test_engine.py", "tests/test_promises.py"],
    "data": ["tests/test_data.py"],
}
# The end-to-end files (CLI runs, kills in subprocesses, resumes: a minute or more for one
# mutant that survives) are added only with --rerun, which runs the first pass's survivors again.
RERUN_TESTS: dict[str, list[str]] = {
    "rundir": ["tests/test_faults.py", "tests/test_bad_inputs.py"],
}
# Left out of every mutation run (they still run in the normal suite): the tests that start
# Python in another folder (mutmut's mutated code, imported there, finds no configuration and
# fails whatever the mutant), and the two slowest write-fault runs (30-40 s each; the other
# cases of the same tests cover the same code).
DESELECT = ["tests/test_checkpoint_trust.py::test_a_space_of_an_own_model_runs_from_its_folder",
            "tests/test_faults.py::test_files_are_written_only_under_the_run_folder_cache_and_readme_images",
            "tests/test_write_faults.py::test_a_picture_or_report_that_cannot_be_written_is_a_warning[curves.png]",
            "tests/test_write_faults.py::test_out_of_memory_in_training_is_one_line_and_the_run_resumes[cpu]"]
MEMORY_GB = 10
# What the tests read besides the package and tests/ (copied into the scratch checkout).
ALSO_COPY = ["README.md", "docs", "configs", "S7.ipynb", "requirements.txt"]


def scratch_dir(module: str, suffix: str = "") -> Path:
    return ROOT / ".scratch" / "mutation" / (module.replace("/", "_") + suffix)


def scratch_checkout(module: str, extra: list[str] = (), suffix: str = "") -> Path:
    """A copy of the checkout's package, tests and what they read, with mutmut's configuration
    (the module's test files, and ``extra`` ones)."""
    work = scratch_dir(module, suffix)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "eva8_utils", work / "eva8_utils", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    for name in ALSO_COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=ignore)
        elif src.exists():
            shutil.copy(src, work / name)
    tests = [t for t in [*MODULE_TESTS[module], *extra] if (ROOT / t.split("::")[0]).exists()]
    config = {"source_paths": ["eva8_utils/"], "only_mutate": [f"eva8_utils/{module}.py"],
              "pytest_add_cli_args_test_selection": tests, "also_copy": ALSO_COPY,
              # one process, one torch thread: no xdist workers (mutmut forks per mutant)
              "pytest_add_cli_args": ["-n", "0", "-p", "no:cacheprovider"] + [f"--deselect={t}" for t in DESELECT],
              "use_git_change_detection": False}
    pyproject = (ROOT / "pyproject.toml").read_text()
    lines = [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    (work / "pyproject.toml").write_text(pyproject + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n")
    return work


def mutmut_command() -> str:
    """mutmut's console script: under ``python -m mutmut`` its module is imported twice and
    the mutated code's first call fails ("context has already been set")."""
    beside = Path(sys.executable).with_name("mutmut")
    return str(beside) if beside.exists() else (shutil.which("mutmut") or "mutmut")


def limit_memory() -> None:
    """At most MEMORY_GB of address space for mutmut and its children: a mutant that drops a
    size check (e.g. the one before a checkpoint's model is allocated) fails with MemoryError
    instead of taking the machine's memory."""
    import resource

    limit = MEMORY_GB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


ENV = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH="")


def run_module(module: str, children: int) -> dict:
    work = scratch_checkout(module)
    print(f"== {module}: mutmut in {work}", flush=True)
    subprocess.run([mutmut_command(), "run", "--max-children", str(children)],
                   cwd=work, env=ENV, check=False, preexec_fn=limit_memory)
    return summarise(module, work)


def rerun_survivors(module: str, children: int, only: list[str] = ()) -> dict:
    """The first pass's survivors again (those matching a glob of ``only``, if given), with the
    module's end-to-end files (RERUN_TESTS) added."""
    first = scratch_dir(module)
    survivors = sorted(name for name, code in exit_codes(first).items()
                       if code == 0 and (not only or any(fnmatch.fnmatch(name, pattern) for pattern in only)))
    if not survivors:
        print(f"== {module}: no survivors in {first} (run the first pass without --rerun)")
        return {"module": module, "rerun": 0}
    extra = RERUN_TESTS.get(module, [])
    work = scratch_checkout(module, extra, suffix="-rerun")
    print(f"== {module}: {len(survivors)} survivors again, with {extra}, in {work}", flush=True)
    subprocess.run([mutmut_command(), "run", "--max-children", str(children), *survivors],
                   cwd=work, env=ENV, check=False, preexec_fn=limit_memory)
    codes = exit_codes(work)
    return summarise(module + " (rerun)", work, {name: codes.get(name) for name in survivors})


def exit_codes(work: Path) -> dict[str, int | None]:
    """Each mutant's exit code from mutmut's .meta files (None: not run)."""
    codes: dict[str, int | None] = {}
    for meta in (work / "mutants").rglob("*.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def summarise(module: str, work: Path, codes: dict[str, int | None] | None = None) -> dict:
    """Counts by status; every survivor's diff into WORK/survivors.md."""
    codes = exit_codes(work) if codes is None else codes
    from mutmut.stats import status_by_exit_code  # what each of mutmut's exit codes means

    counts = Counter(status_by_exit_code.get(code, "not checked") for code in codes.values())
    survivors = sorted(name for name, code in codes.items() if code == 0)
    report = [f"# {module}: {len(codes)} mutants, " + ", ".join(f"{n} {s}" for s, n in counts.most_common()), ""]
    for name in survivors:
        diff = subprocess.run([mutmut_command(), "show", name], cwd=work, env=ENV,
                              capture_output=True, text=True).stdout
        changed = [line.strip() for line in diff.splitlines()
                   if line[:1] in "-+" and not line.startswith(("---", "+++"))]
        report += [f"- `{name.split('.x_')[-1]}`: " + "  =>  ".join(changed)]
    (work / "survivors.md").write_text("\n".join(report))
    print(report[0])
    print(f"survivors: {work / 'survivors.md'}")
    return {"module": module, "mutants": len(codes), **counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules under eva8_utils/ (e.g. augment, engine/loop)")
    parser.add_argument("--list", action="store_true", help="print the modules and their test files")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2, help="mutants run at once")
    parser.add_argument("--rerun", action="store_true",
                        help="run the last pass's survivors again with the end-to-end test files added")
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB",
                        help="with --rerun: only the survivors whose name matches, e.g. '*restore*'")
    args = parser.parse_args(argv)
    if args.list or not args.modules:
        for module, tests in MODULE_TESTS.items():
            rerun = f"  (--rerun adds {' '.join(RERUN_TESTS[module])})" if module in RERUN_TESTS else ""
            print(f"{module:18} {' '.join(tests)}{rerun}")
        return 0
    unknown = [m for m in args.modules if m not in MODULE_TESTS]
    if unknown:
        print(f"error: no test files listed for {', '.join(unknown)}; add them to MODULE_TESTS in {__file__}")
        return 2
    results = [rerun_survivors(m, args.children, args.only) if args.rerun else run_module(m, args.children)
               for m in args.modules]
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
