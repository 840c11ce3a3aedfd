"""``bge-export embed``: embed a corpus into Parquet shards, in-process or on a Ray cluster (runtimes.corpus.run).

Needs pyarrow (the ``corpus`` extra) and, for --ray, Ray Data (the ``ray`` extra); never torch.
"""
from __future__ import annotations

import argparse
import json
import sys

from runtimes._optional import require
from runtimes.corpus.run import EmbedSettings, embed_corpus
from runtimes.errors import BgeError, InputError
from runtimes.server import parse_options

DESCRIPTION = """\
Embed a corpus with a bundle into Parquet shards (id, vector; bge-m3 also sparse and, with --colbert, ColBERT),
equal to runtimes.load(BUNDLE).encode on the same texts and options, with a manifest of what was embedded.

  bge-export embed bundles/bge-small --input corpus.jsonl --output emb/
  bge-export embed bundles/m3 --input docs/ --text-column body --id-column doc_id --output emb/ --colbert
  bge-export embed bundles/bge-small --input corpus.parquet --output emb/ --ray auto --workers 4
  bge-export embed bundles/bge-small --input corpus.jsonl --output emb/ --resume     # after an interruption

Input: .jsonl (one JSON object a line), .parquet, or .txt (one text a line), or a folder of them; read in
shards of --shard-rows rows, never all at once. Ids: the --id-column values, or the row number (0-based, across
the files in order) when the input has no such column. Each shard is written atomically and listed in
OUTPUT/_manifest.json when done; --resume finishes an interrupted run, every row exactly once. Read the result with
pandas.read_parquet(OUTPUT), pyarrow.dataset or DuckDB (SELECT * FROM 'OUTPUT/*.parquet').
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export embed", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="an embedding bundle folder")
    p.add_argument("--input", required=True, metavar="PATH", help="a .jsonl / .parquet / .txt file or a folder of them")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder for the Parquet shards and _manifest.json")
    p.add_argument("--text-column", default="text", help="the field / column with the text (default text)")
    p.add_argument("--id-column", default="id", help="the field / column with the id (default id; row numbers when "
                                                     "the input has no such column)")
    p.add_argument("--method", default="encode", choices=["encode", "encode_corpus", "encode_queries"],
                   help="the API call (default encode; encode_corpus / encode_queries add the passage / query "
                        "instruction given with --option)")
    p.add_argument("--colbert", action="store_true", help="also write bge-m3's ColBERT vectors (large)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a runtimes.load option (max_length=256, truncate_dim=256, normalize_embeddings=false, ...); "
                        "VALUE is JSON or a plain string")
    p.add_argument("--batch-tokens", type=int, default=2048, metavar="N",
                   help="padded tokens per engine batch (default 2048, the fastest of 2048-16384 on 2-core CPUs; 0: "
                        "encode's own batch_size batching)")
    p.add_argument("--shard-rows", type=int, default=10_000, metavar="N", help="rows per output shard (default 10000)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --output")
    p.add_argument("--ray", default=None, metavar="auto|local|ADDRESS",
                   help="run on Ray Data: 'auto' joins the running cluster, 'local' starts one on this machine, "
                        "or a cluster address (ray://host:10001 or host:6379)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray actors (default: one per CPU of the cluster), each one engine with the cluster's CPUs "
                        "divided among them; in-process: the engine threads (default all cores)")
    p.add_argument("--json", action="store_true", help="print the finished manifest as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require("pyarrow")
        if args.workers is not None and args.workers < 1:
            raise InputError(f"--workers must be a positive int, got {args.workers}")
        settings = EmbedSettings(bundle=args.bundle, input=args.input, output=args.output,
                                 text_column=args.text_column, id_column=args.id_column, method=args.method,
                                 colbert=args.colbert, options=parse_options(args.option, "--option"),
                                 batch_tokens=args.batch_tokens, shard_rows=args.shard_rows, resume=args.resume,
                                 ray=args.ray, workers=args.workers)
        manifest = embed_corpus(settings)
    except BgeError as exc:
        print(f"bge-export embed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bge-export embed: interrupted; finished shards are kept, run again with --resume", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(manifest, indent=1))
    else:
        print(f"embedded {manifest['rows']:,} rows into {manifest['shard_count']} shards in {args.output} "
              f"(columns: {', '.join(manifest['columns'])})")
    return 0
