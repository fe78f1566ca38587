"""Flags checked before any work: the uncertain flag's margin under its new name and its old one, and
--no-log, which keeps nothing without --out."""

import argparse

import pytest

from experiments import predict, report, validate
from experiments.model_flags import add_rule_arguments, uncertainty_rule
from explain import review


def rule_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p")
    add_rule_arguments(parser)
    return parser


def test_the_uncertainty_margin_has_its_own_name_and_the_old_one_still_works_with_a_warning(capsys):
    parser = rule_parser()
    assert parser.parse_args([]).margin == 0.10
    assert parser.parse_args(["--uncertainty-margin", "0.2"]).margin == 0.2
    assert capsys.readouterr().err == ""
    args = parser.parse_args(["--margin", "0.3", "--max-spread", "0.2"])
    assert (args.margin, args.max_spread) == (0.3, 0.2)
    assert uncertainty_rule(args, parser).margin == 0.3
    assert "--margin is deprecated here; use --uncertainty-margin" in capsys.readouterr().err
    shown = parser.format_help()
    assert "--uncertainty-margin" in shown and "--margin " not in shown


@pytest.mark.parametrize("command, inputs", [(predict, ["--ct", "c", "--roi", "r"]), (validate, ["--cohort", "m.csv"])])
def test_both_commands_take_the_margin_and_refuse_one_outside_the_rule(command, inputs, capsys):
    assert command.parse_args(["--model", "models:/m/1", *inputs, "--uncertainty-margin", "0.2"]).rule.margin == 0.2
    with pytest.raises(SystemExit):
        command.parse_args(["--model", "models:/m/1", *inputs, "--uncertainty-margin", "0.7"])
    assert "margin must be in" in capsys.readouterr().err


@pytest.mark.parametrize("command", [review, report])
def test_no_log_without_out_is_refused_since_nothing_would_be_kept(command, capsys):
    with pytest.raises(SystemExit):
        command.parse_args(["--run-id", "r", "--no-log"])
    assert "--no-log needs --out" in capsys.readouterr().err
    assert command.parse_args(["--run-id", "r", "--no-log", "--out", "x"]).no_log


def test_predict_reads_from_a_pacs_only_with_a_study_and_sends_only_objects_filed_with_it(capsys):
    model = ["--model", "models:/m/1"]
    pacs = [*model, "--dicomweb", "https://pacs.example.org/dicom-web", "--study", "1.2.3", "--roi", "r"]
    assert predict.parse_args([*pacs, "--dicom-output", "study", "--send"]).dicom
    assert predict.parse_args([*model, "--ct", "c", "--roi", "r", "--dicom"]).dicom_output == "pseudonymous"
    for argv, message in [([*pacs, "--dicom", "--send"], "pseudonymous objects do not belong"),
                          ([*model, "--ct", "c", "--roi", "r", "--dicom-output", "study", "--send"],
                           "needs --dicomweb"),
                          ([*model, "--dicomweb", "https://pacs/dicom-web", "--roi", "r"], "needs --study"),
                          ([*model, "--ct", "c", "--roi", "r", "--series", "1.2"], "go(es) with --dicomweb"),
                          ([*pacs[:-2], "--seg-series", "1.2.x"], "is not a DICOM UID"),
                          ([*model, "--ct", "c", "--dicomweb", "https://p/d", "--study", "1.2", "--roi", "r"],
                           "not allowed with")]:
        with pytest.raises(SystemExit):
            predict.parse_args(argv)
        assert message in capsys.readouterr().err, argv
