"""The CLI end to end, in process: outputs, determinism, and one-line errors with exit code 2."""

import json

import pytest

from anna.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def run_ok(argv, capsys):
    main(argv)
    return capsys.readouterr().out


def test_inspect_json(capsys):
    data = json.loads(run_ok(["inspect", "--model", "sdxl", "--json"], capsys))
    assert data["format_version"] == 1 and data["component"] == "unet"
    assert sum(u["kind"] == "conv" for u in data["units"]) == 51
    assert data["total_bytes_fp16"] == 2 * data["total_params"]
    assert set(data["units"][0]["bytes"]) >= {"fp16", "fp8-moderate", "qdq-u8u16"}


def test_inspect_table_minilm_like_components(capsys):
    out = run_ok(["inspect", "--model", "tiny-sdxl", "--component", "text_encoder_2"], capsys)
    assert "encoder.layers.0.self_attn" in out and "text_projection" in out and "size ratio" in out


def test_generate_is_deterministic(tmp_path, capsys, coco_tsv):
    args = ["generate", "--model", "tiny-sdxl", "--prompts", f"{coco_tsv}:1-2", "--steps", "2"]
    run_ok(args + ["--out", str(tmp_path / "a")], capsys)
    run_ok(args + ["--out", str(tmp_path / "b")], capsys)
    for i in range(2):
        a = (tmp_path / "a" / f"{i:04d}.png").read_bytes()
        assert a == (tmp_path / "b" / f"{i:04d}.png").read_bytes()
        assert a[:8] == b"\x89PNG\r\n\x1a\n"
    other = run_ok(args + ["--out", str(tmp_path / "c"), "--seed", "7"], capsys)
    assert "wrote 2 images" in other
    assert (tmp_path / "c" / "0000.png").read_bytes() != (tmp_path / "a" / "0000.png").read_bytes()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["inspect", "--model", "sdxl", "--component", "vae"], "unknown component 'vae'"),
        (["inspect", "--model", "sdxl", "--include", "mid_block.nothing*"], "matches no unit"),
        (["generate", "--model", "tiny-sdxl", "--prompts", "/nonexistent.txt", "--out", "x"], "prompt file not found"),
        (["generate", "--model", "sdxl", "--prompts", "{empty}", "--out", "x"], "no prompts"),
    ],
)
def test_bad_input_one_line_exit_2(argv, message, capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    argv = [a.replace("{empty}", str(empty)) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_generate_on_meta_model_says_it_needs_weights(capsys, tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a cat\n")
    code, _, err = run(["generate", "--model", "sdxl", "--prompts", str(p), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "has no weights" in err
