"""The CLI driven in process: `invoke(argv)` gives (exit code, stdout, stderr); `assert_one_line_error` checks the
one-line contract."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from anna.cli import main

TINY_CALIBRATE = ["--model", "tiny-sdxl", "--steps", "1", "--height", "64", "--width", "64", "--cache-samples", "1",
                  "--include", "mid_block.resnets.*", "-q"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def invoke(argv: list[str]) -> Result:
    """Run `anna ARGV` in process. An exception escaping `main` (a traceback) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(r: Result, *fragments: str, code: int = 2) -> str:
    """Exit `code`, stderr exactly one line `error: ...` holding every fragment, and no traceback anywhere."""
    assert "Traceback" not in r.out + r.err, r.err
    assert r.code == code, (r.code, r.err)
    assert len(r.error_lines) == 1, r.err
    line = r.error_lines[0]
    assert line.startswith("error: "), line
    for f in fragments:
        assert f in line, (f, line)
    return line
