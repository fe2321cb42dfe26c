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
