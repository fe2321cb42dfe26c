"""Every case of issue 14 ends in one line `error: ...` with exit code 2 (an interrupt: 130), and no traceback; the
checks run before any expensive stage starts."""

from __future__ import annotations

import codecs
import json
import os
import time
from pathlib import Path

import pytest
from cli_helpers import TINY_CALIBRATE, assert_one_line_error, invoke

# Prompt files that are not clean text


def test_binary_prompt_file(tmp_path):
    p = tmp_path / "garbage.txt"
    p.write_bytes(bytes(range(256)) * 4)
    r = invoke(["generate", "--model", "sdxl", "--prompts", p, "--out", tmp_path / "o"])
    assert_one_line_error(r, "garbage.txt is not UTF-8 text (byte 0x80 at offset 128)", "save it as UTF-8")


def test_binary_prompt_file_with_nul_bytes_only(tmp_path):
    p = tmp_path / "zeros.txt"
    p.write_bytes(b"a cat\x00\x00\x00\n")
    r = invoke(["calibrate", "--model", "tiny-sdxl", "--prompts", p, "--run", tmp_path / "r"])
    assert_one_line_error(r, "zeros.txt is binary (it holds NUL characters)")
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_utf16_prompt_file_with_bom_is_decoded(tmp_path):
    p = tmp_path / "u16.txt"
    p.write_bytes(codecs.BOM_UTF16_LE + "a café\nune crêpe\n".encode("utf-16-le"))
    # the prompts are read; the meta-device sdxl then says it cannot generate: the error comes after the reading
    r = invoke(["generate", "--model", "sdxl", "--prompts", p, "--out", tmp_path / "o"])
    assert_one_line_error(r, "has no weights")


def test_tsv_field_over_the_size_limit(tmp_path):
    p = tmp_path / "big.tsv"
    p.write_text("id\tcaption\n1\t" + "x" * (2**20 + 10) + "\n")
    r = invoke(["generate", "--model", "sdxl", "--prompts", p, "--out", tmp_path / "o"])
    assert_one_line_error(r, "big.tsv is not a readable TSV (line", "field larger than field limit",
                          "fields are at most 1,048,576 characters")


@pytest.mark.parametrize("spec", ["hf:foo:abc", "hf:", "hf:foo:0", "hf:a b"])
def test_malformed_hf_spec(spec, tmp_path):
    r = invoke(["calibrate", "--model", "tiny-sdxl", "--prompts", spec, "--run", tmp_path / "r"])
    assert_one_line_error(r, f"bad prompt source '{spec}': use hf:DATASET or hf:DATASET:N")


def test_folder_as_prompts(tmp_path):
    r = invoke(["generate", "--model", "sdxl", "--prompts", tmp_path, "--out", tmp_path / "o"])
    assert_one_line_error(r, f"prompt file {tmp_path} is a folder, not a file")


def test_file_as_model(tmp_path, prompt_file):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\x00" * 16)
    r = invoke(["generate", "--model", f, "--prompts", prompt_file, "--out", tmp_path / "o"])
    line = assert_one_line_error(r, f"--model {f} is a file, not a folder")
    assert "is a folder but" not in line


# Sweeps and bounds


@pytest.mark.parametrize("sizes, message", [
    ("0.5.1:0.6:0.01", "--sizes must read START:STOP:STEP"),
    ("a:b:c", "--sizes must read START:STOP:STEP"),
    ("0.5:1.5:0.00001", "asks for 100,001 budgets; a sweep has at most 1,000"),
])
def test_bad_sweeps_refused_by_search(sizes, message, tmp_path):
    r = invoke(["search", "--run", tmp_path / "r", "--sizes", sizes])
    assert_one_line_error(r, message)


def test_run_with_bad_sizes_fails_before_calibrating(tmp_path):
    t0 = time.perf_counter()
    r = invoke(["run", "--run", tmp_path / "r", "--sizes", "a:b:c"])
    assert_one_line_error(r, "--sizes must read START:STOP:STEP", "(got 'a:b:c')")
    assert not (tmp_path / "r" / "calibration").exists() and time.perf_counter() - t0 < 10


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--model", "tiny-sdxl", "--prompts", "{p}", "--run", "{t}/r", "--steps", "879518778313"],
     "Invalid value for '--steps': 879518778313 is not in the range 1<=x<=1000"),
    (["generate", "--model", "tiny-sdxl", "--prompts", "{p}", "--out", "{t}/o", "--height", "100000"],
     "Invalid value for '--height'"),
    (["generate", "--model", "tiny-sdxl", "--prompts", "{p}", "--out", "{t}/o", "--width", "36"],
     "Invalid value for '--width': 36 is not a multiple of 8"),
    (["evaluate", "--model", "tiny-sdxl", "--prompts", "{p}", "--out", "{t}/o", "--steps", "879518778313"],
     "--steps value 879518778313 is out of range: use 1 to 1000"),
    (["run", "--run", "{t}/r", "--steps", "1,879518778313"], "--steps value 879518778313 is out of range"),
    (["calibrate", "--model", "tiny-sdxl", "--prompts", "{p}", "--run", "{t}/r", "--guidance", "nan"],
     "'nan' is not a finite number"),
    (["search", "--run", "{t}/r", "--size", "inf"], "'inf' is not a finite number"),
    (["calibrate", "--model", "tiny-sdxl", "--prompts", "{p}", "--run", "{t}/r", "--cache-samples", "-1"],
     "Invalid value for '--cache-samples'"),
    (["analyze", "--run", "{t}/r", "--validate", "10000000000"], "Invalid value for '--validate'"),
    (["calibrate", "--model", "tiny-sdxl", "--prompts", "{p}", "--run", "{t}/r", "--cache-steps", "0,-5"],
     "--cache-steps value -5 is out of range: use 0 to 999"),
    (["calibrate", "--model", "tiny-sdxl", "--prompts", "{p}", "--run", "{t}/r", "--nope"], "No such option '--nope'"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_bounded_options(argv, message, tmp_path, prompt_file):
    r = invoke([a.replace("{p}", str(prompt_file)).replace("{t}", str(tmp_path)) for a in argv])
    line = assert_one_line_error(r, message)
    assert "--help" in line or "out of range" in line  # click's errors say where to look
    assert not (tmp_path / "r").exists()


# Output folders: checked before any work


def test_run_folder_that_is_a_file(tmp_path, prompt_file):
    f = tmp_path / "afile"
    f.write_text("x")
    r = invoke(["calibrate", "--model", "tiny-sdxl", "--prompts", prompt_file, "--run", f])
    assert_one_line_error(r, "--run", str(f), "is a file")
    r = invoke(["run", "--prompts", prompt_file, "--calib", "1", "--test", "1", "--run", f])
    assert_one_line_error(r, f"--run {f} is a file, not a folder")
    assert f.read_text() == "x"


def test_missing_parent_folders_are_made(tmp_path, prompt_file):
    from anna.checks import writable_folder

    assert writable_folder(tmp_path / "a" / "b" / "c").is_dir()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    r = invoke(["calibrate", "--model", "tiny-sdxl", "--prompts", prompt_file, "--run", loop / "sub"])
    assert_one_line_error(r, f"--run {loop / 'sub'} cannot be written", "symbolic link loop")


def test_run_folder_below_a_file(tmp_path, prompt_file):
    f = tmp_path / "afile"
    f.write_text("x")
    r = invoke(["calibrate", "--model", "tiny-sdxl", "--prompts", prompt_file, "--run", f / "sub"])
    assert_one_line_error(r, f"--run {f / 'sub'}", "is a file, not a folder")


def test_symlink_loop_as_run_folder(tmp_path, prompt_file):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    t0 = time.perf_counter()
    r = invoke(["run", "--run", a, "--prompts", prompt_file, "--calib", "1", "--test", "1"])
    assert_one_line_error(r, f"--run {a} cannot be written", "symbolic link loop")
    assert time.perf_counter() - t0 < 10  # before calibrating


def _fail_writes_under(monkeypatch, folder: Path, err: int) -> None:
    """Every os.open for writing under `folder` fails with `err` (a read-only file system, without root's bypass)."""
    real = os.open

    def fake(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)


@pytest.mark.parametrize("errno_, advice", [(30, "read-only"), (13, "permission denied"), (28, "the disk is full")])
def test_unwritable_run_folder_found_before_calibrating(monkeypatch, tmp_path, prompt_file, errno_, advice):
    import anna.adapters

    run = tmp_path / "ro"
    _fail_writes_under(monkeypatch, run, errno_)
    monkeypatch.setattr(anna.adapters, "load_model", lambda spec: pytest.fail("the model was loaded"))
    r = invoke(["calibrate", "--model", "tiny-sdxl", "--prompts", prompt_file, "--run", run])
    assert_one_line_error(r, f"--run {run} cannot be written", advice)


def test_read_only_folder_during_search_names_the_path(monkeypatch, tiny_run):
    """A fault after the up-front check (the disk turned read-only) is one line naming the file, at the boundary."""
    import anna.checks

    monkeypatch.setattr(anna.checks, "writable_folder", lambda path, option="--run", create=True: Path(path))
    _fail_writes_under(monkeypatch, tiny_run / "plans", 30)
    before = (tiny_run / "plans" / "size-0.990.json").read_bytes()
    # a new budget: the finished 0.99 plan is up to date and is not rewritten
    r = invoke(["search", "--run", tiny_run, "--size", "0.98", "--no-baselines", "--polish", "0", "-q"])
    line = assert_one_line_error(r, f"{tiny_run / 'plans'}/.size-0.980.json.", "the file system is read-only")
    assert line.endswith("give a writable folder")
    assert (tiny_run / "plans" / "size-0.990.json").read_bytes() == before
    assert not [p for p in (tiny_run / "plans").iterdir() if p.name.endswith(".tmp")]


def test_generate_into_read_only_folder(monkeypatch, tmp_path, prompt_file):
    out = tmp_path / "imgs"
    _fail_writes_under(monkeypatch, out, 30)
    r = invoke(["generate", "--model", "tiny-sdxl", "--prompts", prompt_file, "--out", out])
    assert_one_line_error(r, f"--out {out} cannot be written", "read-only")


# Ctrl-C


@pytest.mark.parametrize("argv, target", [
    (["calibrate", "--model", "tiny-sdxl", "--prompts", "{p}", "--run", "{t}/r"], "anna.calibrate.calibrate"),
    (["analyze", "--run", "{t}/r"], "anna.analyze.stage.analyze"),
    (["run", "--run", "{t}/r", "--prompts", "{p}", "--calib", "1", "--test", "1"], "anna.run.run_all"),
    (["inspect", "--model", "sdxl"], "anna.adapters.load_model"),
])
def test_interrupt_says_how_to_resume(argv, target, monkeypatch, tmp_path, prompt_file):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    r = invoke([a.replace("{p}", str(prompt_file)).replace("{t}", str(tmp_path)) for a in argv])
    line = assert_one_line_error(r, code=130)
    assert line == "error: interrupted; rerun the same command to resume"


@pytest.mark.slow
def test_real_sigint_during_calibrate(tmp_path, prompt_file):
    """SIGINT to a real `anna calibrate` once it has started (its run folder exists): one line, exit 130."""
    import signal
    import subprocess
    import sys

    run = tmp_path / "r"
    argv = ["calibrate", *TINY_CALIBRATE, "--prompts", str(prompt_file), "--run", str(run)]
    argv[argv.index("--steps") + 1] = "500"  # long enough to be interrupted on any machine
    proc = subprocess.Popen([sys.executable, "-c", "from anna.cli import main; main()", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 120
    while not run.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted; rerun the same command to resume"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


# Plans of the wrong shape (export reads them)


@pytest.mark.parametrize("plan, message", [
    ({"units": {"mid_block.resnets.0.conv1": ["fp8-moderate"]}},
     "unit 'mid_block.resnets.0.conv1' must name one option (a string such as \"fp8-moderate\"), not a list"),
    ({}, "is empty: it names no units and no default option; write {\"default\": \"fp16\"}"),
    ({"default": "fp8-moderate", "bag": "notalist"}, "'bag' must be a list of option names"),
    ({"default": "fp8-moderate", "budget": "abc"}, "'budget' must be a number or null, not 'abc'"),
    ({"default": "fp8-moderate", "notes": json.loads("[" * 40 + "]" * 40)}, "nests lists and objects more than 16"),
    ({"default": ["fp16"]}, "'default' must be a string, not list"),
    ({"units": "fp16"}, "'units' must map unit names to option names, not be a str"),
])
def test_plans_of_the_wrong_shape(plan, message, tiny_run):
    p = tiny_run / "bad.json"
    p.write_text(json.dumps(plan))
    r = invoke(["export", "--run", tiny_run, "--plan", p, "--out", tiny_run / "ck"])
    assert_one_line_error(r, f"plan {p}", message)
    assert not (tiny_run / "ck" / "model.safetensors").exists()


def test_plan_nested_past_the_json_parser(tiny_run):
    p = tiny_run / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    r = invoke(["export", "--run", tiny_run, "--plan", p, "--out", tiny_run / "ck"])
    assert_one_line_error(r, f"plan {p} nests lists and objects too deeply")


# Checkpoints


def _export(run: Path, out: Path) -> None:
    r = invoke(["export", "--run", run, "--plan", "plans/size-0.990.json", "--out", out])
    assert r.code == 0, r.err


def test_plan_edited_to_another_option_of_the_same_storage(tiny_run, prompt_file):
    ck = tiny_run / "ck"
    _export(tiny_run, ck)
    obj = json.loads((ck / "plan.json").read_text())
    unit, option = next((u, o) for u, o in obj["units"].items() if o.startswith("fp8-"))
    other = "fp8-moderate" if option != "fp8-moderate" else "fp8-absmax"
    obj["units"][unit] = other
    (ck / "plan.json").write_text(json.dumps(obj))
    r = invoke(["generate", "--model", "tiny-sdxl", "--checkpoint", ck, "--prompts", prompt_file,
                "--out", tiny_run / "imgs", "--steps", "1"])
    assert_one_line_error(r, f"plan.json says unit '{unit}' is {other}, but model.safetensors holds it as {option}")
    assert not (tiny_run / "imgs").exists()


def test_evaluate_finds_a_truncated_checkpoint_before_generating(tiny_run, prompt_file, monkeypatch):
    import anna.evaluate.evaluate as ev

    ck = tiny_run / "ck"
    _export(tiny_run, ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ev, "generate_images", lambda *a, **k: pytest.fail("originals were generated"))
    r = invoke(["evaluate", "--model", "tiny-sdxl", "--checkpoint", ck, "--prompts", prompt_file,
                "--out", tiny_run / "eval", "--metrics", "mse", "--steps", "1"])
    assert_one_line_error(r, f"checkpoint tensors {ck / 'model.safetensors'} are corrupt or truncated")
    assert not (tiny_run / "eval").exists()


# The boundary itself


def test_a_bug_is_one_line_with_exit_1_unless_asked_for_the_traceback(monkeypatch):
    import anna.adapters

    def broken(spec):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(anna.adapters, "load_model", broken)
    r = invoke(["inspect", "--model", "sdxl"])
    assert_one_line_error(r, "internal error (ZeroDivisionError: division by zero): a bug in anna; rerun with "
                             "ANNA_TRACEBACK=1", code=1)
    monkeypatch.setenv("ANNA_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        invoke(["inspect", "--model", "sdxl"])


@pytest.mark.parametrize("err, expected", [
    (OSError(28, "No space left on device", "/r/x.json"), "/r/x.json: the disk is full: free some space, then rerun"),
    (OSError(30, "Read-only file system", "/r"), "/r: the file system is read-only: give a writable folder"),
    (OSError(40, "Too many levels of symbolic links", "/a"), "/a: a symbolic link loop"),
    (OSError(13, "Permission denied", "/p"), "/p: permission denied"),
    (OSError(5, "Input/output error"), "an input/output error: check the disk"),
    (OSError(999, "Strange"), "Strange"),
])
def test_filesystem_faults_are_one_line_naming_the_path(monkeypatch, err, expected):
    import anna.adapters

    def fail(spec):
        raise err

    monkeypatch.setattr(anna.adapters, "load_model", fail)
    r = invoke(["inspect", "--model", "sdxl"])
    assert assert_one_line_error(r, expected).startswith(f"error: {expected}")


def test_help_and_version_exit_0():
    for argv in (["--help"], [], ["calibrate", "--help"], ["--version"]):
        r = invoke(argv)
        assert r.code == 0 and "Traceback" not in r.err and r.out
