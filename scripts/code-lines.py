#!/usr/bin/env python3
"""Counts the non-test lines of the Rust files under a path, as committed at a revision.

Usage: python3 scripts/code-lines.py [REV] [PATH]   (defaults: HEAD crates/mxqr-server/src)

Blank lines and `#[cfg(test)]` / `#[cfg(fuzzing)]` items (unit tests, fuzz-only entry points) are
left out, and so are the files of modules declared under them; comment lines are counted apart,
so that "code" is what the compiler reads. Used to compare the size of a crate before and
after a change: python3 scripts/code-lines.py fed1575; python3 scripts/code-lines.py HEAD
"""
import subprocess
import sys

rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
path = sys.argv[2] if len(sys.argv) > 2 else "crates/mxqr-server/src"
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, check=True).stdout
TEST_ONLY = ("#[cfg(test)]", "#[cfg(fuzzing)]")
names = [n for n in git("ls-tree", "-r", "--name-only", rev, path).split() if n.endswith(".rs")]
skipped_files = set()  # files of modules declared under a test-only cfg (`#[cfg(test)] mod x;`)
counts = {}
for name in names:
    total = comments = 0
    lines = git("show", f"{rev}:{name}").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(TEST_ONLY):
            # Skip the item the attribute applies to: up to its closing brace or semicolon.
            depth, opened, i = 0, False, i + 1
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                opened = opened or "{" in lines[i]
                if (opened and depth <= 0) or (not opened and lines[i].rstrip().endswith(";")):
                    break
                i += 1
            # `mod x;` under the cfg: its file is test-only too (in this file's module folder).
            words = lines[i].strip().rstrip(";").split() if i < len(lines) else []
            if len(words) >= 2 and words[-2] == "mod" and lines[i].rstrip().endswith(";"):
                stem = name[: -len(".rs")]
                folder = stem.rsplit("/", 1)[0] if stem.endswith(("/lib", "/main", "/mod")) else stem
                skipped_files |= {f"{folder}/{words[-1]}.rs", f"{folder}/{words[-1]}/mod.rs"}
        elif line:
            total += 1
            comments += line.startswith("//")
        i += 1
    counts[name] = (total, comments)
total = sum(t for n, (t, _) in counts.items() if n not in skipped_files)
comments = sum(c for n, (_, c) in counts.items() if n not in skipped_files)
print(f"{path} at {rev}: {total - comments} code lines, {comments} comment lines "
      f"({total} non-blank, unit tests left out)")
