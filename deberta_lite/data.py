"""Reading one local data file into a datasets.Dataset, with errors that name the file."""

import csv
from pathlib import Path

import datasets


# File suffix -> (datasets builder, its options).
BUILDERS = {
    ".txt": ("text", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def read_table(path: str | Path, split: str, cache_dir: str | None = None) -> datasets.Dataset:
    """One file as one split. A missing, empty, header-only, non-UTF-8 or unreadable file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{split} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in BUILDERS:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {sorted(BUILDERS)}")
    if suffix != ".parquet":
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:  # datasets would only say "An error occurred while generating the dataset"
            line = data[: error.start].count(b"\n") + 1
            raise ValueError(
                f"{path}, line {line}: not valid UTF-8 ({error.reason} at byte {error.start}); "
                "re-encode the file as UTF-8"
            ) from error
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty")
        if suffix in (".csv", ".tsv") and len(lines) == 1:
            raise ValueError(f"{path} has a header but no rows")
    builder, options = BUILDERS[suffix]
    try:
        table = datasets.load_dataset(builder, data_files={split: str(path)}, cache_dir=cache_dir, **options)[split]
    except Exception as error:  # pandas and pyarrow parse errors name neither file nor split
        cause = error  # datasets wraps the parser's message ("Expected 2 fields in line 3, saw 3") in a generic one
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ValueError(f"could not read {path} as {suffix[1:]}: {cause}") from error
    if len(table) == 0:
        raise ValueError(f"{path} has no rows")
    return table


def row_location(path: str | Path, index: int) -> str:
    """Where row `index` (0-based) of read_table(path) is, for error messages: "FILE, line N", or "FILE, row N".

    csv/tsv lines are counted as their reader skips lines (the header, blank lines; a quoted field may span lines);
    jsonl as one row per non-blank line. json and parquet rows have no line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    starts = []
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, **BUILDERS[suffix][1])
            next(reader, None)
            start = reader.line_num + 1
            for row in reader:
                if len(row) > 1 or (row and row[0].strip()):  # pandas skips empty and whitespace-only lines
                    starts.append(start)
                start = reader.line_num + 1
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            starts = [number for number, line in enumerate(handle, start=1) if line.strip()]
    if index < len(starts):
        return f"{path}, line {starts[index]}"
    return f"{path}, row {index + 1}"
