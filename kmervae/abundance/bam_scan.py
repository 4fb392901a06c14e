"""A compiled pass over a BAM file's records: per-contig depth by MetaBAT's definitions.

BAM is BGZF (gzip blocks, inflated by python-isal in a thread of its own through xopen, as the
FASTA scanner does) around a simple binary record layout (the SAM/BAM specification, section
4.2). One numba kernel walks the inflated records: it applies the filters of
`bam_depth` (flags, mapping quality, identity from the CIGAR and the NM tag), adds each aligned
block (CIGAR M, = and X) to the current contig's depth profile, and when the file moves on to
the next contig (it is sorted by coordinate) turns the profile into the mean and variance of
its middle bases. Memory is one profile the size of the longest contig, whatever the file.

Measured against pysam's record loop on the same files (bench/RESULTS.md "Abundance from BAM
files"): the loop spent 2.6 microseconds a record in Python. `bam_depth.sample_depth` uses this
kernel for BAM files and pysam for SAM and CRAM, which it reads as well.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numba
import numpy as np
import xopen

from kmervae.base.errors import DECOMPRESSION_ERRORS, InputError

CHUNK_BYTES = 8 * 2**20
"""Inflated bytes handed to the kernel at a time; a record longer than this grows the buffer."""

# Kernel outcomes
_OK = 0
_UNSORTED = 1  # a record of an earlier contig after a later one
_CORRUPT = 2  # a record whose fields do not fit together

# Counters (`counts` array of the kernel)
_RECORDS, _COUNTED, _LOW, _BAD_RECORD = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True, inline="always")
def _le32(buf, at):
    return np.int32(buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16) | (np.uint32(buf[at + 3]) << 24))


@numba.njit(cache=True, nogil=True, inline="always")
def _le_u16(buf, at):
    return buf[at] | (buf[at + 1] << 8)


@numba.njit(cache=True, nogil=True)
def _nm(buf, at, end):
    """The NM tag's value in the aux fields buf[at:end]; 0 when absent (an exact read)."""
    while at + 3 <= end:
        tag0, tag1, kind = buf[at], buf[at + 1], buf[at + 2]
        at += 3
        if kind == 65 or kind == 99 or kind == 67:  # A, c, C
            size = 1
        elif kind == 115 or kind == 83:  # s, S
            size = 2
        elif kind == 105 or kind == 73 or kind == 102:  # i, I, f
            size = 4
        elif kind == 90 or kind == 72:  # Z, H: NUL-terminated
            while at < end and buf[at] != 0:
                at += 1
            at += 1
            continue
        elif kind == 66:  # B: subtype, count, values
            sub = buf[at]
            count = _le32(buf, at + 1)
            width = 1 if sub in (99, 67) else 2 if sub in (115, 83) else 4
            at += 5 + count * width
            continue
        else:
            return np.int64(-1)  # unknown type: corrupt
        if tag0 == 78 and tag1 == 77:  # "NM"
            if kind == 99:
                return np.int64(np.int8(buf[at]))
            if kind == 67:
                return np.int64(buf[at])
            if kind == 115:
                return np.int64(np.int16(_le_u16(buf, at)))
            if kind == 83:
                return np.int64(_le_u16(buf, at))
            return np.int64(_le32(buf, at))
        at += size
    return np.int64(0)


@numba.njit(cache=True, nogil=True)
def finish(profile, length, edge, mean, variance, tid):
    """Mean and sample variance of contig `tid`'s depth over its middle bases, from the
    difference array `profile[:length + 1]`, which is zeroed again for the next contig."""
    lo, hi = (edge, length - edge) if length > 2 * edge else (0, length)
    depth = 0
    total = 0.0
    squares = 0.0
    for i in range(length):
        depth += profile[i]
        profile[i] = 0
        if lo <= i < hi:
            total += depth
            squares += float(depth) * depth
    profile[length] = 0
    n = hi - lo
    if n > 0:
        m = total / n
        mean[tid] = m
        variance[tid] = (squares - n * m * m) / (n - 1) if n > 1 else 0.0


@numba.njit(cache=True, nogil=True)
def _scan(buf, n, lengths, skip_flags, min_mapq, min_identity, edge, state, profile, mean, variance, finished, counts):
    """Read the complete records of buf[:n]; returns (outcome, bytes consumed).
    `state[0]` is the contig being profiled (-1: none yet), carried across calls.

    One loop, kept whole on purpose: it is the compiled inner loop over every BAM record (1.6 M
    records/s per core, bench/RESULTS.md "Abundance from BAM files"), and a split would pass the
    record's offsets and the profile state between compiled functions at each record."""
    at = 0
    while at + 4 <= n:
        size = _le32(buf, at)
        if size < 32:
            return _CORRUPT, at
        if at + 4 + size > n:
            break
        rec = at + 4
        end = rec + size
        at = end
        counts[_RECORDS] += 1
        tid = _le32(buf, rec)
        pos = _le32(buf, rec + 4)
        l_name = buf[rec + 8]
        mapq = buf[rec + 9]
        n_cigar = _le_u16(buf, rec + 12)
        flag = _le_u16(buf, rec + 14)
        l_seq = _le32(buf, rec + 16)
        if flag & skip_flags or tid < 0:
            continue
        if tid >= len(lengths) or pos < 0 or l_seq < 0:
            return _CORRUPT, rec - 4
        current = state[0]
        if tid != current:
            if tid < current or finished[tid]:
                return _UNSORTED, rec - 4
            if current >= 0:
                finish(profile, lengths[current], edge, mean, variance, current)
                finished[current] = True
            state[0] = tid
        if mapq < min_mapq:
            counts[_LOW] += 1
            continue
        cigar = rec + 32 + l_name
        aux = cigar + 4 * n_cigar + (l_seq + 1) // 2 + l_seq
        if aux > end:
            return _CORRUPT, rec - 4
        matches = 0
        gaps = 0
        for i in range(n_cigar):
            word = np.uint32(_le32(buf, cigar + 4 * i))
            op = word & 15
            oplen = word >> 4
            if op == 0 or op == 7 or op == 8:
                matches += oplen
            elif op == 1 or op == 2:
                gaps += oplen
        nm = _nm(buf, aux, end)
        if nm < 0:
            return _CORRUPT, rec - 4
        exact = matches - max(nm - gaps, 0)
        if exact < min_identity * (matches + gaps):
            counts[_LOW] += 1
            continue
        counts[_COUNTED] += 1
        length = lengths[tid]
        ref = pos
        for i in range(n_cigar):
            word = np.uint32(_le32(buf, cigar + 4 * i))
            op = word & 15
            oplen = np.int64(word >> 4)
            if op == 0 or op == 7 or op == 8:
                profile[min(ref, length)] += 1
                profile[min(ref + oplen, length)] -= 1
                ref += oplen
            elif op == 2 or op == 3:  # D, N: along the contig, no depth
                ref += oplen
    return _OK, at


def _read_exact(stream, size: int, path: Path) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise InputError(f"{path}: the BAM header ends early; is the file complete?")
    return data


def read_header(stream, path: Path) -> tuple[list[str], np.ndarray, str | None]:
    """Contig names, lengths and the @HD sort order of an inflated BAM stream, left at the first record."""
    if _read_exact(stream, 4, path) != b"BAM\x01":
        raise InputError(f"{path}: not a BAM file (no BAM magic after inflating)")
    (l_text,) = struct.unpack("<i", _read_exact(stream, 4, path))
    text = _read_exact(stream, l_text, path).rstrip(b"\0").decode(errors="replace")
    (n_ref,) = struct.unpack("<i", _read_exact(stream, 4, path))
    names, lengths = [], []
    for _ in range(n_ref):
        (l_name,) = struct.unpack("<i", _read_exact(stream, 4, path))
        names.append(_read_exact(stream, l_name, path).rstrip(b"\0").decode())
        lengths.append(struct.unpack("<i", _read_exact(stream, 4, path))[0])
    order = None
    for line in text.splitlines():
        if line.startswith("@HD"):
            fields = dict(f.split(":", 1) for f in line.split("\t")[1:] if ":" in f)
            order = fields.get("SO")
    return names, np.asarray(lengths, dtype=np.int64), order


def is_bam(path: Path) -> bool:
    """Whether the file is BGZF-compressed (gzip with the BC extra field): BAM, not SAM or CRAM."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    return head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"


def checked_header(stream, path: Path) -> tuple[list[str], np.ndarray]:
    """The contigs and lengths of a BAM header; refused when unreadable, empty or not sorted by coordinate."""
    try:
        names, lengths, order = read_header(stream, path)
    except DECOMPRESSION_ERRORS as err:
        raise InputError(f"{path}: not a readable BAM file ({err}); is the file complete?") from None
    if not names:
        raise InputError(f"{path}: the BAM header lists no contigs; give the BAM files of reads mapped to the assembly")
    if order not in (None, "coordinate"):
        raise InputError(f"{path}: sorted by {order}, not by coordinate; sort it with 'samtools sort'")
    return names, lengths


def scan_bam(path: Path, settings, skip_flags: int):
    """(contigs, lengths, mean, variance, records, counted, low_identity, seconds) of one BAM file."""
    started = time.perf_counter()
    with xopen.xopen(path, "rb", threads=1, format="gz") as stream:
        names, lengths = checked_header(stream, path)
        mean = np.zeros(len(names))
        variance = np.zeros(len(names))
        finished = np.zeros(len(names), dtype=np.bool_)
        profile = np.zeros(int(lengths.max()) + 1, dtype=np.int32)
        state = np.array([-1], dtype=np.int64)
        counts = np.zeros(4, dtype=np.int64)
        buf = np.empty(CHUNK_BYTES, dtype=np.uint8)
        n = 0
        while True:
            if n == len(buf):  # one record larger than the buffer: double it
                buf = np.concatenate([buf, np.empty(len(buf), dtype=np.uint8)])
            try:
                got = stream.readinto(memoryview(buf)[n:])
            except DECOMPRESSION_ERRORS as err:
                raise InputError(
                    f"{path}: unreadable after record {int(counts[_RECORDS])} ({err}); is the file complete?"
                ) from None
            n += got
            outcome, used = _scan(
                buf, n, lengths, skip_flags, settings.min_mapq, settings.min_identity, settings.edge_bases,
                state, profile, mean, variance, finished, counts,
            )  # fmt: skip
            if outcome == _UNSORTED:
                raise InputError(
                    f"{path}: record {int(counts[_RECORDS])} is out of coordinate order; sort the file with "
                    "'samtools sort'"
                )
            if outcome == _CORRUPT:
                raise InputError(f"{path}: record {int(counts[_RECORDS])} is malformed; is this a valid BAM file?")
            buf[: n - used] = buf[used:n]
            n -= used
            if got == 0:
                break
        if n:
            raise InputError(f"{path}: the last record is cut off after record {int(counts[_RECORDS])}")
        if state[0] >= 0:
            finish(profile, lengths[state[0]], settings.edge_bases, mean, variance, state[0])
    return (
        names,
        lengths,
        mean,
        variance,
        int(counts[_RECORDS]),
        int(counts[_COUNTED]),
        int(counts[_LOW]),
        (time.perf_counter() - started),
    )
