"""Fuzz: hypothesis drives every subcommand with random flags and values and asserts that no call ends in a
traceback: exit 0 (help, or work done) or one line `error: ...` with exit 2.

The option names come from each subcommand's own `--help`; their values from the option's click type (its bounds,
just inside and outside) and from a pool of hostile strings and paths (binary and UTF-16 prompt files, folders, files,
a symbolic link loop, malformed sweeps and `hf:` specs). Models are never `tiny-sdxl`, so no call starts real work.
A second, smaller fuzz does real work: tiny-sdxl generations with small random sizes (multiples of 8 or not), steps,
guidance and seeds. 200 examples in all, derandomized; the counts are printed at the end (`-s`).
"""

from __future__ import annotations

import codecs
import itertools
import re
from pathlib import Path

import click
import pytest
from cli_helpers import invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anna.cli import cli

EXAMPLES = 180  # plus WORK_EXAMPLES real generations: 200 in all
WORK_EXAMPLES = 20
COUNTS = {"examples": 0, "tracebacks": 0, "exit_0": 0, "exit_2": 0, "exit_130": 0, "generated": 0}
STRINGS = ["", " ", "x", "-1", "0", "1", "nan", "inf", "-inf", "1e309", "879518778313", "0.5.1:0.6:0.01", "a:b:c",
           "0.50:0.60:0.01", "0:1.5:0.00001", "hf:foo:abc", "hf:", "1,2", "1,879518778313", "0", "mse,clip", "fid,xyz",
           "éè\u202e", "fp8-moderate,fp7", "fp16", "unet", "vae", "text_encoder_2", "all", "0,5,x", "-h"]
MODELS = ["sdxl", "no-such-model", "owner/name", "{folder}", "{text}", "{missing}", "{loop}"]
PATHS = ["{missing}", "{folder}", "{text}", "{binary}", "{utf16}", "{tsv}", "{tsv}:1-2", "{tsv}:5-1", "{loop}",
         "{text}/below", "{plan}", "{fresh}"]


def _help_options(name: str) -> list[str]:
    """The long option names that `anna NAME --help` lists."""
    r = invoke([name, "--help"])
    assert r.code == 0 and "Traceback" not in r.out + r.err
    return sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", r.out)) - {"--help"})


HELP = {name: _help_options(name) for name in sorted(cli.commands)}
PARAMS = {name: {o: p for p in cmd.params for o in p.opts} for name, cmd in cli.commands.items()}


def _bounds(t: click.ParamType) -> list:
    lo, hi = getattr(t, "min", None), getattr(t, "max", None)
    out = []
    for b in (lo, hi):
        if b is not None:
            out += [b, b - 1, b + 1] if isinstance(b, int) else [b, b - 1e-3, b + 1e-3]
    return out


def _values(command: str, option: str) -> st.SearchStrategy:
    param = PARAMS[command].get(option)
    if option == "--model":
        return st.sampled_from(MODELS)
    strings = st.sampled_from(STRINGS + PATHS)
    if param is None:
        return strings
    t = param.type
    if isinstance(t, click.types.IntParamType):
        return st.one_of(st.sampled_from(_bounds(t) or [0]), st.integers(-(2**70), 2**70), strings).map(str)
    if isinstance(t, click.types.FloatParamType):
        return st.one_of(st.sampled_from(_bounds(t) or [0.0]), st.floats(), strings).map(str)
    if isinstance(t, click.Path) or option in ("--prompts", "--plan", "--checkpoint", "--fid-weights"):
        return st.one_of(st.sampled_from(PATHS), strings)
    return strings


@st.composite
def argvs(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(HELP)))
    options = HELP[command]
    required = [o for o in options if getattr(PARAMS[command].get(o), "required", False)]
    chosen = [o for o in required if draw(st.booleans()) or draw(st.booleans())]
    chosen += draw(st.lists(st.sampled_from(options), max_size=5))
    if command == "run" and "--model" not in chosen:
        chosen.append("--model")  # the default, tiny-sdxl, would run every stage
    argv = [command]
    for o in draw(st.permutations(chosen)):
        param = PARAMS[command].get(o)
        argv.append(o)
        if param is None or not getattr(param, "is_flag", False):
            argv.append(draw(_values(command, o)))
    return argv


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "folder").mkdir()
    (root / "p.txt").write_text("a cat\n")
    (root / "bin.txt").write_bytes(bytes(range(256)))
    (root / "u16.txt").write_bytes(codecs.BOM_UTF16_LE + "a cat\n".encode("utf-16-le"))
    (root / "c.tsv").write_text("id\tcaption\n1\ta dog\n2\ta cat\n")
    (root / "plan.json").write_text('{"units": {"conv_in": ["fp16"]}, "budget": "abc"}')
    (root / "loop").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # relative paths that the fuzz invents land in the temporary folder
        yield {"{missing}": root / "missing", "{folder}": root / "folder", "{text}": root / "p.txt",
               "{binary}": root / "bin.txt", "{utf16}": root / "u16.txt", "{tsv}": root / "c.tsv",
               "{plan}": root / "plan.json", "{loop}": root / "loop", "{fresh}": root / "fresh"}
    print(f"\nfuzz: {COUNTS['examples']} examples, {COUNTS['tracebacks']} tracebacks; exit codes: "
          f"0: {COUNTS['exit_0']}, 2: {COUNTS['exit_2']}, 130: {COUNTS['exit_130']}; real generations: "
          f"{COUNTS['generated']} of {WORK_EXAMPLES}")


FRESH = itertools.count()


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(argv=argvs())
def test_no_call_ends_in_a_traceback(places, argv):
    fresh = str(places["{fresh}"] / str(next(FRESH)))
    concrete = []
    for a in argv:
        for key, path in places.items():
            a = a.replace(key, fresh if key == "{fresh}" else str(path))
        concrete.append(a)
    _check(concrete)


def _check(concrete: list[str]) -> int:
    COUNTS["examples"] += 1
    try:
        r = invoke(concrete)
    except BaseException:
        COUNTS["tracebacks"] += 1
        raise
    if "Traceback" in r.out + r.err or r.code not in (0, 2, 130):
        COUNTS["tracebacks"] += 1
    assert "Traceback" not in r.out + r.err, (concrete, r.err)
    assert r.code in (0, 2, 130), (concrete, r.code, r.err)
    COUNTS[f"exit_{r.code}"] += 1
    if r.code:
        errors = [line for line in r.err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and r.err.strip().splitlines()[-1] == errors[0], (concrete, r.err)
    return r.code


@settings(max_examples=WORK_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(side=st.tuples(*[st.one_of(*[st.sampled_from([8, 16, 24, 32, 64])] * 9, st.integers(-8, 80))] * 2),
       steps=st.sampled_from([1, 1, 2, 3, 0]), guidance=st.one_of(*[st.floats(0, 20)] * 4, st.floats()),
       seed=st.one_of(st.integers(0, 2**63), st.integers(0, 2**63), st.integers(-5, 2**64)))
def test_small_real_generations_never_end_in_a_traceback(places, side, steps, guidance, seed):
    out = str(places["{fresh}"] / f"gen-{next(FRESH)}")
    code = _check(["generate", "--model", "tiny-sdxl", "--prompts", str(places["{text}"]), "--out", out, "--height",
            str(side[0]), "--width", str(side[1]), "--steps", str(steps), "--guidance", str(guidance), "--seed",
            str(seed)])
    if code == 0:
        COUNTS["generated"] += 1
        assert len(list(Path(out).glob("*.png"))) == 1
