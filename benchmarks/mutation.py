"""Mutation testing per module with mutmut: `make mutation MODULE=animate/media`, table in MUTATION.md.

Each module listed in `[tool.mutmut.modules]` of pyproject.toml (a file or a folder, with the fast test files
that cover it) runs on its own in `build/mutation/<module>/`: a pyproject whose `[tool.mutmut]` mutates only
that module's files and collects only its tests, links to the packages, the tests and ../shared, and mutmut's
`mutants/` copy. mutmut runs each mutant in a fork with only the tests that call the mutated function, so a
module costs one test run plus a fraction of one per mutant. A module still running after `--budget` seconds
is stopped and its unchecked mutants are counted as "not run". `--sample N` runs a seeded random sample of N of
a module's mutants (for modules whose tests cost seconds per mutant); the row then counts the sample only.

    python benchmarks/mutation.py                       # every configured module, one after another
    python benchmarks/mutation.py animate/media --budget 600 --max-children 2
    python benchmarks/mutation.py animate/engines/warp.py --sample 300 --seed 0   # 300 of its ~2000 mutants
    cd build/mutation/animate_media_video && ../../../.venv/bin/mutmut show NAME   # one survivor's diff
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
#: mutmut's exit codes per mutant, folded into the table's columns.
COLUMN_BY_EXIT_CODE = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    None: "not run",
}
COLUMN_BY_EXIT_CODE |= dict.fromkeys((24, -24, 36, 152, 255), "timeout")
COLUMNS = ("killed", "survived", "no tests", "timeout", "other", "not run")


def load_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def module_files(module: str) -> list[str]:
    """The Python files a module entry mutates: the file itself, or a folder's files but its __init__."""
    path = ROOT / module
    if path.is_file():
        return [module]
    if not path.is_dir():
        raise SystemExit(f"error: {module} in [tool.mutmut.modules] is neither a file nor a folder")
    return sorted(str(p.relative_to(ROOT)) for p in path.rglob("*.py") if p.name != "__init__.py")


def module_pyproject(config: dict, files: list[str], tests: list[str]) -> str:
    """pyproject.toml with `[tool.mutmut]` narrowed to one module (JSON lists are valid TOML arrays)."""
    lines, skipping = [], False
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("["):
            skipping = line.startswith("[tool.mutmut")
        if not skipping:
            lines.append(line)
    settings = {k: v for k, v in config.items() if k != "modules"}
    settings |= {"only_mutate": files, "pytest_add_cli_args_test_selection": tests}
    lines += ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def prepare(module: str, config: dict, resume: bool) -> tuple[Path, list[str]]:
    tests = config["modules"][module]
    missing = [t for t in tests if not (ROOT / t).is_file()]
    if missing:
        raise SystemExit(f"error: test files of {module} not found: {', '.join(missing)}")
    work = WORK / module.removesuffix(".py").replace("/", "_")
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    # tests/conftest.py finds the sample media at ../shared/data from the repository root
    for name, target in [(p, ROOT / p) for p in [*config["source_paths"], "tests"]] + [
        ("shared", ROOT.parent / "shared")
    ]:
        link = work / name
        if not link.is_symlink() and target.exists():
            link.symlink_to(target)
    files = module_files(module)
    (work / "pyproject.toml").write_text(module_pyproject(config, files, tests))
    return work, files


def run_mutmut(
    work: Path, budget: float, max_children: int, names: list[str] | None = None, log_mode: str = "wb"
) -> tuple[float, bool]:
    """Run mutmut in `work` (log in mutmut.log), stopped at the budget. Returns (seconds, finished).

    `names` limits the run to those mutants (mutmut still generates them all and collects test stats once).
    """
    start = time.monotonic()
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *(names or [])]
    # mutmut forks each mutant from a process that already ran torch: a forked OpenMP pool deadlocks.
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(work / "mutmut.log", log_mode) as log:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=budget)
            finished = process.returncode == 0
        except subprocess.TimeoutExpired:
            # mutmut saves each mutant's result as it comes (SIGINT does not stop its workers)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            finished = False
    return time.monotonic() - start, finished


def exit_codes(work: Path, files: list[str]) -> dict[str, int | None]:
    """Every generated mutant's exit code (None: not run) from mutmut's `.meta` files."""
    codes = {}
    for file in files:
        meta = work / "mutants" / f"{file}.meta"
        if meta.is_file():
            codes |= json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def draw_sample(work: Path, files: list[str], size: int, seed: int, budget: float) -> tuple[list[str], float]:
    """A seeded sample of `size` mutant names, kept in `sample.txt` (a resumed run reuses it).

    mutmut lists mutants only by generating them: a run filtered to a name that matches nothing generates
    every mutant and collects the tests' stats (both reused by the real run), then stops.
    """
    listed = work / "sample.txt"
    if listed.is_file():
        return listed.read_text().split(), 0.0
    seconds, _ = run_mutmut(work, budget, 1, names=["no-such-mutant-listing-only"])
    names = sorted(exit_codes(work, files))
    if not names:
        raise SystemExit(f"error: mutmut generated no mutants in {work} (see mutmut.log)")
    sample = sorted(random.Random(seed).sample(names, min(size, len(names))))
    listed.write_text("\n".join(sample) + "\n")
    return sample, seconds


def tally(work: Path, files: list[str], sample: list[str] | None = None) -> tuple[Counter, list[str]]:
    """Count mutants per column (only the sample's, if any); return the surviving mutants' names."""
    counts, survivors = Counter(), []
    codes = exit_codes(work, files)
    if sample is not None:
        codes = {name: codes.get(name) for name in sample}
    for name, code in codes.items():
        column = COLUMN_BY_EXIT_CODE.get(code, "other")
        counts[column] += 1
        if column in ("survived", "no tests"):
            survivors.append(name)
    return counts, sorted(survivors)


def write_survivors(work: Path, survivors: list[str]) -> None:
    """survivors.txt: each surviving mutant's diff, as `mutmut show` prints it."""
    if not survivors:
        (work / "survivors.txt").write_text("")
        return
    script = (
        "import sys\nfrom mutmut.__main__ import find_mutant, get_diff_for_mutant\n"
        "for name in sys.argv[1:]:\n"
        "    print(f'# {name}', get_diff_for_mutant(name, path=find_mutant(name).path), sep='\\n', end='\\n\\n')\n"
    )
    with open(work / "survivors.txt", "w") as out:
        subprocess.run([sys.executable, "-c", script, *survivors], cwd=work, stdout=out, check=False)


def row(module: str, counts: Counter, seconds: float) -> str:
    total = sum(counts.values())
    checked = total - counts["not run"]
    score = f"{100 * (counts['killed'] + counts['timeout']) / checked:.0f}%" if checked else "-"
    cells = [module, str(total), *(str(counts[c]) for c in COLUMNS), score, f"{seconds / 60:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "modules", nargs="*", help="configured modules, or folders holding some (default: all)"
    )
    parser.add_argument("--budget", type=float, default=1200, help="seconds per module (default 1200)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    parser.add_argument("--resume", action="store_true", help="keep the results of an earlier (stopped) run")
    parser.add_argument("--sample", type=int, default=None, help="run only a random sample of N mutants")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    args = parser.parse_args(argv)

    config = load_config()
    wanted = [m.rstrip("/") for m in args.modules]
    modules = [
        m for m in config["modules"] if not wanted or any(m == w or m.startswith(w + "/") for w in wanted)
    ]
    if not modules:
        parser.error(f"no module in [tool.mutmut.modules] matches {' '.join(wanted)}")

    header = ["module", "mutants", *COLUMNS, "score", "minutes"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for module in modules:
        work, files = prepare(module, config, args.resume)
        print(f"{module}: {len(files)} file(s), log in {work.relative_to(ROOT)}/mutmut.log", flush=True)
        sample, seconds = None, 0.0
        if args.sample:
            sample, seconds = draw_sample(work, files, args.sample, args.seed, args.budget)
            codes = exit_codes(work, files)
            todo = [name for name in sample if codes.get(name) is None]
            print(f"  sample of {len(sample)} mutants (seed {args.seed}), {len(todo)} to run", flush=True)
            if todo:
                more, finished = run_mutmut(
                    work, max(args.budget - seconds, 60), args.max_children, names=todo, log_mode="ab"
                )
                seconds += more
            else:
                finished = True
        else:
            seconds, finished = run_mutmut(work, args.budget, args.max_children)
        counts, survivors = tally(work, files, sample)
        write_survivors(work, survivors)
        if not finished:
            print(f"  stopped after {seconds:.0f} s (budget or error): see the log", flush=True)
        print(f"  {len(survivors)} survivor(s): {work.relative_to(ROOT)}/survivors.txt", flush=True)
        rows.append(row(module, counts, seconds))
    print("\nscore = (killed + timeout) / (mutants - not run)\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
