"""``python -m tests.conformance.run [--backend B] [--limit N]``: the ONNX node tests, raw vs through onnxsmith.

Prints, per backend, how many cases pass on the backend library itself and through onnxsmith, then every case
onnxsmith loses (passes raw, not through onnxsmith) with why. ``--out results.jsonl`` keeps every outcome (one
JSON object a line, written as it comes; ``--resume`` skips the jobs already there).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.conformance.backends import BACKENDS, MODES, Outcome
from tests.conformance.cases import SAMPLE, all_cases
from tests.conformance.runner import run_cases


def pair(results: Iterable[Outcome]) -> dict[tuple[str, str], dict[str, Outcome]]:
    """(backend, case) -> mode -> outcome."""
    table: dict[tuple[str, str], dict[str, Outcome]] = collections.defaultdict(dict)
    for r in results:
        table[(r.backend, r.case)][r.mode] = r
    return table


def lost_cases(results: Iterable[Outcome]) -> list[tuple[Outcome, Outcome]]:
    """(raw, onnxsmith) for each case that passes raw and not through onnxsmith."""
    return [(modes["raw"], modes["onnxsmith"]) for modes in pair(results).values()
            if "raw" in modes and "onnxsmith" in modes and modes["raw"].passed and not modes["onnxsmith"].passed]


def family(case: str) -> str:
    """The op family a case name tests: ``test_batchnorm_epsilon_training_mode`` -> ``batchnorm``."""
    return case.removeprefix("test_").split("_")[0]


def summary(results: list[Outcome]) -> str:
    lines = ["| backend | cases | raw pass | onnxsmith pass | both | raw only | onnxsmith only |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    table = pair(results)
    for backend in [b for b in BACKENDS if any(k[0] == b for k in table)]:
        rows = [m for (b, _), m in table.items() if b == backend and len(m) == 2]
        raw = sum(m["raw"].passed for m in rows)
        ours = sum(m["onnxsmith"].passed for m in rows)
        both = sum(m["raw"].passed and m["onnxsmith"].passed for m in rows)
        lines.append(f"| {backend} | {len(rows)} | {raw} | {ours} | {both} | {raw - both} | {ours - both} |")
    lost = lost_cases(results)
    lines.append("")
    lines.append(f"cases onnxsmith loses (pass raw, not through onnxsmith): {len(lost)}")
    for raw, ours in sorted(lost, key=lambda p: (p[1].backend, p[1].case)):
        lines.append(f"  {ours.backend} {ours.case} [{ours.ops}]: {ours.status}: {ours.reason}")
    return "\n".join(lines)


def lost_by_op(results: list[Outcome], backend: str) -> list[tuple[str, int, str]]:
    """(ops, cases, first reason) of the cases onnxsmith loses on ``backend``, most cases first."""
    groups: dict[str, list[Outcome]] = collections.defaultdict(list)
    for _, ours in lost_cases(r for r in results if r.backend == backend):
        groups[ours.ops].append(ours)
    return sorted(((op, len(rs), rs[0].reason) for op, rs in groups.items()), key=lambda t: (-t[1], t[0]))


def both_fail(results: list[Outcome], backend: str) -> collections.Counter[str]:
    """Why the cases that fail raw fail there (error kind or mismatch), counted."""
    kinds: collections.Counter[str] = collections.Counter()
    for (b, _), modes in pair(results).items():
        raw = modes.get("raw")
        if b == backend and raw is not None and not raw.passed:
            kinds["outputs differ" if raw.status == "fail" else raw.reason.split(":")[0]] += 1
    return kinds


RERUN = "[rerun in a fresh process]"


def rerun_lost(results: list[Outcome], backend: str, timeout: float,
               on_result: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run the cases onnxsmith lost again, each job in a fresh process (as one CLI call is); the reruns count."""
    lost = {ours.case for _, ours in lost_cases(r for r in results if r.backend == backend)}
    if not lost:
        return results
    def tag(r: Outcome) -> Outcome:
        return dataclasses.replace(r, reason=f"{r.reason} {RERUN}".strip())

    again = [tag(r) for r in run_cases(sorted(lost), [backend], MODES, timeout,
                                       (lambda r: on_result(tag(r))) if on_result else None, fresh=True)]
    return [r for r in results if not (r.backend == backend and r.case in lost)] + again


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.run", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable (default: all three)")
    parser.add_argument("--limit", type=int, default=None, help="the first N cases (sorted by name)")
    parser.add_argument("--sample", action="store_true", help="the default suite's fixed sample only")
    parser.add_argument("--match", default=None, help="only cases whose name matches this regular expression")
    parser.add_argument("--shard", default=None, metavar="K/N", help="every N-th case from the K-th (0-based): "
                        "N processes share a backend's cases")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case and mode (default 120)")
    parser.add_argument("--out", type=Path, default=None, help="append every outcome to this .jsonl")
    parser.add_argument("--resume", action="store_true", help="skip the jobs --out already holds")
    parser.add_argument("--report", action="store_true", help="only print the summary of --out")
    parser.add_argument("--rerun-lost", action="store_true", help="rerun the cases --out shows onnxsmith losing, "
                        "each job in a fresh process, and append the outcomes")
    parser.add_argument("--families", action="store_true", help="with --report: the ops onnxsmith loses, and why")
    args = parser.parse_args(argv)
    backends = args.backend or list(BACKENDS)
    done: list[Outcome] = []
    if args.out and (args.resume or args.report or args.rerun_lost) and args.out.is_file():
        done = [Outcome(**json.loads(line)) for line in args.out.read_text().splitlines() if line.strip()]
    if args.rerun_lost and args.out:
        with open(args.out, "a") as out:
            for backend in backends:
                rerun_lost(done, backend, args.timeout, lambda r: out.write(json.dumps(r.__dict__) + "\n"))
        return 0
    if args.report:
        print(summary([r for r in done if r.backend in backends]))
        if args.families:
            for backend in backends:
                print(f"\n{backend}: ops of the cases onnxsmith loses (cases, first reason)")
                for ops, count, why in lost_by_op(done, backend):
                    print(f"  {ops} ({count}): {why[:200]}")
                print(f"{backend}: why the raw backend fails the others: {dict(both_fail(done, backend).most_common())}")
        return 0
    names = list(SAMPLE) if args.sample else all_cases()
    if args.match:
        names = [n for n in names if re.search(args.match, n)]
    names = names[:args.limit] if args.limit else names
    if args.shard:
        k, n = (int(v) for v in args.shard.split("/"))
        names = names[k::n]
    seen = {(r.case, r.backend, r.mode) for r in done}
    results = [r for r in done if r.case in set(names) and r.backend in backends]
    out = open(args.out, "a") if args.out else None

    def record(result: Outcome) -> None:
        if out:
            out.write(json.dumps(result.__dict__) + "\n")
            out.flush()
        print(f"{result.backend:12} {result.mode:9} {result.status:5} {result.case} {result.reason[:100]}",
              file=sys.stderr, flush=True)

    for backend in backends:
        todo = [n for n in names if any((n, backend, m) not in seen for m in MODES)]
        results += run_cases(todo, [backend], MODES, args.timeout, record)
        results = rerun_lost(results, backend, args.timeout, record)
    if out:
        out.close()
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
