"""FASTA records in blocks: many records' bases in one buffer, so nothing runs per record in Python.

Two readers give the same blocks:

- the scanner: one compiled pass over the file's bytes (decompressed in-process by xopen)
  that finds the records, validates every base against the IUPAC table, drops line ends
  and copies the bases into one buffer, at about 1 GB/s. It reads the plain dialect of
  FASTA nearly every file is written in: `>` headers with an ASCII id, lines of IUPAC
  letters ending in LF or CRLF, blank lines;
- `FastaReader` (dnaio, bench/RESULTS.md), which reads FASTQ, UTF-8 ids, whitespace
  inside sequence lines, and gives every format error as one line with its file and line.

The scanner stops at the first record it does not read (an error, or a valid record of
another dialect) and hands the rest of the file, from that record on, to `FastaReader`:
the records are the same whichever reader gave them, and a bad file gets the exact
reader's message. A file of the plain dialect is read by the scanner alone.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numba
import numpy as np
import xopen

from kmervae.base.errors import DECOMPRESSION_ERRORS
from kmervae.features.fasta import FastaReader, sniff_compression
from kmervae.features.kmer_counter import BASE_CLASS

BLOCK_BYTES = 16 * 2**20
"""Raw bytes read at a time; a record longer than this grows the buffer (its whole sequence is one block)."""

_GT, _LF, _CR = ord(">"), ord("\n"), ord("\r")
_ASCII_SPACE = np.zeros(256, dtype=np.bool_)
# The ASCII characters Python's str.split() splits on: the id is the header's first word,
# as FastaReader takes it.
for _c in b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f":
    _ASCII_SPACE[_c] = True

# Scanner outcomes
_DONE = 0  # every record of the buffer is read
_MORE = 1  # the last record may go on past the buffer: read more and scan again from it
_OTHER = 2  # a record the scanner does not read begins here: FastaReader takes over


@dataclass
class RecordBlock:
    """Consecutive records of one file: record i's bases are `seq[bounds[i]:bounds[i+1]]`."""

    path: Path
    first_index: int  # position of the first record in its file (0-based)
    seq: np.ndarray  # uint8, the bases as written (case kept), line ends removed
    bounds: np.ndarray  # int64, len(ids) + 1 offsets into seq
    ids: list[str]
    raw_end: int  # bytes of the file (compressed, if it is) read when the block was made: progress

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def bases(self) -> int:
        return int(self.bounds[-1])


@numba.njit(cache=True, nogil=True)
def _scan(buf, n, at_eof, base_class, space, seq, bounds, ids):
    """Read the records of `buf[:n]` into `seq`/`bounds` (bases) and `ids` (ids, each followed by LF).

    Returns (outcome, records, bytes consumed, id bytes written). A record is read only when
    its end is seen: the next line starting with '>' or, with `at_eof`, the end of the buffer.

    One loop, kept whole on purpose: it is the compiled scanner of every input byte, and its
    header, sequence and line states share cursors that a split would pass between compiled
    functions at each line (bench/RESULTS.md, "A compiled FASTA scanner": 1.0 GB/s plain).
    """
    pos = 0
    records = 0
    out = 0
    id_out = 0
    while pos < n:
        start = pos
        id_start = id_out
        if buf[pos] != _GT:  # blank lines before the first record too: FastaReader's (dnaio) call
            return _OTHER, records, start, id_start
        # header: the id is its first word; a non-ASCII header is FastaReader's (UTF-8)
        i = pos + 1
        while i < n and buf[i] != _LF:
            if buf[i] >= 128:
                return _OTHER, records, start, id_start
            i += 1
        if i == n and not at_eof:
            return _MORE, records, start, id_start
        header_end = i
        a = pos + 1
        while a < header_end and space[buf[a]]:
            a += 1
        b = a
        while b < header_end and not space[buf[b]]:
            b += 1
        if a == b:  # empty id: FastaReader says so with its line
            return _OTHER, records, start, id_start
        for j in range(a, b):
            ids[id_out] = buf[j]
            id_out += 1
        ids[id_out] = _LF
        id_out += 1
        # sequence lines until a line starting with '>'
        seq_start = out
        i = header_end + 1
        line_start = True
        while i < n:
            c = buf[i]
            if c == _LF:
                line_start = True
            elif c == _CR:
                pass  # FastaReader drops CR wherever it is (a line "\r>b" is a header to it too)
            elif line_start and c == _GT:
                break
            elif base_class[c] == 255:  # not an IUPAC code: FastaReader gives the error
                return _OTHER, records, start, id_start
            else:
                seq[out] = c
                out += 1
                line_start = False
            i += 1
        if i >= n and not at_eof:
            return _MORE, records, start, id_start
        bounds[records] = seq_start
        bounds[records + 1] = out
        records += 1
        pos = i
    return _DONE, records, pos, id_out


def load_scanner() -> None:
    """Load the compiled scanner (from numba's cache) by scanning one tiny record."""
    data = np.frombuffer(b">a\nACGT\n", dtype=np.uint8)
    _scan(
        data,
        len(data),
        True,
        BASE_CLASS,
        _ASCII_SPACE,
        np.empty(8, np.uint8),
        np.zeros(4, np.int64),
        np.empty(8, np.uint8),
    )


class _Scanner:
    """Iterate over one file's records as blocks; `handover` is the record FastaReader must start at."""

    def __init__(self, path: Path, raw: BinaryIO):
        self.path = path
        self.raw = raw
        self.handover: int | None = None  # index of the first record not scanned, when one is left

    def blocks(self) -> Iterator[RecordBlock]:
        compression = sniff_compression(self.raw)
        # gzip is inflated by python-isal in a thread of its own, beside this scan (the GIL
        # released): 440 -> 490 Mbp/s for one file. Other codecs decompress in this thread.
        threads = 1 if compression == "gz" else 0
        stream = xopen.xopen(self.raw, "rb", threads=threads, format=compression) if compression else self.raw
        buf = np.empty(BLOCK_BYTES, dtype=np.uint8)
        ids = np.empty(0, dtype=np.uint8)  # reused: ids are decoded at once, bounds copied out
        bounds = np.empty(0, dtype=np.int64)
        n = 0
        at_eof = False
        index = 0
        while True:
            if n == len(buf):  # one record fills the buffer: double it
                buf = np.concatenate([buf, np.empty(len(buf), dtype=np.uint8)])
            while not at_eof and n < len(buf):
                try:
                    got = stream.readinto(memoryview(buf)[n:])
                except DECOMPRESSION_ERRORS:  # FastaReader says it, with the records read before
                    self.handover = index
                    return
                at_eof = got == 0
                n += got
            if len(ids) < n + 1:
                ids = np.empty(len(buf) + 1, dtype=np.uint8)
                bounds = np.empty(len(buf) // 2 + 2, dtype=np.int64)  # a record takes 2 bytes at least
            seq = np.empty(n, dtype=np.uint8)  # kept by the batches that hold its contigs
            outcome, records, used, id_bytes = _scan(buf, n, at_eof, BASE_CLASS, _ASCII_SPACE, seq, bounds, ids)
            if records:
                names = ids[: id_bytes - 1].tobytes().decode("ascii").split("\n")
                bases = seq[: bounds[records]]
                yield RecordBlock(self.path, index, bases, bounds[: records + 1].copy(), names, self.raw.tell())
                index += records
            if outcome == _OTHER or (outcome == _DONE and index == 0):  # an empty file too
                self.handover = index
                return
            if outcome == _DONE:
                return
            buf[: n - used] = buf[used:n]
            n -= used


def read_blocks(path: str | os.PathLike[str], block_records: int = 8192) -> Iterator[RecordBlock]:
    """The records of one FASTA/FASTQ file as blocks, in file order."""
    path = Path(path)
    reader = FastaReader(path)  # checks the file; reads what the scanner hands over
    with open(path, "rb") as raw:
        scanner = _Scanner(path, raw)
        yield from scanner.blocks()
    if scanner.handover is not None:
        yield from _exact_blocks(reader, scanner.handover, block_records)


def read_files(paths: list[Path], ahead: int = 2) -> Iterator[tuple[int, RecordBlock]]:
    """(file number, block) of every file, in input order.

    Decompression runs at one core per file (gzip about 750 MB/s here), so with several files
    `ahead` of them are read at once, each by its own thread into a short queue: the scanner
    and the decompressors release the GIL (two gzip files read at 840 Mbp/s on 2 cores
    against 440 one after the other, bench/RESULTS.md). The featurizer reads one file at a
    time per 4 workers. Errors reach the caller in file order, as if the files were read one
    by one.
    """
    if ahead <= 1 or len(paths) == 1:
        for number, path in enumerate(paths):
            for block in read_blocks(path):
                yield number, block
        return
    stop = threading.Event()
    queues = [queue.Queue(maxsize=2) for _ in paths]
    threads = [
        threading.Thread(target=_read_into, args=(path, q, stop), name=f"read-{number}", daemon=True)
        for number, (path, q) in enumerate(zip(paths, queues, strict=True))
    ]
    try:
        for thread in threads[:ahead]:
            thread.start()
        for number, q in enumerate(queues):
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield number, item
            if number + ahead < len(threads):
                threads[number + ahead].start()
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join()


def _read_into(path: Path, blocks: queue.Queue, stop: threading.Event) -> None:
    """Put the blocks of one file into `blocks`, then None (or the error that stopped it)."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for block in read_blocks(path):
            if not put(block):
                return
        put(None)
    except BaseException as err:  # handed to the consuming thread, which raises it
        put(err)


def _exact_blocks(reader: FastaReader, skip: int, block_records: int) -> Iterator[RecordBlock]:
    """FastaReader's records from index `skip` on, grouped into blocks."""
    pieces: list[np.ndarray] = []
    ids: list[str] = []
    first = skip
    for record in reader:
        if record.index < skip:
            continue
        pieces.append(record.sequence)
        ids.append(record.id)
        if len(ids) == block_records:
            yield _join(reader, first, pieces, ids)
            first += len(ids)
            pieces, ids = [], []
    if ids:
        yield _join(reader, first, pieces, ids)


def _join(reader: FastaReader, first: int, pieces: list[np.ndarray], ids: list[str]) -> RecordBlock:
    bounds = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pieces], out=bounds[1:])
    seq = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.uint8)
    return RecordBlock(reader.path, first, seq, bounds, ids, reader.raw_bytes_read)
