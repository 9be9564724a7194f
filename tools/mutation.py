"""Mutation testing of ecnreid's core modules with mutmut (not part of CI; see tools/mutation.md).

Each module is mutated in its own scratch copy of the project, against only the test files that
exercise it, so one module's run stays minutes long on a 2-core machine. Usage:

    pip install -e '.[test,mutation]'
    python tools/mutation.py                      # every core module
    python tools/mutation.py losses memory        # a few, by the short names below
    python tools/mutation.py --list               # the short names, files and test files
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "tools" / "mutation.md"


@dataclass(frozen=True)
class Target:
    """One mutated module and the test files that exercise it."""

    module: str
    tests: tuple[str, ...]


# Test files per module: those that import it directly, plus the end-to-end files that reach it.
TARGETS: dict[str, Target] = {
    "losses": Target("ecnreid/losses.py", ("tests/test_losses.py",)),
    "memory": Target("ecnreid/memory.py", ("tests/test_memory.py",)),
    # The base class's own tests and the registry's one short training run (not the minutes of tests/test_loop.py).
    "methods-base": Target("ecnreid/methods/base.py", ("tests/test_methods_base.py", "tests/test_methods.py")),
    # The method's unit tests and one short training run; tests/test_loop.py's runs add minutes per mutant.
    "methods-ecn": Target("ecnreid/methods/ecn.py", ("tests/test_ecn_method.py", "tests/test_methods.py")),
    "metrics": Target("ecnreid/evaluation/metrics.py", ("tests/test_metrics.py", "tests/test_reranking.py")),
    "distances": Target("ecnreid/evaluation/distances.py", ("tests/test_distances.py",)),
    "reranking": Target("ecnreid/evaluation/reranking.py", ("tests/test_reranking.py",)),
    "evaluator": Target(
        "ecnreid/evaluation/evaluator.py",
        ("tests/test_evaluator.py", "tests/test_evaluate.py", "tests/test_reranking.py", "tests/test_metrics.py"),
    ),
    # The one feature loop: its own tests, and those of the model loading and the evaluator that call it.
    "features": Target(
        "ecnreid/evaluation/features.py", ("tests/test_features.py", "tests/test_adapted.py", "tests/test_evaluator.py")
    ),
    "evaluate": Target("ecnreid/inference/evaluate.py", ("tests/test_evaluate.py",)),
    "camstyle-names": Target("ecnreid/data/camstyle_names.py", ("tests/test_camstyle_names.py",)),
    "camstyle-dataset": Target("ecnreid/data/camstyle_dataset.py", ("tests/test_camstyle_dataset.py",)),
    # The inference modules against their unit tests: the end-to-end files (tests/test_extract.py,
    # tests/test_search.py, tests/test_export.py) train a tiny checkpoint per mutant, about 20 s each on 2 cores.
    "adapted": Target("ecnreid/inference/adapted.py", ("tests/test_adapted.py",)),
    "card": Target("ecnreid/inference/card.py", ("tests/test_inference_card.py",)),
    # The card itself (fields, dict round trip, build_card) lives with the models since the engine work.
    "model-card": Target("ecnreid/models/card.py", ("tests/test_inference_card.py", "tests/test_adapted.py")),
    "index": Target("ecnreid/inference/index.py", ("tests/test_index.py",)),
    "search": Target("ecnreid/inference/search.py", ("tests/test_search.py",)),
    "extract": Target("ecnreid/inference/extract.py", ("tests/test_extract.py",)),
    "store": Target("ecnreid/inference/store.py", ("tests/test_store.py",)),
    "export": Target("ecnreid/inference/export.py", ("tests/test_export.py",)),
    # SpCL: its pseudo-labelling against the hand-made cases and the authors' loop; the method against its unit
    # tests and its two short training runs (through the CLI, and a resume mid-run).
    "clustering": Target("ecnreid/clustering.py", ("tests/test_clustering.py",)),
    "methods-spcl": Target("ecnreid/methods/spcl.py", ("tests/test_spcl_method.py",)),
}


def mutmut_config(target: Target, copied: list[str]) -> str:
    """The [tool.mutmut] table of one module's scratch project (appended to the project's pyproject)."""
    # A listed file that this checkout lacks is left out, so the table can name tests still to come.
    tests = ", ".join(json.dumps(t) for t in target.tests if (ROOT / t).exists())
    return (
        "\n[tool.mutmut]\n"
        f"also_copy = [{', '.join(json.dumps(c) for c in copied)}]\n"
        'source_paths = ["ecnreid"]\n'
        f"only_mutate = [{json.dumps(target.module)}]\n"
        f"pytest_add_cli_args_test_selection = [{tests}]\n"
        # -p no:cacheprovider keeps pytest from writing into the scratch tests; -x stops at the first kill.
        'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow and not data and not gpu"]\n'
        "timeout_multiplier = 5.0\n"
        "timeout_constant = 10.0\n"
        "use_git_change_detection = false\n"
    )


def project_files() -> list[str]:
    """The checkout's files that git tracks or would track (tests may read scripts in experiments/ and bench/)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    return [f for f in listed if (ROOT / f).is_file()]


def scratch_project(name: str, target: Target, scratch: Path) -> Path:
    """A fresh copy of the project whose pyproject also tells mutmut to mutate only ``target``."""
    project = scratch / name
    shutil.rmtree(project, ignore_errors=True)
    files = project_files()
    for file in files:
        (project / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / file, project / file)
    # mutmut runs the tests inside mutants/, a copy of ecnreid/ plus also_copy: everything else at the top.
    copied = sorted({f.split("/")[0] for f in files} - {"ecnreid", "tests", "pyproject.toml"})
    pyproject = (ROOT / "pyproject.toml").read_text() + mutmut_config(target, copied)
    (project / "pyproject.toml").write_text(pyproject)
    return project


def mutant_results(project: Path) -> dict[str, int | None]:
    """Exit code per mutant name from mutmut's .meta files (None: not run, e.g. no test covers it)."""
    results: dict[str, int | None] = {}
    for meta in (project / "mutants").rglob("*.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


# mutmut's meaning of a worker's exit code.
STATUS_BY_EXIT_CODE = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
                       35: "suspicious", 36: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
                       -24: "timeout", -11: "segfault", -9: "killed by OOM"}


def status(exit_code: int | None) -> str:
    if exit_code is None:
        return "no tests"
    return STATUS_BY_EXIT_CODE.get(exit_code, "killed")


def listed_equivalents() -> set[str]:
    """Mutant names listed in tools/mutation.md as equivalent or CUDA-only (a backquoted name starting a table row)."""
    if not NOTES.exists():
        return set()
    return set(re.findall(r"^\| `([\w.]+__mutmut_\d+)`", NOTES.read_text(), flags=re.MULTILINE))


def run_one(name: str, target: Target, scratch: Path, workers: int) -> dict[str, object]:
    project = scratch_project(name, target, scratch)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(project), os.environ.get("PYTHONPATH")) if p))
    start = time.monotonic()
    command = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()", "run", "--max-children", str(workers)]
    log = project / "mutmut.log"
    with log.open("w") as out:
        code = subprocess.run(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    results = mutant_results(project)
    counts: dict[str, int] = {}
    for exit_code in results.values():
        counts[status(exit_code)] = counts.get(status(exit_code), 0) + 1
    equivalents = listed_equivalents()
    survivors = sorted(m for m, c in results.items() if status(c) == "survived")
    return {
        "module": target.module,
        "mutmut_exit": code,
        "seconds": round(seconds, 1),
        "mutants": len(results),
        "counts": counts,
        "survivors_equivalent": [m for m in survivors if m in equivalents],
        "survivors_open": [m for m in survivors if m not in equivalents],
        "log": str(log),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="short names (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="print the short names, files and test files")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel mutants")
    parser.add_argument("--scratch", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ecnreid-mutation",
                        help="where the scratch copies and mutmut's results go")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    if args.list:
        for name, target in TARGETS.items():
            print(f"{name:18} {target.module:36} {' '.join(target.tests)}")
        return 0
    if importlib.util.find_spec("mutmut") is None:
        parser.error("mutmut is not installed; install it with: pip install -e '.[test,mutation]'")
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    summaries = []
    for name in args.modules or list(TARGETS):
        summary = run_one(name, TARGETS[name], args.scratch, args.workers)
        summaries.append(summary)
        counts = summary["counts"]
        # A mutant whose tests crash (segfault) or hang (timeout) was detected as surely as a failing one.
        killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("segfault", 0)
        tested = summary["mutants"] - counts.get("no tests", 0) - counts.get("skipped", 0)
        score = 100.0 * killed / tested if tested else 0.0
        print(f"{name}: {summary['mutants']} mutants, {counts}, score {score:.1f}% of tested, {summary['seconds']} s")
        for mutant in summary["survivors_open"]:
            print(f"  survived: {mutant}")
        if summary["survivors_equivalent"]:
            listed = len(summary["survivors_equivalent"])
            print(f"  survived, listed in tools/mutation.md (equivalent or CUDA-only): {listed}")
        if summary["mutmut_exit"] != 0:
            print(f"  mutmut exited {summary['mutmut_exit']}; see {summary['log']}")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
