"""Prompt sources: a text file (one prompt per line), a TSV with a `caption` column (optionally `FILE.tsv:A-B`,
1-based data rows, inclusive), or `hf:DATASET[:N]` when online.

Files are read as UTF-8 (a UTF-8, UTF-16 or UTF-32 byte-order mark selects that encoding); binary files, other
encodings, oversized files and oversized TSV fields are refused in one line.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

from anna.errors import AnnaError

_RANGE = re.compile(r"^(?P<path>.+?):(?P<a>\d+)-(?P<b>\d+)$")
_HUB = re.compile(r"^(?P<name>[^:\s]+)(?::(?P<n>\d+))?$")
MAX_FILE_BYTES = 256 * 2**20  # a prompt file larger than this is not a prompt file
MAX_FIELD_CHARS = 1 << 20  # one TSV field (a caption) longer than this is refused
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def load_prompts(spec: str) -> list[str]:
    """Read prompts; an empty result, a missing file, a folder or a file that is not text is an error."""
    if spec.startswith("hf:"):
        prompts = _from_hub(spec[3:])
    else:
        path, rows = spec, None
        m = _RANGE.match(spec)
        if m and not Path(spec).exists():
            path, rows = m["path"], (int(m["a"]), int(m["b"]))
            if rows[0] < 1 or rows[1] < rows[0]:
                raise AnnaError(f"bad row range in '{spec}': use A-B with 1 <= A <= B")
        p = Path(path).expanduser()
        if p.is_dir():
            raise AnnaError(f"prompt file {path} is a folder, not a file: give a text or TSV file")
        if not p.is_file():
            raise AnnaError(f"prompt file not found: {path}")
        text = read_text(p)
        if p.suffix.lower() == ".tsv":
            prompts = _from_tsv(p, text, rows)
        else:
            if rows:
                raise AnnaError("row ranges apply to .tsv prompt files only")
            prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise AnnaError(f"no prompts in '{spec}'")
    return prompts


def read_text(path: Path) -> str:
    """A prompt file's text: UTF-8, or the encoding its byte-order mark names; anything else is a one-line error."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AnnaError(f"prompt file {path} is {size:,} bytes; prompt files are at most {MAX_FILE_BYTES:,} bytes")
    data = path.read_bytes()
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise AnnaError(f"prompt file {path} is not {encoding.upper().replace('-SIG', '')} text (byte "
                        f"0x{data[e.start]:02x} at offset {e.start}): save it as UTF-8") from None
    if "\x00" in text:
        raise AnnaError(f"prompt file {path} is binary (it holds NUL characters), not a text file of prompts")
    return text


def _from_tsv(path: Path, text: str, rows: tuple[int, int] | None) -> list[str]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    old = csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        if not reader.fieldnames or "caption" not in reader.fieldnames:
            raise AnnaError(f"{path} has no 'caption' column (columns: {reader.fieldnames})")
        captions = [(r["caption"] or "").strip() for r in reader]
    except csv.Error as e:
        raise AnnaError(f"{path} is not a readable TSV (line {reader.line_num + 1}: {e}); fields are at most "
                        f"{MAX_FIELD_CHARS:,} characters") from None
    finally:
        csv.field_size_limit(old)
    if rows:
        if rows[0] > len(captions):
            raise AnnaError(f"{path} has {len(captions)} rows; range starts at {rows[0]}")
        captions = captions[rows[0] - 1 : rows[1]]
    return [c for c in captions if c]


def _from_hub(spec: str) -> list[str]:
    m = _HUB.match(spec)
    if not m or (m["n"] is not None and int(m["n"]) < 1):
        raise AnnaError(f"bad prompt source 'hf:{spec}': use hf:DATASET or hf:DATASET:N with N a positive integer")
    name, limit = m["name"], int(m["n"]) if m["n"] else None
    try:
        from datasets import load_dataset
    except ImportError:
        raise AnnaError("hf: prompts need the 'datasets' package (pip install datasets)") from None
    try:
        ds = load_dataset(name, split="train" if limit is None else f"train[:{limit}]")
    except Exception as e:
        cause = (str(e).splitlines() or [""])[0]
        raise AnnaError(f"cannot load dataset '{name}': {type(e).__name__}: {cause}") from None
    column = next((c for c in ("caption", "prompt", "text") if c in ds.column_names), None)
    if column is None:
        raise AnnaError(f"dataset '{name}' has no caption/prompt/text column (columns: {ds.column_names})")
    return [str(x).strip() for x in ds[column] if str(x).strip()]
