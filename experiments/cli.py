"""The `vfrac` console command: `vfrac SUBCOMMAND ...` runs `python -m MODULE ...` in this process.

Each subcommand's module is imported only when it runs, so `vfrac --help` and a light
subcommand never load TensorFlow.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module whose main(argv) runs it, arguments put before the user's, one line of help)
COMMANDS = {
    "synth": ("vfrac.synth.__main__", [], "write a synthetic cohort (the demo's)"),
    "import": ("vfrac.cohort.__main__", ["import"], "write a manifest for CTs segmented by TotalSegmentator or VerSe"),
    "prepare": ("vfrac.prepare", [], "check a cohort and cache its 3-slice crops"),
    "cv": ("experiments.cv", [], "cross-validate, tune and explain; the study's table (python -m experiments.cv)"),
    "review": ("explain.review", [], "the Grad-CAM review page of a CV run"),
    "report": ("experiments.report", [], "the study report of a CV run"),
    "predict": ("experiments.predict", [], "apply a registered model or a CV run's fold ensemble to new CTs"),
    "validate": ("experiments.validate", [], "validate a model on another cohort"),
    "doctor": ("experiments.doctor", [], "check an install: versions, devices, what a run would use here"),
    "reader-study": ("explain.reader_study.__main__", [], "a reader study of a CV run's maps: create, serve, analyse"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_line}" for name, (_, _, help_line) in COMMANDS.items()]
    return ("usage: vfrac SUBCOMMAND [ARGUMENTS]\n\nBenign vs malignant vertebral fractures on CT.\n\nsubcommands:\n"
            + "\n".join(lines) + "\n\n`vfrac SUBCOMMAND --help` gives a subcommand's arguments.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown subcommand {name!r}", file=sys.stderr)
        return 2
    module, before, _ = COMMANDS[name]
    return importlib.import_module(module).main([*before, *rest]) or 0


if __name__ == "__main__":
    sys.exit(main())
