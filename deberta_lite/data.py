"""Reading one local data file into a datasets.Dataset, with errors that name the file."""

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
            raise ValueError(f"{path}, line {line}: not valid UTF-8 ({error.reason} at byte {error.start}); "
                             "re-encode the file as UTF-8") from error
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty")
        if suffix in (".csv", ".tsv") and len(lines) == 1:
            raise ValueError(f"{path} has a header but no rows")
    builder, options = BUILDERS[suffix]
    try:
        table = datasets.load_dataset(builder, data_files={split: str(path)}, cache_dir=cache_dir, **options)[split]
    except Exception as error:  # pandas and pyarrow parse errors name neither file nor split
        raise ValueError(f"could not read {path} as {suffix[1:]}: {error}") from error
    if len(table) == 0:
        raise ValueError(f"{path} has no rows")
    return table
