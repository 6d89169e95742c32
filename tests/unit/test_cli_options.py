"""Global options are taken out of the command line wherever they stand."""

from __future__ import annotations

import pytest

from costproxy.cli import GlobalOptions, UsageError, build_parser, split_global_options


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
