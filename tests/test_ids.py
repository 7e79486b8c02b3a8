"""The ID readers (plain text, CSV, JSON lines) on messy input, read in memory.

What the user sees of these (the errors file, the output IDs) is checked end to end through the
real command in test_cli.py; here each rule of SPEC.md "Input IDs" is pinned down on its own.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from batchscore.errors import UsageError
from batchscore.idrows import IdRow, InputProblem, looks_like_header
from batchscore.ids import count_lines, detect_format, read_ids

BOM = b"\xef\xbb\xbf"


def read(data: bytes, fmt: str = "text", **options: object) -> list[IdRow | InputProblem]:
    keep = tuple(options.pop("keep", ()))  # type: ignore[call-overload]
    id_column = str(options.pop("id_column", "id"))
    id_field = str(options.pop("id_field", "id"))
    header = options.pop("header", None)
    assert header is None or isinstance(header, bool)
    return list(read_ids(io.BytesIO(data), fmt, id_column, id_field, keep, header))


def ids_and_lines(items: list[IdRow | InputProblem]) -> list[tuple[int, str | None]]:
    return [(item.line, item.id) for item in items]


# -- plain text -----------------------------------------------------------------------------------


def test_text_strips_bom_crlf_and_whitespace_and_skips_blank_lines_counting_them() -> None:
    data = BOM + b"A1\r\n\r\n   \n\t B 2 \t\r\n\nC3"
    assert ids_and_lines(read(data)) == [(1, "A1"), (4, "B 2"), (6, "C3")]


def test_text_ids_are_strings_kept_exactly() -> None:
    items = read(b"007\n7\n1e3\n-0\n")
    assert [item.id for item in items] == ["007", "7", "1e3", "-0"]


def test_text_duplicates_are_kept_once_per_occurrence() -> None:
    assert [item.id for item in read(b"A\nB\nA\nA\n")] == ["A", "B", "A", "A"]


def test_invalid_utf8_line_is_an_input_problem_and_reading_goes_on() -> None:
    items = read(b"A\n\xff\xfeB\nC\n")
    assert items[0] == IdRow(1, "A")
    assert isinstance(items[1], InputProblem)
    assert (items[1].line, items[1].reason) == (2, "invalid_utf8")
    assert items[2] == IdRow(3, "C")


def test_id_of_1024_characters_is_fine_and_1025_is_an_input_problem() -> None:
    # Characters, not bytes: 1,024 two-byte characters are still a valid ID.
    longest = "ü" * 1024
    items = read(f"{longest}\n{'x' * 1025}\nok\n".encode())
    assert items[0] == IdRow(1, longest)
    assert isinstance(items[1], InputProblem)
    assert (items[1].line, items[1].reason) == (2, "id_too_long")
    assert items[2] == IdRow(3, "ok")


def test_a_bom_is_only_stripped_at_the_start_of_the_input() -> None:
    assert [item.id for item in read(BOM + b"A\n" + b"B\n")] == ["A", "B"]


def test_keep_with_plain_text_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--keep"):
        read(b"A\n", keep=("x",))


# -- CSV ------------------------------------------------------------------------------------------


def test_csv_takes_the_id_column_and_carries_keep_columns() -> None:
    data = BOM + b'segment,customer,note\r\nx,007,"a, b"\r\n\r\ny,C2,"say ""hi"""\r\n'
    items = read(data, "csv", id_column="customer", keep=("note", "segment"))
    assert items == [IdRow(2, "007", ("a, b", "x")), IdRow(4, "C2", ('say "hi"', "y"))]


def test_csv_header_names_are_matched_after_stripping_whitespace() -> None:
    items = read(b" id , score_band \nA,high\n", "csv", keep=("score_band",))
    assert items == [IdRow(2, "A", ("high",))]


def test_csv_without_the_id_column_is_a_usage_error_naming_the_columns() -> None:
    with pytest.raises(UsageError) as error:
        read(b"customer,segment\nA,x\n", "csv", id_column="id")
    assert "'id'" in error.value.message
    assert "customer, segment" in error.value.message
    assert "--id-column" in error.value.message


def test_csv_bad_rows_become_problems_with_their_line_numbers() -> None:
    data = b"id,segment\nA,x\n,y\n\xff,z\nB\nC,w\n"
    items = read(data, "csv", keep=("segment",))
    assert [(i.line, i.id) for i in items if isinstance(i, IdRow)] == [(2, "A"), (6, "C")]
    problems = [(i.line, i.reason) for i in items if isinstance(i, InputProblem)]
    assert problems == [(3, "missing_id"), (4, "invalid_utf8"), (5, "short_row")]
    assert [i.line for i in items] == [2, 3, 4, 5, 6]  # in input order


def test_csv_items_come_in_input_order() -> None:
    data = b"id\nA\n\xff\nB\n\n\xfe\nC\n"
    assert [item.line for item in read(data, "csv")] == [2, 3, 4, 6, 7]


def test_csv_record_spanning_lines_is_numbered_by_its_first_line() -> None:
    data = b'id,note\nA,"two\nlines"\n' + b"x" * 1025 + b",n\n"
    items = read(data, "csv", keep=("note",))
    assert items[0] == IdRow(2, "A", ("two\nlines",))
    assert isinstance(items[1], InputProblem)
    assert (items[1].line, items[1].reason) == (4, "id_too_long")


def test_empty_csv_gives_nothing() -> None:
    assert read(b"", "csv") == []


def test_csv_quote_never_closed_is_invalid_at_its_line_and_the_lines_it_held_are_read() -> None:
    data = b'id,note\nC1,"5 inch screen\nC2,x\n\nC3,y\nC4,z'
    items = read(data, "csv")
    assert [(i.line, i.reason) for i in items if isinstance(i, InputProblem)] == [
        (2, "invalid_csv")
    ]
    assert [(i.line, i.id) for i in items if isinstance(i, IdRow)] == [
        (3, "C2"),
        (5, "C3"),
        (6, "C4"),
    ]


def test_csv_quote_open_over_too_many_lines_is_invalid_and_every_line_is_read_again() -> None:
    from batchscore.csvids import MAX_RECORD_LINES

    rows = b"".join(b"K%d,x\n" % n for n in range(MAX_RECORD_LINES + 50))
    data = b'id,note\nA,"open\n' + rows + b'B,"a ""quoted""\nnote"\n'
    items = read(data, "csv", keep=("note",))
    assert items[0] == InputProblem(2, None, "invalid_csv")
    assert [i.id for i in items[1:-1]] == [f"K{n}" for n in range(MAX_RECORD_LINES + 50)]
    assert [i.line for i in items[1:-1]] == list(range(3, MAX_RECORD_LINES + 53))
    assert items[-1] == IdRow(MAX_RECORD_LINES + 53, "B", ('a "quoted"\nnote',))


def test_csv_stray_quote_closing_a_quote_lines_later_swallows_no_line() -> None:
    # Line 2 opens a quote; line 4's first quote closes it, and text follows: not one record.
    data = b'id,note\nA,"5 inch\nB,x\nC,"ok" fine\nD,"two\nlines"\n'
    items = read(data, "csv", keep=("note",))
    assert [(i.line, getattr(i, "reason", i.id)) for i in items] == [
        (2, "invalid_csv"),
        (3, "B"),
        (4, "C"),
        (5, "D"),
    ]
    assert items[2].keep == ("ok fine",) and items[3].keep == ("two\nlines",)  # type: ignore[union-attr]


def test_csv_header_opening_a_quote_never_closed_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="never closed"):
        read(b'id,"note\nA,1\nB,2\n', "csv")


# -- --no-header: a CSV or TSV whose first line is data (issue 22) ----------------------------


def test_no_header_csv_reads_its_first_line_as_a_row_with_columns_numbered_from_1() -> None:
    data = BOM + b'\r\nC1,x,"a, b"\r\nC2,y,"say ""hi"""\n\nC3,z,\n'
    items = read(data, "csv", header=False, id_column="1", keep=("3", "2"))
    assert items == [
        IdRow(2, "C1", ("a, b", "x")),  # line numbers stay the file's, blank lines counted
        IdRow(3, "C2", ('say "hi"', "y")),
        IdRow(5, "C3", ("", "z")),
    ]


def test_no_header_tsv_takes_the_id_by_its_number_and_a_first_line_quote_is_data() -> None:
    data = b'"x\t007\n"y\tC2\n'
    assert read(data, "tsv", header=False, id_column="2", keep=("1",)) == [
        IdRow(1, "007", ('"x',)),
        IdRow(2, "C2", ('"y',)),
    ]


def test_no_header_column_that_is_no_number_of_the_first_line_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as error:
        read(b"C1,x,y\nC2,x,y\n", "csv", header=False, id_column="1", keep=("4",))
    assert error.value.message == (
        "the input CSV has no column '4': with --no-header its columns are numbered 1 to 3 "
        "(as cut -f numbers them; its first line has 3 fields); pass --keep with one of those"
    )
    with pytest.raises(UsageError, match="has no column 'id': with --no-header"):
        read(b"C1\tx\n", "csv", header=False, id_column="id")


def test_no_header_first_line_that_is_no_csv_record_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="first line opens a quote that is never closed"):
        read(b'C1,"note\nC2,1\n', "csv", header=False, id_column="1")


def test_no_header_partition_reads_its_columns_by_number_from_its_first_line() -> None:
    """A part of a file (``--engine dask``) has no header line either: its first line is a
    row, numbered as in the file, whatever its width."""
    data = b"C7,a,b\nC8\nC9,c,d\n"
    items = list(read_ids(io.BytesIO(data), "csv", "1", "id", ("3",), False, start=41, whole=False))
    assert items[0] == IdRow(41, "C7", ("b",))
    assert (items[1].line, items[1].reason) == (42, "short_row")  # type: ignore[union-attr]
    assert items[2] == IdRow(43, "C9", ("d",))


@pytest.mark.parametrize(
    ("data", "id_column", "suggested"),
    [
        (b"C000858,3\nC000859,4\n", "id", "--no-header --id-column 1"),
        (b"basic,C000858\nplus,C000859\n", "id", "--no-header --id-column 2"),
        (b"basic,C000858\nplus,C000859\n", "C000858", "--no-header --id-column 2"),
    ],
)
def test_a_header_that_is_data_is_refused_naming_no_header_and_the_ids_column(
    data: bytes, id_column: str, suggested: str
) -> None:
    with pytest.raises(UsageError) as error:
        read(data, "csv", id_column=id_column)
    assert "looks like data, not a header" in error.value.message
    assert f"pass {suggested} (its columns are then numbered from 1" in error.value.message
    # Following the suggestion reads every row, the first one too.
    items = read(data, "csv", header=False, id_column=suggested.rsplit(" ", 1)[1])
    assert ids_and_lines(items) == [(1, "C000858"), (2, "C000859")]


@pytest.mark.parametrize(
    ("data", "id_column", "shown"),
    [
        # The first line's quoted field holds a newline: the error said "(C1, multi" on one
        # line and "line) looks like data ..." on the next, without its time stamp.
        (b'C000858,"multi\nline"\nC000859,"b\nc"\n', "id", "(C000858, 'multi\\nline')"),
        (b'C000858,"multi\nline"\nC000859,"b\nc"\n', "C000858", "(C000858, 'multi\\nline')"),
        # A header that names no such column: its names, one of them an escape sequence.
        (b'i\x1b[31md,"x\ny"\nC1,2\n', "idd", "(columns: 'i\\x1b[31md', 'x\\ny')"),
    ],
)
def test_a_header_error_shows_a_cell_with_a_newline_or_control_character_on_its_one_line(
    data: bytes, id_column: str, shown: str
) -> None:
    with pytest.raises(UsageError) as error:
        read(data, "csv", id_column=id_column)
    assert shown in error.value.message
    assert error.value.message.isprintable()  # no newline, no escape reaches the terminal


# -- JSON lines -----------------------------------------------------------------------------------


def test_jsonl_takes_the_id_field_as_a_string_and_carries_keep_fields() -> None:
    data = (
        BOM + b'{"account": "007", "n": 1.5, "tag": "x"}\r\n'
        b"\n"
        b'{"account": 42, "tag": null}\n'
        b'{"account": " C3 ", "n": [1, 2], "tag": "y"}\n'
    )
    items = read(data, "jsonl", id_field="account", keep=("tag", "n"))
    assert items == [
        IdRow(1, "007", ("x", 1.5)),  # JSON values as parsed: a JSON-lines output keeps types
        IdRow(3, "42", (None, None)),
        IdRow(4, "C3", ("y", [1, 2])),
    ]


def test_jsonl_numbers_beyond_the_double_range_are_null_and_the_line_is_kept() -> None:
    data = b'{"id": "A", "x": 1e400}\n{"id": "B", "x": [-1e400, NaN, -Infinity]}\n'
    assert read(data, "jsonl", keep=("x",)) == [
        IdRow(1, "A", (None,)),
        IdRow(2, "B", ([None, None, None],)),
    ]


def test_jsonl_bad_lines_become_problems_with_their_line_numbers() -> None:
    data = (
        b'{"id": "A"}\n'
        b"not json\n"
        b'["id", "B"]\n'
        b'{"other": "C"}\n'
        b'{"id": true}\n'
        b'{"id": "  "}\n'
        b'{"id": "\xff"}\n'
        b'{"id": "' + b"x" * 1025 + b'"}\n'
        b'{"id": "Z"}\n'
    )
    items = read(data, "jsonl")
    assert [(item.line, type(item).__name__, getattr(item, "reason", None)) for item in items] == [
        (1, "IdRow", None),
        (2, "InputProblem", "invalid_json"),
        (3, "InputProblem", "invalid_json"),
        (4, "InputProblem", "missing_id"),
        (5, "InputProblem", "missing_id"),
        (6, "InputProblem", "missing_id"),
        (7, "InputProblem", "invalid_utf8"),
        (8, "InputProblem", "id_too_long"),
        (9, "IdRow", None),
    ]


@pytest.mark.parametrize("lines", [3, 100, 5000])
def test_jsonl_whose_first_lines_all_lack_the_id_field_is_a_usage_error(lines: int) -> None:
    # A wrong --id-field made every line a missing_id and churned through the whole file.
    data = b"".join(b'{"account": "A%d", "tier": "gold"}\n\n' % n for n in range(lines))
    with pytest.raises(UsageError) as caught:
        read(data, "jsonl", id_field="acct")
    message = caught.value.message
    assert "'acct'" in message and "account, tier" in message and "--id-field" in message


def test_jsonl_lines_lacking_the_id_field_before_one_that_has_it_are_problems_in_order() -> None:
    data = b"".join(b'{"other": %d}\n' % n for n in range(99)) + b'{"id": "A"}\n{"x": 1}\n'
    items = read(data, "jsonl")
    assert [(item.line, getattr(item, "reason", None)) for item in items] == [
        *((n, "missing_id") for n in range(1, 100)),
        (100, None),
        (101, "missing_id"),
    ]
    assert items[99] == IdRow(100, "A")


def test_jsonl_bad_json_alone_is_not_taken_for_a_wrong_id_field() -> None:
    items = read(b"not json\n[1]\n", "jsonl")
    assert [getattr(item, "reason", None) for item in items] == ["invalid_json"] * 2
    with pytest.raises(UsageError) as caught:
        read(b"not json\n[1]\n" * 75, "jsonl")
    assert caught.value.message == (
        "every one of the 150 non-blank lines of the input is not a JSON object; "
        "is the input JSON lines? (--input-format)"
    )


# -- an input whose every row fails the same way ---------------------------------------------------


def test_text_whose_every_line_is_not_utf8_is_refused_naming_the_cause() -> None:
    with pytest.raises(UsageError) as caught:
        read(b"".join(b"caf\xe9%d\n" % n for n in range(30)))
    assert caught.value.message == (
        "every one of the 30 lines of the input is not UTF-8 (a Latin-1 or Windows-1252 "
        "export?); convert the file, e.g. with iconv -f WINDOWS-1252 -t UTF-8"
    )


def test_only_the_first_1000_rows_are_read_to_tell_and_the_message_says_so() -> None:
    data = b"id,segment\n" + b",x\n" * 5000
    with pytest.raises(UsageError) as caught:
        read(data, "csv")
    assert caught.value.message.startswith(
        "every one of the first 1,000 rows has an empty 'id' column; pass --id-column"
    )


def test_a_utf16_input_is_refused_at_its_first_line() -> None:
    with pytest.raises(UsageError, match=r"UTF-16.*iconv -f UTF-16 -t UTF-8"):
        read("C1\nC2\n".encode("utf-16"))


@pytest.mark.parametrize(
    "data",
    [
        b"".join(b"caf\xe9%d\n" % n for n in range(19)),  # too few to tell: a small bad input
        b"".join(b"caf\xe9%d\n" % n for n in range(40)) + b"C1\n",  # one good line: data
        b"\xff\n" * 20 + b"y" * 1025 + b"\n" + b"\xff\n" * 20,  # two reasons: data
    ],
)
def test_rows_failing_alike_are_kept_as_problems_when_they_cannot_be_a_wrong_option(
    data: bytes,
) -> None:
    items = read(data)
    assert all(isinstance(item, InputProblem) for item in items[:19])
    assert len(items) == data.count(b"\n")


# -- TSV and a header in plain text ---------------------------------------------------------------


def test_tsv_splits_on_tabs_only_and_quotes_are_data() -> None:
    data = b'segment\tcustomer\tnote\r\nx\t007\t"a, b"\n\ny\tsay "hi"\tplain\n'
    items = read(data, "tsv", id_column="customer", keep=("note",))
    assert items == [IdRow(2, "007", ('"a, b"',)), IdRow(4, 'say "hi"', ("plain",))]


def test_a_tsv_read_as_csv_says_to_pass_input_format_tsv() -> None:
    with pytest.raises(UsageError) as caught:
        read(b"id\tsegment\nC1\tx\n", "csv")
    assert caught.value.message.endswith("(the header has tabs: pass --input-format tsv)")


def test_header_skips_the_first_non_blank_line_and_keeps_line_numbers() -> None:
    data = BOM + b"\r\ncustomer_id\r\nC1\r\n\nC2\n"
    assert ids_and_lines(read(data, header=True)) == [(3, "C1"), (5, "C2")]
    assert ids_and_lines(read(data)) == [(2, "customer_id"), (3, "C1"), (5, "C2")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("id", True),
        ("ID", True),
        ("customer_id", True),
        ("Account ID", True),
        ("customerId", True),
        ("acct", True),  # the --id-column given
        ("C000123", False),
        ("david", False),
        ("id_7", False),
        ("user-42-id", False),
    ],
)
def test_a_first_line_looks_like_a_header_only_when_it_reads_like_a_column_name(
    value: str, expected: bool
) -> None:
    assert looks_like_header(value, ("acct", "id")) is expected


# -- formats and counting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "given", "expected"),
    [
        ("ids.txt", None, "text"),
        ("ids", None, "text"),
        ("-", None, "text"),
        ("ids.csv", None, "csv"),
        ("ids.tsv", None, "tsv"),
        ("IDS.TSV", None, "tsv"),
        ("IDS.CSV", None, "csv"),
        ("ids.jsonl", None, "jsonl"),
        ("ids.ndjson", None, "jsonl"),
        ("ids.txt", "csv", "csv"),
        ("-", "jsonl", "jsonl"),
    ],
)
def test_input_format_comes_from_the_flag_then_the_extension(
    path: str, given: str | None, expected: str
) -> None:
    assert detect_format(path, given) == expected


@pytest.mark.parametrize(
    ("content", "lines"),
    [(b"", 0), (b"A", 1), (b"A\n", 1), (b"A\n\nB", 3), (b"A\r\n\r\nB\r\n", 3)],
)
def test_line_count_for_the_progress_total_includes_blank_lines(
    tmp_path: Path, content: bytes, lines: int
) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(content)
    assert count_lines(str(path)) == lines
