"""The ``animate`` command line.

Exit codes: 0 ok, 2 bad input (the message names the problem and its code, no traceback), 1 internal error.
Every error reads ``error: <message> [<code>]`` on stderr; with ``--json`` it is ``{"error": {"code",
"message"}}`` on stdout instead. Only our lines are printed: third-party libraries' chatter is silenced
(``animate.cli.quiet``) unless ``ANIMATE_DEBUG=1`` or ``-v/--verbose``.
Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import typer
from typer._click import exceptions as usage  # typer (pinned) vendors click: its usage errors

from animate import __version__
from animate.cli import doctor as doctor_cmd
from animate.cli import guidance as guidance_cmd
from animate.cli import media as media_cmd
from animate.cli import plan as plan_cmd
from animate.cli import pose as pose_cmd
from animate.cli import quiet
from animate.cli import run as run_cmd
from animate.cli import serve as serve_cmd
from animate.cli import train as train_cmd
from animate.cli import weights as weights_cmd
from animate.errors import AnimateError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    name="animate",
    help="Animate a reference photo of a person with the motion of a driving video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"animate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(
        False,
        "-v",
        "--verbose",
        help="Also show third-party libraries' messages (as ANIMATE_DEBUG=1); allowed anywhere on the line.",
    ),
) -> None:
    """Animate a reference photo of a person with the motion of a driving video."""


app.command("run")(run_cmd.run)
app.command("plan")(plan_cmd.plan)
app.command("doctor")(doctor_cmd.doctor)
app.add_typer(media_cmd.app, name="media")
app.command("pose")(pose_cmd.pose)
app.command("guidance")(guidance_cmd.guidance)
app.command("serve")(serve_cmd.serve)
app.command("worker")(serve_cmd.worker)
app.add_typer(weights_cmd.app, name="weights")
app.add_typer(train_cmd.app, name="train")


def _wants_json(argv: list[str]) -> bool:
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def _usage_code(exc: usage.ClickException) -> str:
    if isinstance(exc, usage.MissingParameter):
        return "missing_argument"
    if isinstance(exc, usage.BadParameter):
        return "invalid_option"
    if isinstance(exc, usage.NoSuchOption):
        return "unknown_option"
    return "usage_error"


def _fail(code: str, message: str, as_json: bool, hint: str | None = None) -> None:
    """Our error: ``error: message [code]`` on stderr, or the JSON error object on stdout with ``--json``."""
    if as_json:
        typer.echo(json.dumps({"error": {"code": code, "message": message}}, indent=2))
        return
    typer.echo(f"error: {message} [{code}]", err=True)
    if hint:
        typer.echo(hint, err=True)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code instead of exiting."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(argv)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="animate", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except usage.NoArgsIsHelpError as exc:  # `animate`, `animate weights`: the help text
        exc.show()
        return EXIT_BAD_INPUT
    except usage.ClickException as exc:  # usage errors: unknown option, missing argument, bad value
        context = getattr(exc, "ctx", None)
        hint = f"Try '{context.command_path} --help' for help." if context is not None else None
        _fail(_usage_code(exc), exc.format_message().rstrip("."), as_json, hint)
        return EXIT_BAD_INPUT
    except typer.TyperException as exc:  # anything else the parser raises
        _fail("usage_error", str(exc), as_json)
        return EXIT_BAD_INPUT
    except typer.Abort:
        _fail("aborted", "aborted", as_json)
        return 130
    except AnimateError as exc:
        _fail(exc.code, exc.message, as_json)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _fail("interrupted", "interrupted", as_json)
        return 130
    except Exception as exc:
        if os.environ.get("ANIMATE_DEBUG"):
            traceback.print_exc()
        hint = "" if os.environ.get("ANIMATE_DEBUG") else " (set ANIMATE_DEBUG=1 for a traceback)"
        _fail("internal_error", f"internal error: {type(exc).__name__}: {exc}{hint}", as_json)
        return EXIT_INTERNAL
    return result if isinstance(result, int) else EXIT_OK


def main() -> None:
    """The console script: third-party chatter off (unless -v/--verbose or ANIMATE_DEBUG=1), then ``run``."""
    argv = sys.argv[1:]
    if quiet.debug_requested(argv):
        os.environ["ANIMATE_DEBUG"] = "1"  # tracebacks on internal errors; workers we start inherit it
        cut = argv.index("--") if "--" in argv else len(argv)
        argv = [a for a in argv[:cut] if a not in ("-v", "--verbose")] + argv[cut:]
    quiet.install(argv)
    try:
        code = run(argv)
    finally:
        quiet.uninstall()
    sys.exit(code)
