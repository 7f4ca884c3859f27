"""data_tools/inputs/sources.py: manifest lines that cannot be used are marked with their line
number and what is wrong with them, never dropped unseen."""
from __future__ import annotations

import pytest

from data_tools.inputs.sources import ManifestSource


def test_manifest_lines_that_cannot_be_used_are_marked(tmp_path):
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_bytes(b'{"path": "a.jpg", "tags": ["#dog"]}\n'
                      b'{"path": "a.jpg", "tags": ["#dog"]\n'
                      b'{"tags": ["#dog"]}\n'
                      b'{"path": "a.jpg", "tags": 7}\n'
                      b'["a.jpg", "#dog"]\n'
                      b'{"path": "", "tags": ["#dog"]}\n'
                      b'{"path": "b.jpg", "tags": "#dog, #cat"}\n'
                      b'{"path": "c.jpg", "tags": ["#caf\xe9"]}\n'
                      b'\n')
    records = list(ManifestSource(str(jsonl)))
    assert [r.error for r in records] == ["", "malformed_line", "malformed_line", "malformed_line",
                                          "malformed_line", "malformed_line", "", ""]
    assert [r.key for r in records] == [f"{i:012d}" for i in range(8)]
    assert records[0].path == str(tmp_path / "a.jpg")
    assert records[6].tags == ["#dog", "#cat"]
    assert records[7].path == str(tmp_path / "c.jpg") and len(records[7].tags) == 1

    tsv = tmp_path / "tags.tsv"
    tsv.write_text("# path<TAB>tags\nimgs/a.jpg\t#dog,#cat\nimgs/b.jpg\n/abs/c.jpg\t#Café  #dog\n")
    records = list(ManifestSource(str(tsv), root=str(tmp_path / "base")))
    assert [(r.error, r.tags) for r in records] == [("", ["#dog", "#cat"]), ("", []), ("", ["#Café", "#dog"])]
    assert records[0].path == str(tmp_path / "base" / "imgs/a.jpg") and records[2].path == "/abs/c.jpg"


def test_malformed_lines_say_what_is_wrong_with_their_line_number(tmp_path):
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text('{"path": "a.jpg", "tags": ["#dog"]}\n\n'
                     '{"file": "a.jpg", "hashtags": ["#dog"]}\n'
                     '{"path": 3, "tags": ["#dog"]}\n'
                     '{"path": "a.jpg", "tags": {"a": 1}}\n'
                     'a.jpg\t#dog\n')
    records = list(ManifestSource(str(jsonl)))
    assert [r.line for r in records] == [1, 3, 4, 5, 6]
    assert [r.detail for r in records] == [
        "", "no 'path' field (fields: file, hashtags)", "'path' is 3, not a file path",
        """'tags' is {"a": 1}, not a list or a string""", "not JSON (Expecting value): 'a.jpg\\t#dog'"]


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_a_byte_order_mark_keeps_the_first_line(tmp_path, suffix):
    manifest = tmp_path / f"tags{suffix}"
    lines = ['{"path": "a.jpg", "tags": ["#dog"]}', '{"path": "b.jpg", "tags": ["#cat"]}']
    if suffix == ".tsv":
        lines = ["a.jpg\t#dog", "b.jpg\t#cat"]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    records = list(ManifestSource(str(manifest)))
    assert [(r.error, r.path, r.tags) for r in records] == [
        ("", str(tmp_path / "a.jpg"), ["#dog"]), ("", str(tmp_path / "b.jpg"), ["#cat"])]


@pytest.mark.parametrize("line", ["\t#dog #cat", "\tdog"])
def test_tsv_line_with_an_empty_path_is_malformed(tmp_path, line):
    tsv = tmp_path / "tags.tsv"
    tsv.write_text(f"imgs/a.jpg\t#dog\n{line}\nimgs/b.jpg\t#cat\n")
    records = list(ManifestSource(str(tsv)))
    # Three input lines, three records: the middle one has no path and must be counted.
    assert [r.error for r in records] == ["", "malformed_line", ""], [(r.path, r.tags, r.error) for r in records]
