"""`python -m explain.reader_study create|serve|links|analyse`: a reader study of a CV run's maps.

create  draws the cases from a finished CV run and stores the study (prints each reader's private link)
serve   runs the reading app, one private link per reader
links   issues a reader a new private link (the old one stops working)
analyse compares aided with unaided reading and logs the result to the CV run
"""

from __future__ import annotations

import argparse
import sys

from explain.methods import METHODS
from explain.reader_study import schema
from explain.reader_study.analysis import analyse_study
from explain.reader_study.app import serve
from explain.reader_study.create import create_study, reissue_token
from explain.reader_study.simulate import simulate
from explain.runs import default_tracking_uri, masked
from vfrac.errors import InputError
from vfrac.runtime import apply_process_defaults

DEFAULT_PORT = 8765


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m explain.reader_study", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database", help="SQLAlchemy URL of the study database (default: "
                          f"${schema.DATABASE_ENV}, else sqlite:///mlruns/reader_studies.db); "
                          "postgresql://USER@HOST/DB for a server")
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", parents=[database], help="make a study from a finished CV run")
    create.add_argument("--run", required=True, help="the CV run's id")
    create.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)")
    create.add_argument("--readers", type=int, required=True, help="how many readers (each gets a private link)")
    create.add_argument("--cases", type=int, help="cases to read (default: every test patient), drawn by "
                        "label and by whether the model was right")
    create.add_argument("--decoy-share", type=float, default=0.2,
                        help="share of cases whose maps come from the weight-randomised network (default: 0.2)")
    create.add_argument("--seed", type=int, default=0, help="draws the cases, decoys and reading orders")
    create.add_argument("--method", choices=METHODS, help="map method (default: gradcam)")
    create.add_argument("--name", help="the study's name")
    create.add_argument("--simulate", action="store_true",
                        help="answer as the synthetic cohort's readers would (demo and tests only; the study "
                             "is marked simulated everywhere)")

    serve = commands.add_parser("serve", parents=[database], help="run the reading app")
    serve.add_argument("--study", type=int, required=True, help="the study's id (create prints it)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                       "machine only; reach it from elsewhere over an SSH tunnel)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")

    links = commands.add_parser("links", parents=[database], help="issue a reader a new private link")
    links.add_argument("--study", type=int, required=True)
    links.add_argument("--reader", type=int, required=True, help="the reader's number (1..N)")
    links.add_argument("--host", default="127.0.0.1")
    links.add_argument("--port", type=int, default=DEFAULT_PORT)

    analyse = commands.add_parser("analyse", parents=[database], help="aided vs unaided reading; logged to "
                                  "the CV run")
    analyse.add_argument("--study", type=int, required=True)
    analyse.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)")
    analyse.add_argument("--out", help="also keep the files in this folder")
    analyse.add_argument("--no-log", action="store_true", help="write files only (needs --out); log nothing")
    args = parser.parse_args(argv)
    if args.command == "analyse" and args.no_log and args.out is None:
        parser.error("--no-log needs --out: without it nothing would be kept")
    return args


def main(argv=None) -> int:
    apply_process_defaults()
    args = parse_args(argv)
    url = args.database or schema.default_database()
    try:
        engine = schema.open_database(url)
        return COMMANDS[args.command](engine, url, args)
    except InputError as error:  # a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


def _create(engine, url: str, args) -> int:

    created = create_study(engine, args.run, args.tracking_uri or default_tracking_uri(), args.readers, args.cases,
                           args.decoy_share, args.seed, args.method, args.name)
    print(f"study {created.study_id}: {created.cases} cases ({created.decoys} with decoy maps), "
          f"{len(created.tokens)} readers, in {masked(url)}")
    if args.simulate:
        answered = simulate(engine, created.study_id, created.reader_calls, args.seed)
        print(f"SIMULATED: {answered} answers given as the synthetic cohort's readers would; not a reader study")
        return 0
    print(f"serve it: python -m explain.reader_study serve --study {created.study_id}"
          + (f" --database '{masked(url)}'" if args.database else ""))
    print("each reader's private link (shown once; python -m explain.reader_study links issues a new one):")
    for number, token in enumerate(created.tokens, start=1):
        print(f"  reader {number}: {_link('127.0.0.1', DEFAULT_PORT, token)}")
    return 0


def _serve(engine, url: str, args) -> int:
    serve(engine, args.study, args.host, args.port)
    return 0


def _links(engine, url: str, args) -> int:
    token = reissue_token(engine, args.study, args.reader)
    print(f"reader {args.reader}: {_link(args.host, args.port, token)} (the earlier link no longer opens)")
    return 0


def _analyse(engine, url: str, args) -> int:
    analyse_study(engine, args.study, args.tracking_uri or default_tracking_uri(), args.out, log=not args.no_log)
    return 0


def _link(host: str, port: int, token: str) -> str:
    return f"http://{host}:{port}/r/{token}"


COMMANDS = {"create": _create, "serve": _serve, "links": _links, "analyse": _analyse}


if __name__ == "__main__":
    sys.exit(main())
