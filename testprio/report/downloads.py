"""Downloads of a run: the ranking as CSV (streamed, safe to open in a spreadsheet) or as
stored, export.zip, and the top-k rows for labeling with or without their images.
"""

from __future__ import annotations

import csv
import io
import zipfile
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from testprio import storage
from testprio.layout import RunLayout
from testprio.report.images import display_image, encode_png
from testprio.report.paths import run_file
from testprio.report.ranking import ranking_rows
from testprio.report.run import RunDetails
from testprio.report.samples import read_samples

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV
# injection"); a leading ' makes it text. Only text cells: -0.5 in a number column is a number.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_PATTERN = "^[=+\\-@\t\r]"


def csv_cell(value: Any) -> Any:
    """``value`` safe for a CSV cell: a string that a spreadsheet would run gets a leading '."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_safe_table(table: pa.Table) -> pa.Table:
    """``csv_cell`` on every string column of ``table`` (number columns are left alone)."""
    for index, column_field in enumerate(table.schema):
        if pa.types.is_string(column_field.type) or pa.types.is_large_string(column_field.type):
            column = table.column(index)
            risky = pc.fill_null(pc.match_substring_regex(column, _FORMULA_PATTERN), False)
            safe = pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
            table = table.set_column(index, column_field, safe)
    return table


def write_ranking_csv(layout: RunLayout, sink) -> None:
    """Stream ``ranking.parquet`` as CSV into the binary file ``sink``, a row group at a time."""
    with storage.open_parquet(run_file(layout, layout.ranking)) as parquet:
        writer = None
        output = pa.PythonFile(sink, mode="w")
        for group in range(parquet.num_row_groups):
            table = _csv_safe_table(parquet.read_row_group(group))
            if writer is None:
                writer = pacsv.CSVWriter(output, table.schema)
            writer.write_table(table)
        if writer is None:
            writer = pacsv.CSVWriter(output, parquet.schema_arrow)
        writer.close()


def ranking_csv(layout: RunLayout) -> bytes:
    buffer = io.BytesIO()
    write_ranking_csv(layout, buffer)
    return buffer.getvalue()


def ranking_parquet(details: RunDetails) -> bytes:
    """``ranking.parquet`` of the run, as stored."""
    return storage.read_bytes(run_file(details.layout, details.layout.ranking))


def export_zip_file(details: RunDetails) -> str | None:
    """``report/export.zip`` of the run (checked to lie under the root), or None when its
    report stage has not written one."""
    uri = run_file(details.layout, details.layout.export_zip)
    return uri if storage.exists(uri) else None


def top_k_rows(details: RunDetails, k: int) -> list[dict]:
    """The top-``k`` rows for labeling: rank, sample_id, source, predicted, score, label."""
    metric = details.metric
    columns = ["rank", "sample_id", "predicted", "confidence", metric, "label"]
    rows = ranking_rows(details.layout, 0, max(0, k), columns).to_pylist()
    sources = read_samples(details, [row["sample_id"] for row in rows], columns=("source",))
    return [
        {
            "rank": row["rank"],
            "sample_id": row["sample_id"],
            "source": sources.get(row["sample_id"], {}).get("source", ""),
            "predicted": row["predicted"],
            "confidence": row["confidence"],
            metric: row[metric],
            "label": row["label"],
        }
        for row in rows
    ]


def rows_to_csv(rows: list[dict]) -> bytes:
    text = io.StringIO()
    if rows:
        # CRLF (RFC 4180): the csv module then also quotes a value holding \r or \n.
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
    return text.getvalue().encode()


def top_k_images_zip(details: RunDetails, k: int) -> bytes:
    """A zip of the top-``k`` samples as PNG files (original size) plus their CSV."""
    rows = top_k_rows(details, k)
    samples = read_samples(details, [row["sample_id"] for row in rows], columns=("x",))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"top-{k}.csv", rows_to_csv(rows))
        for row in rows:
            sample = samples.get(row["sample_id"])
            if sample is None:
                continue
            name = f"images/rank-{row['rank']:07d}_sample-{row['sample_id']}.png"
            archive.writestr(name, encode_png(display_image(sample["x"])))
    return buffer.getvalue()
