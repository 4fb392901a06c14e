"""Where a contig's `label` comes from: nothing, the FASTA file's name, or a TSV table."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from kmervae.base.errors import InputError
from kmervae.features.fasta import check_readable, file_stem

_HEADER_IDS = {"seq_id", "contig_id", "record_id", "id", "sequence_id", "contig", "name", "#seq_id"}


@dataclass
class Labels:
    """Maps (file, record id) to a label; remembers which table entries were never used."""

    from_filename: bool = False
    table: dict[str, str] | None = None
    source: str = ""
    _used: set[str] = field(default_factory=set)

    def for_records(self, path: Path, record_ids: list[str]) -> list[str | None]:
        """The labels of a file's records, in order."""
        if self.from_filename:
            return [file_stem(path)] * len(record_ids)
        if self.table is not None:
            labels = [self.table.get(rid) for rid in record_ids]
            self._used.update(rid for rid, label in zip(record_ids, labels, strict=True) if label is not None)
            return labels
        return [None] * len(record_ids)

    @property
    def unused(self) -> int:
        """Entries of the labels table that matched no record (worth a warning: a typo?)."""
        return 0 if self.table is None else len(self.table) - len(self._used)

    @classmethod
    def from_tsv(cls, path: str | Path) -> Labels:
        """Read a tab-separated table: record id, label (more columns are ignored).

        Lines starting with '#' are comments; a first line whose first field is a column
        name such as `seq_id` or `contig_id` is a header.
        """
        path = Path(path)
        check_readable(path)
        table: dict[str, str] = {}
        with open(path, newline="", encoding="utf-8") as handle:
            for line_number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
                if not row or row[0].startswith("#") and row[0] not in _HEADER_IDS:
                    continue
                if line_number == 1 and row[0].strip().lower() in _HEADER_IDS:
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    got = "\t".join(row)
                    raise InputError(f"{path}: line {line_number}: expected 'record_id<TAB>label', got {got!r}")
                record_id, label = row[0].strip(), row[1].strip()
                if table.get(record_id, label) != label:
                    raise InputError(
                        f"{path}: line {line_number}: record '{record_id}' has two labels, "
                        f"'{table[record_id]}' and '{label}'"
                    )
                table[record_id] = label
        if not table:
            raise InputError(f"{path}: no labels found (expected lines 'record_id<TAB>label')")
        return cls(table=table, source=str(path))
