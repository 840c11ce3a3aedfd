"""The runtime of two commits side by side on the same bundles: ``encode`` of ``batch`` texts of exactly ``seq``
tokens, timed in alternating subprocesses (old, new, old, new, ...), so that both see the same machine state.

    python -m benchmarks.run_commit_compare --old 57fb0b5 --bundles bundles/minilm-ort-cpu bundles/minilm-ov-bf16

The old commit is checked out into a temporary git worktree; each subprocess imports ``runtimes`` from its tree
(PYTHONPATH, checked) and times ``encode`` on the same texts (made once with this tree's tokenizer). Output: one line per bundle
and commit (median and p90 of the per-round medians, ms) and the ratio new / old; ``--json`` writes the rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
import runtimes

bundle, texts_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(texts_file))
batch = len(texts)
model = runtimes.load(bundle, verify=False)
model.encode(texts, batch_size=batch)  # warm-up
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch)
    times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"runtimes": runtimes.__file__, "median_ms": float(np.median(times))}))
"""


def make_texts(bundle: str, batch: int, seq: int, path: Path) -> None:
    """``batch`` texts of exactly ``seq`` tokens for ``bundle`` (made here, with this tree's code, once)."""
    import runtimes
    from bge_export.bench.texts import exact_length_texts
    from bge_export.parity_run import parity_texts

    model = runtimes.load(bundle, verify=False)
    words = " ".join(parity_texts()["corpus"]).split()
    texts = exact_length_texts(lambda t: len(model.tokenizer.encode([t], 100000)[0].ids), words, batch, seq)
    path.write_text(json.dumps(texts))


def run_child(tree: Path, bundle: str, texts_file: Path, repeats: int) -> dict:
    """One subprocess that imports ``runtimes`` from ``tree`` only."""
    out = subprocess.run([sys.executable, "-c", CHILD, bundle, str(texts_file), str(repeats)], cwd=tree,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                                                              "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"child failed in {tree}:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    if not row["runtimes"].startswith(str(tree)):
        raise SystemExit(f"the child imported runtimes from {row['runtimes']}, not from {tree}")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="the commit to compare against (e.g. a hash or HEAD~3)")
    p.add_argument("--bundles", nargs="+", required=True, help="bundles to time (built by either commit)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6, help="alternating old / new subprocess pairs")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per subprocess")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bge-old-") as tmp:
        old_tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = []
            for bundle in args.bundles:
                texts_file = Path(tmp) / "texts.json"
                make_texts(bundle, args.batch, args.seq, texts_file)
                medians = {"old": [], "new": []}
                for _ in range(args.rounds):
                    for which, tree in (("old", old_tree), ("new", ROOT)):
                        medians[which].append(run_child(tree, bundle, texts_file, args.repeats)["median_ms"])
                summary = {k: {"median_ms": statistics.median(v), "p90_ms": sorted(v)[int(0.9 * (len(v) - 1))],
                               "rounds": v} for k, v in medians.items()}
                ratio = summary["new"]["median_ms"] / summary["old"]["median_ms"]
                rows.append({"bundle": bundle, "batch": args.batch, "seq": args.seq, "old": args.old, **summary,
                             "new_over_old": ratio})
                print(f"{bundle}  {args.batch} x {args.seq}: old {summary['old']['median_ms']:.2f} ms, new "
                      f"{summary['new']['median_ms']:.2f} ms, new / old {ratio:.3f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
