#!/usr/bin/env python3
"""Mutation testing of the rules that live outside Rust: the Redis store's Lua scripts and the
PostgreSQL store's SQL (functions in migrations, statements in sql/). cargo-mutants only mutates
Rust, and these files hold the transitions themselves.

Each mutant changes one operator on one line (a comparison, a boolean connective, a negation, a
constant, greatest/least), outside comments and string literals. The script applies it, runs the
test command, and restores the file; a mutant the tests pass is MISSED: a rule no test checks.

Run it in a scratch work tree, never in the one you are editing (it rewrites files in place and
restores them, but an interrupted run leaves a mutant behind; `git checkout` undoes it):

    git worktree add /tmp/sentinel-mutants HEAD
    cd /tmp/sentinel-mutants
    SENTINEL_REQUIRE_BACKENDS=1 PROPTEST_CASES=64 scripts/mutate-scripts.py \\
        sentinel-redis/lua/*.lua sentinel-redis/lua/fast/*.lua \\
        -- cargo test -p sentinel-redis --test conformance --test standalone

    scripts/mutate-scripts.py --list FILE...        # the mutants, numbered, without running
    scripts/mutate-scripts.py --only 3,17-20 FILE... -- COMMAND   # some of them

The unmutated tree must pass the command first. Output: one line per mutant,
`caught`, `MISSED` or `timeout`, then a summary; `--log FILE` appends it to FILE as well.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

# (pattern, replacement, applies-to) — each match outside comments and strings is one mutant.
LUA = [
    (r"<=", "<"),
    (r">=", ">"),
    (r"(?<![<>=~])<(?![=<])", "<="),
    (r"(?<![<>=~-])>(?![=>])", ">="),
    (r"==", "~="),
    (r"~=", "=="),
    (r"\band\b", "or"),
    (r"\bor\b", "and"),
    (r"\bnot\s+", ""),
    (r"\btrue\b", "false"),
    (r"\bfalse\b", "true"),
    (r"\+ 1\b", "+ 0"),
    (r"\bmax\(", "min("),
    (r"\bmin\(", "max("),
]

SQL = [
    (r"<=", "<"),
    (r">=", ">"),
    (r"(?<![<>=:])<(?![=>])", "<="),
    (r"(?<![<>=:-])>(?![=])", ">="),
    (r"<>", "="),
    # '=' only where it compares (assignments in SET lists and ':=' are left alone).
    (r"(?<![<>=:!])=(?![=>])", "<>", r"\b(WHERE|AND|OR|WHEN|IF|ELSIF|ON)\b"),
    (r"\bAND\b", "OR"),
    (r"\bOR\b", "AND"),
    (r"\bIS NOT DISTINCT FROM\b", "IS DISTINCT FROM"),
    (r"\bIS DISTINCT FROM\b", "IS NOT DISTINCT FROM"),
    (r"\bNOT\s+(?!NULL\b|DISTINCT\b)", ""),
    (r"\bgreatest\(", "least("),
    (r"\bleast\(", "greatest("),
    (r"\+ 1\b", "+ 0"),
    (r"\btrue\b", "false"),
    (r"\bfalse\b", "true"),
]


def code_spans(line, lua):
    """The parts of a line that are code: (start, end) pairs outside strings and comments."""
    spans, start, i, quote = [], 0, 0, None
    while i < len(line):
        ch = line[i]
        if quote:
            if lua and ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote, start = None, i + 1
        elif line.startswith("--", i):
            break
        elif ch == "'" or (lua and ch == '"'):
            spans.append((start, i))
            quote = ch
        i += 1
    if not quote:
        spans.append((start, i))
    return spans


def mutants(path):
    lua = path.suffix == ".lua"
    rules = LUA if lua else SQL
    found = []
    for number, line in enumerate(path.read_text().splitlines(keepends=True), 1):
        spans = code_spans(line, lua)
        for rule in rules:
            pattern, replacement = rule[0], rule[1]
            if len(rule) > 2 and not re.search(rule[2], line):
                continue
            for m in re.finditer(pattern, line):
                if any(a <= m.start() and m.end() <= b for a, b in spans):
                    found.append((path, number, m.start(), m.end(), replacement, line))
    return found


def apply(mutant):
    path, number, start, end, replacement, line = mutant
    lines = path.read_text().splitlines(keepends=True)
    assert lines[number - 1] == line, f"{path}:{number} changed under the run"
    lines[number - 1] = line[:start] + replacement + line[end:]
    path.write_text("".join(lines))


def describe(mutant):
    path, number, start, end, replacement, line = mutant
    return f"{path}:{number}: {line[start:end].strip() or line[start:end]!r} -> {replacement!r} | {line.strip()}"


def run(command, timeout):
    # A session of its own, so that a timeout kills the test binaries cargo started as well.
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        return "passed" if child.wait(timeout=timeout) == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return "timeout"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--only", help="mutant numbers to run: 3,17-20")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    parser.add_argument("--log", help="also append the results to this file")
    parser.add_argument("files", nargs="+", type=Path)
    args, command = parser.parse_known_args()
    if "--" in sys.argv:
        command = sys.argv[sys.argv.index("--") + 1:]
        args.files = [f for f in args.files if str(f) not in command]

    every = [m for path in args.files for m in mutants(path)]
    chosen = range(1, len(every) + 1)
    if args.only:
        chosen = []
        for part in args.only.split(","):
            first, _, last = part.partition("-")
            chosen.extend(range(int(first), int(last or first) + 1))
    if args.list:
        for n in chosen:
            print(f"{n:4} {describe(every[n - 1])}")
        return 0
    if not command:
        parser.error("give the test command after --")

    log = open(args.log, "a") if args.log else None

    def say(text):
        print(text, flush=True)
        if log:
            log.write(text + "\n")
            log.flush()

    began = time.monotonic()
    if run(command, args.timeout) != "passed":
        say("the unmutated tree fails the command: nothing to learn")
        return 2
    say(f"baseline passed in {time.monotonic() - began:.0f} s; {len(chosen)} mutants")
    counts = {"caught": 0, "MISSED": 0, "timeout": 0}
    for n in chosen:
        mutant = every[n - 1]
        original = mutant[0].read_text()
        apply(mutant)
        try:
            began = time.monotonic()
            outcome = run(command, args.timeout)
        finally:
            mutant[0].write_text(original)
        verdict = {"passed": "MISSED", "failed": "caught", "timeout": "timeout"}[outcome]
        counts[verdict] += 1
        say(f"{n:4} {verdict:7} {time.monotonic() - began:5.0f}s {describe(mutant)}")
    say(", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if counts["MISSED"] else 0


if __name__ == "__main__":
    sys.exit(main())
