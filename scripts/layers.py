#!/usr/bin/env python3
"""Draws ferry's folder graph from its #include lines and checks that it points one way.

Each folder may include only the folders listed for it below (docs/architecture.md draws the
same floors); anything else, or a cycle, fails with the offending file and line. `--dot` prints
the graph in Graphviz form instead.
"""
import pathlib
import re
import sys

# folder -> folders it may include (itself always allowed)
ALLOWED = {
    "base": set(),
    "format": {"base"},
    "quantizer": {"base", "format"},
    "kernels": {"base", "format"},
    "cache": {"base", "format", "kernels"},
    "text": {"base", "format"},
    "runtime": {"base", "format", "kernels", "cache", "text"},
    "server": {"base", "format", "runtime", "text"},
}
LIBRARY = set(ALLOWED)
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/')


def edges(root: pathlib.Path):
    for path in sorted(root.rglob("*")):
        if path.suffix not in {".hpp", ".cpp", ".cu", ".cuh"}:
            continue
        rel = path.relative_to(root)
        folder = rel.parts[0]
        if folder not in LIBRARY:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = INCLUDE.match(line)
            if m and m.group(1) != folder:
                yield folder, m.group(1), f"{rel}:{n}"


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    found = list(edges(root))
    graph = {}
    for a, b, _ in found:
        graph.setdefault(a, set()).add(b)
    if "--dot" in sys.argv:
        print("digraph ferry {")
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f"  {a} -> {b};")
        print("}")
        return 0
    bad = [(a, b, where) for a, b, where in found if b not in ALLOWED[a]]
    for a, b, where in bad:
        print(f"{where}: {a}/ includes {b}/, which is not below it")
    # A cycle is impossible when every edge is allowed (ALLOWED is a partial order), but check
    # the drawn graph itself so that an edit of ALLOWED cannot hide one.
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                print("cycle: " + " -> ".join(stack + [node, nxt]))
                return True
            if not state.get(nxt) and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    cyclic = any(visit(n, []) for n in list(graph) if not state.get(n))
    if bad or cyclic:
        return 1
    for a in sorted(graph):
        print(f"{a}/ -> {', '.join(sorted(graph[a]))}")
    print("layers: every include points down; no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
