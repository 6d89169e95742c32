"""Global options are taken out of the command line wherever they stand."""

from __future__ import annotations

from pathlib import Path

import pytest

from costproxy.cli import GlobalOptions, UsageError, build_parser, main, split_global_options


@pytest.mark.parametrize("argv", [
    ["--config", "c.yaml", "check-config"],
    ["check-config", "--config", "c.yaml"],
    ["check-config", "--config=c.yaml"],
    ["--config", "old.yaml", "check-config", "--config", "c.yaml"],  # the last one wins
])
def test_config_before_or_after_the_sub_command(argv: list[str]) -> None:
    assert split_global_options(argv) == (GlobalOptions(config="c.yaml"), ["check-config"])


def test_options_of_sub_commands_stay_where_they_are() -> None:
    options, rest = split_global_options(["keys", "create", "--user", "ann", "--log-level", "debug", "--config",
                                          "c.yaml", "--team", "t"])
    assert options == GlobalOptions(config="c.yaml", log_level="debug")
    assert rest == ["keys", "create", "--user", "ann", "--team", "t"]
    args = build_parser().parse_args(rest)
    assert (args.user, args.team, args.func.__name__) == ("ann", "t", "cmd_keys")


def test_nothing_after_a_double_dash_is_taken() -> None:
    options, rest = split_global_options(["explain", "--", "--config", "x"])
    assert options == GlobalOptions() and rest == ["explain", "--", "--config", "x"]


def test_version_anywhere() -> None:
    assert split_global_options(["serve", "--version"]) == (GlobalOptions(version=True), ["serve"])


@pytest.mark.parametrize(("argv", "message"), [
    (["check-config", "--config"], "--config needs a value"),
    (["check-config", "--config="], "--config needs a value"),
    (["--config", "--log-level", "info", "serve"], "--config needs a value"),
    (["--log-level", "loud", "serve"], "--log-level must be one of debug, info, warning, error (got 'loud')"),
])
def test_bad_global_options(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split_global_options(argv)


def test_init_and_serve_arguments() -> None:
    init = build_parser().parse_args(["init", "--force", "site"])
    assert (init.directory, init.force) == ("site", True)
    assert build_parser().parse_args(["init"]).directory == "."
    serve = build_parser().parse_args(["serve", "--port", "0", "--host", "::1"])
    assert (serve.port, serve.host) == (0, "::1")


# --- bad arguments: one line on stderr, exit 2 (argparse's); a failure exit 1; never a traceback ---------


@pytest.mark.parametrize(("argv", "message"), [
    (["usage", "--hours", "nan"], "argument --hours: must be a number of hours above 0"),
    (["usage", "--hours", "-5"], "argument --hours: must be a number of hours above 0"),
    (["usage", "--hours", "1e300"], "argument --hours: must be a number of hours above 0"),
    (["usage", "--limit", "99999999999999999999"], "argument --limit: must be an integer from 0 to 1000"),
    (["usage", "--limit", "-1"], "argument --limit: must be an integer from 0 to 1000"),
])
def test_bad_numbers_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err, err
    usage = build_parser().parse_args(["usage", "--hours", "0.5", "--limit", "0"])
    assert (usage.hours, usage.limit) == (0.5, 0)


def test_a_value_the_command_refuses_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COSTPROXY_CONFIG", raising=False)
    monkeypatch.setenv("COSTPROXY_STORE_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    assert main(["keys", "create", "--user", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("costproxy: error: 'user' must be a non-empty string") and err.count("\n") == 1, err
    assert main(["keys", "create", "--user", "alice"]) == 0


@pytest.mark.parametrize("directory", ["/proc/nope", "/proc/nope/deeper"])
def test_init_into_a_directory_it_cannot_make_is_exit_1(directory: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", directory]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write into {directory}: ") and "Traceback" not in err, err


def test_a_directory_a_command_cannot_make_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-encodings", "/proc/nope"]) == 1
    err = capsys.readouterr().err
    assert err == "error: No such file or directory: /proc/nope\n", err
