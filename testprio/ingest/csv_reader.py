"""CSV files with a header row as array pools, streamed in constant memory."""

from __future__ import annotations

import csv
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from testprio.errors import TestprioError
from testprio.ingest.formats import default_label_column
from testprio.ingest.pool import ArrayPool, Chunk

CSV_BLOCK_BYTES = 4 << 20


_NUMBER = r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:nan|inf|infinity))$"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_header(path: str, name: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except UnicodeDecodeError:
        raise TestprioError(f"{name} is not UTF-8 text; save the CSV file as UTF-8.") from None
    except csv.Error as exc:
        raise TestprioError(
            f"the header row of {name} cannot be read ({exc}); its first line must name the "
            "columns, separated by commas."
        ) from None
    columns = [cell.strip() for cell in header or []]
    if not any(columns):
        raise TestprioError(
            f"{name} has no header row; its first line must name the columns (for example "
            "f0,f1,label)."
        )
    if "" in columns:
        raise TestprioError(
            f"column {columns.index('') + 1} of {name} has no name (often a saved DataFrame "
            "index); remove it (DataFrame.to_csv(index=False)) or name it."
        )
    # Header cells are file content (a token file's first line is its "header"): errors
    # name columns by position, never by their text.
    repeated = next((i for i, c in enumerate(columns) if c in columns[:i]), None)
    if repeated is not None:
        raise TestprioError(
            f"column {repeated + 1} of {name} has the same name as column "
            f"{columns.index(columns[repeated]) + 1}; give every column its own name."
        )
    # pandas names unnamed columns 0..n-1; any other all-numeric first row is data.
    if all(map(_looks_numeric, columns)) and columns != [str(i) for i in range(len(columns))]:
        raise TestprioError(
            f"the first line of {name} holds numbers, not column names; add a header row "
            "(for example f0,f1,label)."
        )
    return columns


def _parse_column(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 values (NaN where empty or not a number), empty mask, not-a-number mask."""
    text = pc.utf8_trim_whitespace(column)
    empty = pc.fill_null(pc.equal(text, ""), True)
    numeric = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
    values = pc.cast(pc.if_else(numeric, text, pa.scalar(None, pa.string())), pa.float64())
    empty_np = empty.to_numpy(zero_copy_only=False)
    numeric_np = numeric.to_numpy(zero_copy_only=False)
    return values.to_numpy(zero_copy_only=False), empty_np, ~(empty_np | numeric_np)


# Arrow's CSV messages can quote the offending row, so a message is chosen by what Arrow
# says went wrong and never passed on.
_CSV_PROBLEMS = (
    (
        "UTF8",
        "{name} is not UTF-8 text past its first lines; re-save it as UTF-8 (in Excel: Save "
        "As 'CSV UTF-8'; in pandas: to_csv(..., encoding='utf-8')).",
    ),
    (
        "block size",
        "{name} has a line longer than 4 MiB or no line after its header; put one sample "
        "per line, with a header row first.",
    ),
)


def _csv_problem(name: str, message: str) -> str:
    for needle, sentence in _CSV_PROBLEMS:
        if needle in message:
            return sentence.format(name=name)
    return (
        f"{name} is not a readable CSV file (a row cannot be parsed, often an unclosed "
        "quote); save it as comma-separated UTF-8 text with a header row."
    )


class _CsvRows:
    """Turns parsed CSV batches into chunks with line numbers and bad rows.

    With ``newlines_in_values`` and ``ignore_empty_lines`` off, each physical line is one
    row, except rows with the wrong number of values: the parser drops those and reports
    their line numbers to ``on_invalid_row`` before it hands over their batch, so the walk
    puts them back as bad samples where they were. A row with every cell empty (a blank
    line) is no sample.
    """

    def __init__(self, name: str, columns: list[str], features: list[str], label: str | None):
        self.name = name
        self.features = features
        self.label = label
        self.positions = {c: i + 1 for i, c in enumerate(columns)}  # 1-based, as in a sheet
        self.line = 1  # the header
        self.invalid: dict[int, str] = {}  # line -> reason, for lines the parser dropped

    def on_invalid_row(self, row) -> str:
        self.invalid[row.number] = (
            f"row has {row.actual_columns} values but the header has {row.expected_columns} columns"
        )
        return "skip"

    def chunk(self, batch: pa.RecordBatch) -> Chunk:
        n = batch.num_rows
        x = np.empty((n, len(self.features)), dtype=np.float64)
        y = None
        blank = np.ones(n, dtype=bool)
        reasons: dict[int, str] = {}
        for j, column_name in enumerate([*self.features, *([self.label] if self.label else [])]):
            position = self.positions[column_name]
            values, empty, bad = _parse_column(batch.column(column_name))
            if j < len(self.features):
                x[:, j] = values
            else:
                y = values
            blank &= empty
            for i in np.flatnonzero(bad).tolist():  # the cell's text stays out of the reason
                reasons.setdefault(i, f"a value that is not a number in column {position}")
        rows: list[int | str] = []  # a row of the batch, or the reason for a dropped line
        lines: list[int] = []
        for i in range(n):
            self.line += 1
            while self.line in self.invalid:
                rows.append(self.invalid.pop(self.line))
                lines.append(self.line)
                self.line += 1
            if not blank[i]:
                rows.append(i)
                lines.append(self.line)
        return self._assemble(x, y, rows, lines, reasons)

    def rest(self) -> Chunk | None:
        """The dropped lines after the last parsed row."""
        if not self.invalid:
            return None
        lines = sorted(self.invalid)
        rows: list[int | str] = [self.invalid.pop(line) for line in lines]
        x = np.empty((0, len(self.features)))
        return self._assemble(x, None if self.label is None else np.empty(0), rows, lines, {})

    def _assemble(self, x, y, rows: list[int | str], lines: list[int], reasons) -> Chunk:
        index = np.array([row if isinstance(row, int) else -1 for row in rows], dtype=np.int64)
        valid = index >= 0
        out_x = np.full((len(rows), len(self.features)), np.nan)
        out_x[valid] = x[index[valid]]
        out_y = None
        if self.label is not None:
            out_y = np.full(len(rows), np.nan)
            out_y[valid] = y[index[valid]]
        bad = {
            position: row if isinstance(row, str) else reasons[row]
            for position, row in enumerate(rows)
            if isinstance(row, str) or row in reasons
        }
        sources = [f"{self.name}:line {line}" for line in lines]
        return Chunk(out_x, out_y, sources, bad or None)


def _slice_chunk(chunk: Chunk, start: int, stop: int) -> Chunk:
    bad = {i - start: r for i, r in (chunk.bad or {}).items() if start <= i < stop}
    return Chunk(
        chunk.x[start:stop],
        None if chunk.y is None else chunk.y[start:stop],
        None if chunk.sources is None else chunk.sources[start:stop],
        bad or None,
    )


def _join_chunks(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    bad, offset = {}, 0
    for chunk in chunks:
        bad.update({offset + i: r for i, r in (chunk.bad or {}).items()})
        offset += len(chunk.x)
    return Chunk(
        np.concatenate([c.x for c in chunks]),
        None if chunks[0].y is None else np.concatenate([c.y for c in chunks]),
        [s for c in chunks for s in c.sources or []],
        bad or None,
    )


def _rechunk(pieces: Iterator[Chunk], rows: int) -> Iterator[Chunk]:
    """Chunks of exactly ``rows`` samples (the last one shorter) from pieces of any size."""
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    buffer: list[Chunk] = []
    buffered = 0
    for piece in pieces:
        start = 0
        while start < len(piece.x):
            take = min(rows - buffered, len(piece.x) - start)
            buffer.append(_slice_chunk(piece, start, start + take))
            buffered += take
            start += take
            if buffered == rows:
                yield _join_chunks(buffer)
                buffer, buffered = [], 0
    if buffered:
        yield _join_chunks(buffer)


def read_csv(path: str, name: str, *, label_column: str = "") -> ArrayPool:
    """A CSV file with a header row as an array pool, streamed in constant memory.

    The label column is ``label_column`` if given, else ``label`` or ``y`` if present, else
    none; every other column is a feature, so a sample has shape ``(num_features,)``. An
    empty cell is NaN (ingest quarantines non-finite rows; an empty label is unknown), a cell
    that is not a number or a row with the wrong number of values makes that row a bad
    sample, and a blank line is skipped. Sources are ``name:line N`` (the header is line 1).
    ``count`` is None: it is known only after reading.
    """
    columns = _csv_header(path, name)
    if label_column:
        if label_column not in columns:
            raise TestprioError(
                f"none of the {len(columns)} columns in the header row of {name} is named "
                f"'{label_column}'; give one of its columns as the label column."
            )
        label = label_column
    else:
        label = default_label_column(columns, name, "columns")
    features = [c for c in columns if c != label]
    if not features:
        raise TestprioError(
            f"{name} has no feature columns (only '{label}'); add the sample values as columns."
        )

    def pieces() -> Iterator[Chunk]:
        walk = _CsvRows(name, columns, features, label)
        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(
                    skip_rows=1,
                    column_names=columns,
                    use_threads=False,  # the row handler then sees line numbers in order
                    block_size=CSV_BLOCK_BYTES,
                ),
                parse_options=pacsv.ParseOptions(
                    invalid_row_handler=walk.on_invalid_row, ignore_empty_lines=False
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(columns, pa.string()),
                    strings_can_be_null=False,
                ),
            )
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                yield walk.chunk(batch)
        except pa.ArrowInvalid as exc:
            raise TestprioError(_csv_problem(name, str(exc))) from None
        rest = walk.rest()
        if rest is not None:
            yield rest

    def read_chunks(rows: int) -> Iterator[Chunk]:
        return _rechunk(pieces(), rows)

    return ArrayPool(name, None, (len(features),), label is not None, read_chunks)
