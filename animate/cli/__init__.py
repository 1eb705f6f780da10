"""The ``animate`` command line.

Exit codes: 0 ok, 2 bad input (the message names the problem and its code, no traceback), 1 internal error.
Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from animate import __version__
from animate.cli import doctor as doctor_cmd
from animate.cli import guidance as guidance_cmd
from animate.cli import media as media_cmd
from animate.cli import pose as pose_cmd
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
) -> None:
    """Animate a reference photo of a person with the motion of a driving video."""


app.command("run")(run_cmd.run)
app.command("doctor")(doctor_cmd.doctor)
app.add_typer(media_cmd.app, name="media")
app.command("pose")(pose_cmd.pose)
app.command("guidance")(guidance_cmd.guidance)
app.command("serve")(serve_cmd.serve)
app.command("worker")(serve_cmd.worker)
app.add_typer(weights_cmd.app, name="weights")
app.add_typer(train_cmd.app, name="train")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code instead of exiting."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="animate", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, bad value
        show = getattr(exc, "show", None)
        show() if show else typer.echo(f"error: {exc.format_message()}", err=True)
        return EXIT_BAD_INPUT
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except AnimateError as exc:
        typer.echo(f"error: {exc.message} [{exc.code}]", err=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        if os.environ.get("ANIMATE_DEBUG"):
            traceback.print_exc()
        typer.echo(
            f"internal error: {type(exc).__name__}: {exc} (set ANIMATE_DEBUG=1 for a traceback)", err=True
        )
        return EXIT_INTERNAL
    return result if isinstance(result, int) else EXIT_OK


def main() -> None:
    sys.exit(run(sys.argv[1:]))
