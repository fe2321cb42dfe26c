import re

import pytest

from anna.errors import AnnaError
from anna.prompts import load_prompts


def test_text_file(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a cat\n\n  a dog  \n")
    assert load_prompts(str(p)) == ["a cat", "a dog"]


def test_tsv_and_row_range(coco_tsv):
    all_rows = load_prompts(str(coco_tsv))
    assert len(all_rows) == 5000
    assert all_rows[0] == "A city at night with people walking around."
    part = load_prompts(f"{coco_tsv}:4001-4010")
    assert part == all_rows[4000:4010]


def test_bad_prompt_sources(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(AnnaError, match="no prompts"):
        load_prompts(str(empty))
    with pytest.raises(AnnaError, match="not found"):
        load_prompts(str(tmp_path / "missing.txt"))
    tsv = tmp_path / "x.tsv"
    tsv.write_text("id\ttext\n1\thello\n")
    with pytest.raises(AnnaError, match="no 'caption' column"):
        load_prompts(str(tsv))


def test_utf16_and_utf8_byte_order_marks_are_decoded(tmp_path):
    import codecs

    text = "a café at night\n  une crêpe  \n"
    for name, data in [("le.txt", codecs.BOM_UTF16_LE + text.encode("utf-16-le")),
                       ("be.txt", codecs.BOM_UTF16_BE + text.encode("utf-16-be")),
                       ("u8.txt", codecs.BOM_UTF8 + text.encode("utf-8")),
                       ("u32.txt", codecs.BOM_UTF32_LE + text.encode("utf-32-le"))]:
        (tmp_path / name).write_bytes(data)
        assert load_prompts(str(tmp_path / name)) == ["a café at night", "une crêpe"], name
    tsv = tmp_path / "c.tsv"
    tsv.write_bytes(codecs.BOM_UTF16_LE + "id\tcaption\n1\tun chat\n".encode("utf-16-le"))
    assert load_prompts(str(tsv)) == ["un chat"]


@pytest.mark.parametrize("data, message", [
    (bytes(range(256)), "is not UTF-8 text (byte 0x80 at offset 128): save it as UTF-8"),
    (b"a cat\x00\x01\x02\n", "is binary (it holds NUL characters)"),
    (b"caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 3)"),  # Latin-1
    (b"\xff\xfea\x00\x00\xd8", "is not UTF-16 text"),  # a BOM, then a lone surrogate
])
def test_files_that_are_not_text(tmp_path, data, message):
    p = tmp_path / "p.txt"
    p.write_bytes(data)
    with pytest.raises(AnnaError, match=re.escape(message)):
        load_prompts(str(p))


def test_tsv_field_over_the_limit_and_folder(tmp_path):
    import csv

    from anna.prompts import MAX_FIELD_CHARS

    tsv = tmp_path / "big.tsv"
    tsv.write_text("id\tcaption\n1\t" + "x" * (MAX_FIELD_CHARS + 1) + "\n")
    limit = csv.field_size_limit()
    with pytest.raises(AnnaError, match=r"big.tsv is not a readable TSV \(line 2: field larger than field limit"):
        load_prompts(str(tsv))
    assert csv.field_size_limit() == limit  # restored
    tsv.write_text("id\tcaption\n1\t" + "x" * MAX_FIELD_CHARS + "\n")
    assert load_prompts(str(tsv)) == ["x" * MAX_FIELD_CHARS]
    with pytest.raises(AnnaError, match="is a folder, not a file"):
        load_prompts(str(tmp_path))


@pytest.mark.parametrize("spec", ["hf:foo:abc", "hf:", "hf:foo:0", "hf:foo:-1", "hf:a b", "hf:foo:1:2"])
def test_malformed_hub_specs(spec):
    with pytest.raises(AnnaError, match=re.escape(f"bad prompt source '{spec}'")):
        load_prompts(spec)
