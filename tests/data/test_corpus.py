"""lmlab.data.corpus: every supported format reads back exactly, every bad input is a one-line LmlabError
naming the file (and line for JSONL)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmlab.data.corpus import list_files, read_documents, read_records
from lmlab.errors import LmlabError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# -- formats ------------------------------------------------------------------------------------------


def test_txt_split_modes(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("first para\nline two\n\n  \nsecond para\n\nthird\n", encoding="utf-8")
    assert list(read_documents(f)) == [f.read_text()]
    assert list(read_documents(f, split="paragraph")) == ["first para\nline two", "second para", "third"]
    assert list(read_documents(f, split="line")) == ["first para", "line two", "second para", "third"]
    with pytest.raises(LmlabError, match="split="):
        read_documents(f, split="sentence")


def test_jsonl_documents_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b", "id": 2}\n{"body": "c", "text": ""}\n', encoding="utf-8")
    assert list(read_documents(f)) == ["a", "b", ""]
    g = write_jsonl(tmp_path / "e.jsonl", [{"body": "x"}, {"body": "y"}])
    assert list(read_documents(g, text_field="body")) == ["x", "y"]


def test_records_pass_chat_through(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    f = write_jsonl(tmp_path / "chat.jsonl", [chat, {"messages": [], "meta": {"k": 1}}])
    assert list(read_records(f)) == [chat, {"messages": [], "meta": {"k": 1}}]
    # read_documents explains where chat records go.
    with pytest.raises(LmlabError) as e:
        list(read_documents(f))
    one_line_error(e, "chat.jsonl:1", "'text'", "read_records")
    t = tmp_path / "x.txt"
    t.write_text("hi")
    with pytest.raises(LmlabError) as e:
        read_records(t)
    one_line_error(e, "x.txt", ".jsonl", ".parquet")


def test_directory_sorted_recursive_and_glob(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    (d / "sub").mkdir(parents=True)
    (d / ".cache").mkdir()
    write_jsonl(d / "b.jsonl", [{"text": "b1"}, {"text": "b2"}])
    (d / "a.txt").write_text("a")
    (d / "sub" / "c.txt").write_text("c")
    (d / ".cache" / "z.txt").write_text("hidden")
    (d / "README.md").write_text("ignored")
    assert [p.name for p in list_files(d)] == ["a.txt", "b.jsonl", "c.txt"]
    assert list(read_documents(d)) == ["a", "b1", "b2", "c"]
    assert list(read_documents(str(d / "*.txt"))) == ["a"]
    assert list(read_documents(str(d / "**" / "*.txt"))) == ["a", "c"]


# -- errors -------------------------------------------------------------------------------------------


def test_missing_path_and_unmatched_glob(tmp_path: Path) -> None:
    with pytest.raises(LmlabError) as e:
        read_documents(tmp_path / "nope.jsonl")
    one_line_error(e, "nope.jsonl", "no such file")
    with pytest.raises(LmlabError) as e:
        read_documents(str(tmp_path / "*.jsonl"))
    one_line_error(e, "*.jsonl", "matches no files")


def test_unsupported_extension_lists_supported(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("a,b\n")
    with pytest.raises(LmlabError) as e:
        read_documents(f)
    one_line_error(e, "data.csv", ".txt", ".jsonl", ".parquet")


def test_empty_inputs(tmp_path: Path) -> None:
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    with pytest.raises(LmlabError) as e:
        list(read_documents(f))
    one_line_error(e, "empty.jsonl", "contains no documents")
    with pytest.raises(LmlabError) as e:
        list(read_records(f))
    one_line_error(e, "empty.jsonl", "contains no documents")
    t = tmp_path / "blank.txt"
    t.write_text("  \n")
    with pytest.raises(LmlabError) as e:
        list(read_documents(t))
    one_line_error(e, "blank.txt", "contains no documents")
    d = tmp_path / "nothing"
    d.mkdir()
    (d / "notes.md").write_text("x")
    with pytest.raises(LmlabError) as e:
        read_documents(d)
    one_line_error(e, "nothing", "contains no documents")


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n\n{"text": "oops"\n', encoding="utf-8")
    it = read_documents(f)
    assert next(it) == "ok"  # content errors are lazy: good lines before the bad one are served
    with pytest.raises(LmlabError) as e:
        next(it)
    one_line_error(e, "bad.jsonl:3", "invalid JSON")
    g = tmp_path / "arr.jsonl"
    g.write_text('["text"]\n')
    with pytest.raises(LmlabError) as e:
        list(read_records(g))
    one_line_error(e, "arr.jsonl:1", "array", "JSON object")


def test_missing_or_non_string_field(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "f.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(LmlabError) as e:
        list(read_documents(f))
    one_line_error(e, "f.jsonl:2", "'text'", "txt")
    g = write_jsonl(tmp_path / "g.jsonl", [{"content": 3}])
    with pytest.raises(LmlabError) as e:
        list(read_documents(g, text_field="content"))
    one_line_error(e, "g.jsonl:1", "'content'", "number", "string")


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    f = tmp_path / "u.jsonl"
    f.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(LmlabError) as e:
        list(read_documents(f))
    one_line_error(e, "u.jsonl:2", "UTF-8")


# -- parquet ------------------------------------------------------------------------------------------


def test_parquet_roundtrip_and_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["x", "yy", "zzz"], "n": [1, 2, 3]}), f)
    assert list(read_documents(f)) == ["x", "yy", "zzz"]
    assert list(read_records(f)) == [{"text": "x", "n": 1}, {"text": "yy", "n": 2}, {"text": "zzz", "n": 3}]
    with pytest.raises(LmlabError) as e:
        list(read_documents(f, text_field="body"))
    one_line_error(e, "p.parquet", "'body'", "text")
    with pytest.raises(LmlabError) as e:
        list(read_documents(f, text_field="n"))
    one_line_error(e, "p.parquet", "'n'", "string")
    nul = tmp_path / "null.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), nul)
    with pytest.raises(LmlabError) as e:
        list(read_documents(nul))
    one_line_error(e, "null.parquet", "row 1", "null")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    with pytest.raises(LmlabError) as e:
        list(read_documents(empty))
    one_line_error(e, "empty.parquet", "contains no documents")
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(LmlabError) as e:
        list(read_documents(bad))
    one_line_error(e, "corrupt.parquet", "parquet")


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "p.parquet"
    f.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(LmlabError) as e:
        list(read_documents(f))
    one_line_error(e, "p.parquet", "pyarrow", "pip install pyarrow")
