"""`portfolio`'s options: counts and ports in range, their environment defaults read strictly but only by the
sub-command that takes them, and `portfolio manage` handing everything after it to Django."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from portfolio import cli, embedded


@pytest.mark.parametrize(
    "argv",
    [
        ["web", "--port", "-1"],
        ["web", "--port", "0"],
        ["web", "--port", "65536"],
        ["run", "--port", "0"],
        ["web", "--workers", "0"],
        ["worker", "--concurrency", "0"],
        ["node-agent", "--concurrency", "-2"],
        ["web", "--port", "abc"],
    ],
)
def test_a_count_or_port_out_of_range_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.build_parser().parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "is out of range" in err or "is not an integer" in err


def test_an_option_left_unset_comes_from_the_environment_and_one_given_wins(monkeypatch):
    monkeypatch.setenv("PORTFOLIO_PORT", "9001")
    monkeypatch.setenv("PORTFOLIO_WORKER_CONCURRENCY", "5")
    assert cli.parse_args(["web"]).port == 9001
    assert cli.parse_args(["web", "--port", "9002"]).port == 9002
    assert cli.parse_args(["worker"]).concurrency == 5
    monkeypatch.delenv("PORTFOLIO_PORT")
    assert cli.parse_args(["run"]).port == 8000


@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_a_bad_port_in_the_environment_is_one_line_not_a_traceback(monkeypatch, value):
    monkeypatch.setenv("PORTFOLIO_PORT", value)
    with pytest.raises(ImproperlyConfigured):
        cli.parse_args(["web"])
    with pytest.raises(SystemExit) as exit:
        cli.main(["web"])
    assert exit.value.code.startswith("portfolio: PORTFOLIO_PORT=")  # printed alone on stderr, status 1
    assert "\n" not in exit.value.code


@pytest.mark.parametrize(
    "variable, value",
    [("PORTFOLIO_VERBOSE", "maybe"), ("PORTFOLIO_ENV", "staging"), ("PORTFOLIO_ENV", "prod")],
)
def test_a_bad_setting_of_run_is_one_line_not_a_traceback(monkeypatch, tmp_path, variable, value):
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PORTFOLIO_ENV", raising=False)
    monkeypatch.setenv(variable, value)
    for server in ("postgres", "redis"):  # were one asked for, the test would fail, not start it
        monkeypatch.setattr(embedded, f"ensure_{server}", lambda root: pytest.fail("a server was started"))
    with pytest.raises(SystemExit) as exit:
        cli.main(["run"])
    assert exit.value.code.startswith(f"portfolio: {variable}={value!r} is not valid")  # on stderr, status 1
    assert "\n" not in exit.value.code
    assert not (tmp_path / "data").exists()


def test_verbose_comes_from_the_environment_only_for_run(monkeypatch):
    monkeypatch.setenv("PORTFOLIO_VERBOSE", "yes")
    assert cli.parse_args(["run"]).verbose is True
    monkeypatch.setenv("PORTFOLIO_VERBOSE", "no")
    assert cli.parse_args(["run", "--verbose"]).verbose is True
    monkeypatch.setenv("PORTFOLIO_VERBOSE", "maybe")
    assert cli.parse_args(["migrate"]).command == "migrate"


def test_sub_commands_that_take_no_port_ignore_a_bad_one(monkeypatch, capsys):
    monkeypatch.setenv("PORTFOLIO_PORT", "abc")
    monkeypatch.setenv("PORTFOLIO_WEB_WORKERS", "many")
    assert cli.parse_args(["migrate"]).command == "migrate"
    assert cli.parse_args(["worker"]).concurrency == 2
    with pytest.raises(SystemExit) as exit:
        cli.main(["migrate", "--help"])
    assert exit.value.code == 0
    assert "usage: portfolio migrate" in capsys.readouterr().out


def test_manage_help_is_djangos(capsys):
    try:
        cli.main(["manage", "--help"])
    except SystemExit as exit:
        assert exit.code in (0, None)
    out = capsys.readouterr().out
    assert "Type 'portfolio manage help <subcommand>' for help on a specific subcommand." in out
    assert "unrecognized arguments" not in out


def test_options_after_manage_are_the_management_commands(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["manage", "check", "--help"])
    assert exit.value.code == 0
    assert "usage: portfolio manage check" in capsys.readouterr().out
