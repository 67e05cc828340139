"""The diff of each named mutant, as `mutmut show` prints it but without starting mutmut once per mutant (seconds
each on a busy machine): mutmut 3 keeps every mutant as a function `<name>__mutmut_<n>` beside the original
`<name>__mutmut_orig` in mutants/<module>.py; this prints the lines where the two differ.

    python scripts/mutation_diff.py <scratch dir> [mutant names]   # no names: every survivor of `mutmut results`
"""
import ast, difflib, sys, subprocess, os
scratch = sys.argv[1]
names = sys.argv[2:]
if not names:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=scratch, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
    names = [l.split(":")[0].strip() for l in out.splitlines() if l.strip().endswith(": survived")]
cache = {}
for name in names:
    mod, fn = name.rsplit(".", 1)
    path = os.path.join(scratch, "mutants", *mod.split(".")) + ".py"
    if path not in cache:
        src = open(path).read()
        tree = ast.parse(src)
        funcs = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs[node.name] = ast.get_source_segment(src, node)
        cache[path] = funcs
    funcs = cache[path]
    base = fn.rsplit("__mutmut_", 1)[0]
    orig = funcs.get(base + "__mutmut_orig"); mut = funcs.get(fn)
    if orig is None or mut is None:
        print("##", name, "(not found)"); continue
    o = orig.replace(base + "__mutmut_orig", base, 1).splitlines()  # the def line too (a default value mutated)
    m = mut.replace(fn, base, 1).splitlines()
    print("##", name)
    for l in difflib.unified_diff(o, m, lineterm="", n=0):
        if l.startswith(("+++", "---", "@@")): continue
        print(l)
