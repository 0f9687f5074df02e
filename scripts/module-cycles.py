#!/usr/bin/env python3
"""Prints the import cycles between the files of one Rust crate.

Usage: python3 scripts/module-cycles.py [crates/mxqr-server/src] [--max N]

Each file is a module; a file depends on another when it names an item of it through a
`crate::`, `super::` or `self::` path (in a `use` tree or inline). A cycle is a strongly
connected set of files. Exit status 1 when a cycle spans more than --max files (default: no
limit), so the rule "no cycle over 3 files" can be checked by anyone.
"""
import re
import sys
from pathlib import Path

args = [a for a in sys.argv[1:]]
limit = None
if "--max" in args:
    i = args.index("--max")
    limit = int(args[i + 1])
    del args[i : i + 2]
root = Path(args[0] if args else "crates/mxqr-server/src")

# module path (tuple) -> file
modules = {}
for f in root.rglob("*.rs"):
    rel = f.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    modules[tuple(parts)] = f


def strip_comments(src):
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def strip_tests(src):
    """Drops `#[cfg(test)]` items: unit tests do not shape the design."""
    out, i = [], 0
    while True:
        j = src.find("#[cfg(test)]", i)
        if j < 0:
            out.append(src[i:])
            return "".join(out)
        out.append(src[i:j])
        k = j + len("#[cfg(test)]")
        brace, semi = src.find("{", k), src.find(";", k)
        if semi >= 0 and (brace < 0 or semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(src):
            depth += {"{": 1, "}": -1}.get(src[k], 0)
            k += 1
            if depth == 0:
                break
        i = k


def expand_use(tree):
    """`a::{b, c::{d}}` -> ["a::b", "a::c::d"]"""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+", " as ", tree).replace(" as ", "@"))
    tree = tree.replace("@", " as ")
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1 : i], tree[i + 1 :]
                parts, d, cur = [], 0, ""
                for c in inner:
                    if c == "," and d == 0:
                        parts.append(cur)
                        cur = ""
                        continue
                    d += c == "{"
                    d -= c == "}"
                    cur += c
                parts.append(cur)
                res = []
                for p in parts:
                    if p:
                        res += expand_use(prefix + p + rest)
                return res
    return [tree]


def resolve(path, here, depth=0):
    """The file that defines what a path names: its longest module prefix, following the
    re-exports (`pub use`) of that module to the file they come from."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] not in ("crate", "super", "self") and here + (segs[0],) in modules:
        segs = ["self"] + segs
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    best = tuple(base) if tuple(base) in modules else None
    rest = segs
    cur = list(base)
    for i, s in enumerate(segs):
        cur.append(s)
        if tuple(cur) in modules:
            best, rest = tuple(cur), segs[i + 1 :]
    if best is not None and rest and depth < 8:
        via = reexports.get(best, {}).get(rest[0])
        if via is not None:
            return resolve(via, best, depth + 1) or best
    return best


def use_paths(src):
    out = []
    for m in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]*);", src):
        for p in expand_use(m.group(2)):
            out.append((bool(m.group(1)), p))
    return out


# name -> path for every `pub use` of a module, to see through re-exports.
reexports = {}
for mod, f in modules.items():
    src = strip_tests(strip_comments(f.read_text()))
    for public, p in use_paths(src):
        if public:
            last = p.split(" as ")[-1].split("::")[-1] if " as " in p else p.split("::")[-1]
            reexports.setdefault(mod, {})[last] = p.split(" as ")[0]


edges = {m: set() for m in modules}
for mod, f in modules.items():
    src = strip_tests(strip_comments(f.read_text()))
    paths = [p for _, p in use_paths(src)]
    paths += re.findall(r"\b(?:crate|super|self)(?:::\w+)+", src)
    # Inline paths through a child module (`account::handler` in its parent).
    paths += [p for p in re.findall(r"(?<![:\w])\w+(?:::\w+)+", src)
              if mod + (p.split("::")[0],) in modules]
    for p in paths:
        p = p.split(" as ")[0]
        target = resolve(p, mod)
        if target is not None and target != mod:
            edges[mod].add(target)

# Tarjan's strongly connected components.
index, low, on, stack, sccs, n = {}, {}, set(), [], [], [0]


def visit(v):
    index[v] = low[v] = n[0]
    n[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)


sys.setrecursionlimit(10000)
for v in modules:
    if v not in index:
        visit(v)

name = lambda m: str(modules[m].relative_to(root))
sccs.sort(key=len, reverse=True)
print(f"{len(modules)} files, {sum(len(e) for e in edges.values())} file-to-file imports, "
      f"{len(sccs)} cycles; largest spans {len(sccs[0]) if sccs else 0} files")
for comp in sccs:
    print(f"cycle of {len(comp)} files: " + ", ".join(sorted(name(m) for m in comp)))
if limit is not None and sccs and len(sccs[0]) > limit:
    sys.exit(1)
