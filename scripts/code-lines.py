#!/usr/bin/env python3
"""Counts the non-test lines of the Rust files under a path, as committed at a revision.

Usage: python3 scripts/code-lines.py [REV] [PATH]   (defaults: HEAD crates/mxqr-server/src)

Blank lines and `#[cfg(test)]` items (unit-test modules) are left out; comment lines are counted
apart, so that "code" is what the compiler reads. Used to compare the size of a crate before and
after a change: python3 scripts/code-lines.py fed1575; python3 scripts/code-lines.py HEAD
"""
import subprocess
import sys

rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
path = sys.argv[2] if len(sys.argv) > 2 else "crates/mxqr-server/src"
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, check=True).stdout
total = comments = 0
for name in git("ls-tree", "-r", "--name-only", rev, path).split():
    if not name.endswith(".rs"):
        continue
    lines = git("show", f"{rev}:{name}").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#[cfg(test)]"):
            # Skip the item the attribute applies to: up to its closing brace or semicolon.
            depth, opened, i = 0, False, i + 1
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                opened = opened or "{" in lines[i]
                if (opened and depth <= 0) or (not opened and lines[i].rstrip().endswith(";")):
                    break
                i += 1
        elif line:
            total += 1
            comments += line.startswith("//")
        i += 1
print(f"{path} at {rev}: {total - comments} code lines, {comments} comment lines "
      f"({total} non-blank, unit tests left out)")
