"""The flags that choose a model and its uncertain flag, shared by experiments.predict and experiments.validate.

Light on purpose: a command's --help and its spawned workers import this, not the loading code.
"""

from __future__ import annotations

import argparse
import sys

from vfrac.stats.ensemble import UncertaintyRule


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model or --ensemble, one of them required (predict and validate)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model",
                       help="models:/NAME/VERSION (the --final model), models:/NAME@ALIAS, or runs:/RUN_ID/model "
                            "(a fold's model)")
    which.add_argument("--ensemble", metavar="CV_RUN_ID",
                       help="the k fold models of this CV run as one ensemble: mean probability, their spread, "
                            "and Grad-CAM maps averaged over them")


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """The uncertain flag's --uncertainty-margin and --max-spread (vfrac.stats.ensemble.UncertaintyRule).

    `--margin` was this flag's first name; it still works, with a warning, because cv and prepare use
    `--margin` for the crop's margin.
    """
    parser.add_argument("--uncertainty-margin", dest="margin", type=float, default=UncertaintyRule.margin,
                        help="uncertain when the probability lies closer than this to the threshold "
                             "(default: %(default)s)")
    parser.add_argument("--margin", dest="margin", type=float, action=RenamedFlag, help=argparse.SUPPRESS)
    parser.add_argument("--max-spread", type=float, default=UncertaintyRule.max_spread,
                        help="with --ensemble, uncertain when the fold models' probabilities have a larger SD "
                             "(default: %(default)s)")


class RenamedFlag(argparse.Action):
    """A flag's former spelling: sets the same value and says the new one."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated here; use --uncertainty-margin ({option_string} is the "
              "crop's margin in cv and prepare)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def uncertainty_rule(args, parser: argparse.ArgumentParser):
    """The rule the flags give, or the parser's error (exit 2) for values it refuses."""

    try:
        return UncertaintyRule(args.margin, args.max_spread)
    except ValueError as error:
        parser.error(str(error))
