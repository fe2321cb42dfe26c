"""The command line's error boundary: every fault ends as one line on stderr with its exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from anna.errors import INTERRUPTED, AnnaError, describe_os_error


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def run_cli(group: click.Group, argv: list[str] | None = None, before: Callable[[], None] | None = None) -> None:
    """Run the command group, turning faults into one line on stderr: bad input (AnnaError, a bad option) and
    filesystem faults (OSError, naming the path) exit 2, an interrupt exits 130 saying how to resume, and anything
    else is reported as a bug in one line (exit 1; ANNA_TRACEBACK=1 shows the traceback)."""
    try:
        if before is not None:
            before()
        rv = group.main(args=argv, prog_name="anna", standalone_mode=False)
    except AnnaError as e:
        _fail(str(e), 2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail(INTERRUPTED, 130)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else group.get_help(click.Context(group)))
        sys.exit(0)
    except click.ClickException as e:
        where = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) is not None else ""
        _fail(f"{e.format_message()}{where}", 2)
    except OSError as e:
        _fail(describe_os_error(e), 2)
    except MemoryError:
        _fail("out of memory: use smaller settings (fewer prompts, samples or steps, a smaller image)", 2)
    except Exception as e:
        if os.environ.get("ANNA_TRACEBACK"):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        _fail(f"internal error ({type(e).__name__}: {first}): a bug in anna; rerun with ANNA_TRACEBACK=1 and report "
              "the traceback", 1)
    if isinstance(rv, int) and rv:  # --help and --version return their exit code without standalone mode
        sys.exit(rv)
