#!/usr/bin/env python3
"""Fail when modules inside one workspace crate import each other in a cycle.

Cargo already rejects cycles between crates (operator/*/Cargo.toml); inside a crate it does
not. This reads every `crate::<module>` path (in `use` items and inline paths, comments
excluded) and `super::<module>` path of the top-level modules of each crate under operator/,
builds the module graph and prints every strongly connected component with more than one
module. Tests (`#[cfg(test)] mod tests { … }` at the end of a file) are ignored: a test may
use anything in its crate.

    scripts/check-module-cycles.py            # all crates
    scripts/check-module-cycles.py --min-lines 3000   # only crates at least that large
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "operator"
PATH_RE = re.compile(r"\bcrate::(\{[^}]*\}|[a-z_][a-z0-9_]*)")


def crate_dirs(root):
    yield root  # the awooop package (operator/src)
    for d in sorted(root.iterdir()):
        if (d / "Cargo.toml").exists() and (d / "src").is_dir():
            yield d


def top_module(src: pathlib.Path, f: pathlib.Path) -> str:
    rel = f.relative_to(src).parts
    name = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    return name


def strip(text: str) -> str:
    # drop the unit-test module and comments
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests", text, re.M)
    if m:
        text = text[: m.start()]
    return "\n".join(l.split("//")[0] for l in text.splitlines())


def graph(src: pathlib.Path):
    mods, edges, lines = set(), {}, 0
    for f in sorted(src.rglob("*.rs")):
        text = f.read_text()
        lines += text.count("\n")
        m = top_module(src, f)
        if m in ("lib", "main"):
            continue
        mods.add(m)
        body = strip(text)
        depth = len(f.relative_to(src).parts)
        # `super::x` in a file directly under src/ (or `super::super::x` one level down) is
        # `crate::x`.
        sup = r"\bsuper::" * (depth if f.name != "mod.rs" else depth - 1)
        if sup:
            body += "\n" + "\n".join(
                "crate::" + x for x in re.findall(sup + r"([a-z_][a-z0-9_]*)", body)
            )
        for hit in PATH_RE.findall(body):
            names = re.findall(r"[a-z_][a-z0-9_]*", hit) if hit.startswith("{") else [hit]
            for n in names[:1] if not hit.startswith("{") else [x.split("::")[0] for x in re.split(r",\s*", hit.strip("{}")) if x]:
                if n != m and n != "self":
                    edges.setdefault(m, set()).add(n)
    edges = {a: {b for b in bs if b in mods} for a, bs in edges.items()}
    return mods, edges, lines


def sccs(nodes, edges):
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = i[0]
        i[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-lines", type=int, default=0)
    ap.add_argument("--root", type=pathlib.Path, default=ROOT, help="the operator/ folder")
    args = ap.parse_args()
    bad = False
    for d in crate_dirs(args.root):
        mods, edges, lines = graph(d / "src")
        if lines < args.min_lines:
            continue
        cycles = sccs(mods, edges)
        name = d.name if d != args.root else "awooop (operator/src)"
        status = "ok" if not cycles else "CYCLE " + "; ".join(" <-> ".join(c) for c in cycles)
        print(f"{name:28} {lines:6} lines {len(mods):3} modules  {status}")
        bad |= bool(cycles)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
