"""Lean shard reader: walks tar headers itself so a loader reads only the bytes a clip needs.

``tarfile`` and webdataset read every member in full and spend ~56 µs of Python per member header. A
training clip needs the metadata of its video and 16 of its frames, so this reader

* parses the 512-byte ustar headers directly (checksum verified, GNU long names and PAX ``path``/``size``
  records understood, although shard writers never emit them);
* hands out ``.json`` and ``.cls`` members as bytes (they are small) and the ``.jpgs`` member as a
  :class:`Member` the caller reads a byte *range* of (``read_range``) — the frames of one clip are one
  contiguous range thanks to the offset table;
* skips what is not asked for with ``seek`` when the file is random-access (local files; a clip from a
  300-frame video then costs the same I/O as one from a 30-frame video) or by reading and discarding when
  it is a sequential stream (object stores, where one long GET beats many small ranged ones).

Only the shard layout of ``shards/FORMAT.md`` is assumed: the members of a sample are consecutive and
``.jpgs`` is its last member.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from shards import storage
from shards.format import CLS_EXT, FRAMES_EXT, MAX_SMALL_MEMBER, META_EXT, SampleError, validate_sample

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # '7' (contiguous file) is a regular file for readers


class ShardFormatError(ValueError):
    """The tar structure of a shard is broken (bad header checksum, truncated member, ...).

    Everything after the broken point of that shard is unreadable.
    """


@dataclass(frozen=True)
class Member:
    """A tar member whose data starts at byte ``offset`` of the shard file and is ``size`` bytes long."""

    name: str
    offset: int
    size: int


@dataclass
class RawSample:
    """One sample as stored: small members as bytes, the frame blob as a :class:`Member` to read from.

    ``members`` maps extension → bytes (``json``, ``cls`` and any other small member); ``frames`` is the
    ``.jpgs`` member or None when the sample lacks it.
    """

    key: str
    index: int
    members: dict[str, bytes] = field(default_factory=dict)
    frames: Member | None = None
    #: ``(data offset, size)`` in the shard file of each small member (what an index records).
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Set when a member was refused unread (e.g. a ``.json`` member larger than ``MAX_SMALL_MEMBER``).
    error: str | None = None

    def missing(self) -> list[str]:
        have = set(self.members) | ({FRAMES_EXT} if self.frames is not None else set())
        return [e for e in (META_EXT, CLS_EXT, FRAMES_EXT) if e not in have]


def _octal(field_bytes: bytes) -> int:
    """A numeric header field; ValueError when it is not a non-negative octal (or GNU base-256) number."""
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 encoding for large sizes
        if field_bytes[0] & 0x40:
            raise ValueError("negative base-256 number")
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip()
    if text and not all(48 <= c <= 55 for c in text):  # int(.., 8) would accept "-", "+", "_"
        raise ValueError(f"not an octal number: {text[:16]!r}")
    return int(text, 8) if text else 0


def _signed_checksum(header: bytes) -> int:
    # Some old writers summed the header as signed chars; tarfile accepts both, so do we.
    return sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32


def _cstr(field_bytes: bytes) -> str:
    return field_bytes.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """PAX ``"<len> <key>=<value>\\n"`` records; ValueError on anything malformed (never loops forever)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        digits = data[pos:space]
        if not digits.isdigit():
            raise ValueError(f"bad PAX record length {digits[:16]!r}")
        length = int(digits)
        if length <= space - pos or pos + length > len(data):  # must cover its own length field
            raise ValueError(f"PAX record length {length} out of range")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class ShardReader:
    """Reads the samples of one shard file in stored order.

    Args:
        f: a binary file object (a ``pyarrow.NativeFile`` from ``open_input_file``/``open_input_stream``
            or any object with ``read``; ``seek`` is used when ``seekable`` is true).
        source: the shard's path or URI, used in error messages.
        seekable: skip unread bytes with ``seek`` (default: ask the file).

    The reader is a cursor: :meth:`samples` yields :class:`RawSample` objects that are valid only until the
    next one is requested; :meth:`read_range` reads part of the current sample's frame blob and, on a
    sequential stream, only forward of what was read before.
    """

    def __init__(self, f: Any, source: str, *, seekable: bool | None = None, readahead: int = 1 << 16,
                 size: int | None = None):
        self._f = f
        self.source = source
        if seekable is None:
            seekable = bool(getattr(f, "seekable", lambda: False)())
        self._seekable = seekable
        if size is None and seekable:
            try:
                size = int(f.size()) if hasattr(f, "size") else None
            except (OSError, TypeError, ValueError):
                size = None
        #: The shard's size in bytes when known: no member may claim to extend past it (a huge tar size
        #: field would otherwise become a huge allocation).
        self.size = size
        # A sample's headers, metadata and label are ~7 KB in a row: one read-ahead chunk serves them all, so
        # a sample costs two file reads (that chunk and its frame range) instead of six.
        self._readahead = readahead
        self._pos = f.tell() if seekable else 0  # logical cursor (file offset)
        self._fpos = self._pos  # where the file object is
        self._buf = b""
        self._buf_at = self._pos  # file offset of _buf[0]

    # -- low level -----------------------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes at the cursor (fewer only at the end of the file); advance the cursor."""
        off = self._pos - self._buf_at
        if 0 <= off < len(self._buf):
            head = self._buf[off : off + n]
            self._pos += len(head)
            if len(head) == n:
                return head
            # The buffer ends where the file position is: the rest follows without seeking.
            return head + self._take(n - len(head))
        if self._pos != self._fpos:
            if self._seekable:
                self._f.seek(self._pos)
            else:
                if self._pos < self._fpos:
                    raise ValueError(f"{self.source}: cannot read backwards on a sequential stream")
                while self._fpos < self._pos:  # discard what is skipped
                    chunk = self._f.read(min(self._pos - self._fpos, 1 << 22))
                    if not chunk:
                        break
                    self._fpos += len(chunk)
            self._fpos = self._pos
        data = bytes(self._f.read(max(n, self._readahead)))
        self._fpos += len(data)
        self._buf, self._buf_at = data, self._pos
        got = data[:n] if len(data) > n else data
        self._pos += len(got)
        return got

    def _read_exact(self, n: int) -> bytes:
        start = self._pos
        data = self._take(n)
        if len(data) != n:
            raise ShardFormatError(f"{self.source}: truncated at byte {start + len(data)} "
                                   f"(wanted {n} bytes)")
        return data

    def _seek(self, target: int) -> None:
        if target < self._pos and not self._seekable and target < self._buf_at:
            raise ValueError(f"{self.source}: cannot read backwards on a sequential stream")
        self._pos = target  # lazy: the next read seeks (or discards) when the buffer does not cover it

    def _next_member(self) -> Member | None:
        """Parse headers up to the next regular file; return it (cursor at its data) or None at the end."""
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            start = self._pos
            header = self._take(BLOCK)
            if not header:  # some writers omit the end-of-archive blocks
                return None
            if len(header) != BLOCK:
                raise ShardFormatError(f"{self.source}: truncated header at byte {start}")
            if header == _ZERO_BLOCK:
                return None
            try:
                stored = _octal(header[148:156])
                size = _octal(header[124:136])
            except ValueError as exc:
                raise ShardFormatError(f"{self.source}: bad tar header at byte {start} ({exc})") from None
            actual = sum(header) - sum(header[148:156]) + 8 * 32  # the checksum field counts as spaces
            if stored != actual and stored != _signed_checksum(header):
                raise ShardFormatError(f"{self.source}: bad tar header checksum at byte {start}")
            self._check_size(size, start)
            kind = header[156:157]
            name = _cstr(header[0:100])
            if header[257:262] == b"ustar":
                prefix = _cstr(header[345:500])
                if prefix:
                    name = f"{prefix}/{name}"
            data_end = self._pos + size + (-size % BLOCK)
            if kind in (b"L", b"x") and size > 1 << 20:
                raise ShardFormatError(f"{self.source}: {size}-byte extended header at byte {start}")
            if kind == b"L":  # GNU long name for the next member
                long_name = self._read_exact(size).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                self._seek(data_end)
                continue
            if kind == b"x":  # PAX extended header for the next member
                try:
                    pax = _pax_records(self._read_exact(size))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ShardFormatError(f"{self.source}: bad PAX header at byte {start} ({exc})") from None
                self._seek(data_end)
                continue
            if kind not in _REGULAR:  # directories, links, global PAX headers: not sample data
                self._seek(data_end)
                continue
            if long_name is not None:
                name = long_name
            if "path" in pax:
                name = pax["path"]
            if "size" in pax:
                if not pax["size"].isdigit():
                    raise ShardFormatError(f"{self.source}: bad PAX size at byte {start}")
                size = int(pax["size"])
                self._check_size(size, start)
            return Member(name=name, offset=self._pos, size=size)

    def _check_size(self, size: int, start: int) -> None:
        end = start + BLOCK + size
        if self.size is not None and end > self.size:
            raise ShardFormatError(f"{self.source}: member at byte {start} claims {size} B, past the end of the "
                                   f"{self.size}-byte shard")
        if size > 1 << 40:  # size unknown (a stream): still refuse the absurd
            raise ShardFormatError(f"{self.source}: member at byte {start} claims {size} B")

    def _end_of(self, m: Member) -> int:
        return m.offset + m.size + (-m.size % BLOCK)

    # -- samples ---------------------------------------------------------------------------------------

    def samples(self) -> Iterator[RawSample]:
        """Yield the samples in stored order; a sample's ``.jpgs`` data is skipped unless read meanwhile.

        A sample that lacks a member (the key changes before its ``.jpgs``) is still yielded, with
        :meth:`RawSample.missing` naming what it lacks. Raises :class:`ShardFormatError` when the tar
        structure itself is broken.
        """
        index = 0
        current: RawSample | None = None
        while True:
            m = self._next_member()
            if m is None:
                if current is not None:
                    yield current
                return
            base, _, ext = m.name.rpartition("/")[2].partition(".")
            if current is not None and base != current.key:
                yield current  # lacks its .jpgs member; the consumer reports it
                index += 1
                current = None
            if current is None:
                current = RawSample(key=base, index=index)
            if ext == FRAMES_EXT:
                current.frames = m
                yield current
                index += 1
                current = None
                self._seek(self._end_of(m))
            elif m.size > MAX_SMALL_MEMBER:
                current.error = f".{ext} member of {m.size} B exceeds {MAX_SMALL_MEMBER} B"
                self._seek(self._end_of(m))
            else:
                current.members[ext] = self._read_exact(m.size)
                current.ranges[ext] = (m.offset, m.size)
                self._seek(self._end_of(m))

    def read_range(self, m: Member, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of member ``m`` (offsets relative to the member's data)."""
        if not 0 <= start <= stop <= m.size:
            raise ShardFormatError(f"{self.source}: range {start}:{stop} outside a {m.size}-byte member")
        self._seek(m.offset + start)
        return self._read_exact(stop - start)


def check_sample(raw: RawSample, *, num_classes: int | None = None) -> tuple[dict[str, Any], int]:
    """Parse and validate one sample's metadata against its members; the check training and ``verify`` share.

    Returns ``(meta, label)``: the ``.json`` object (``offsets`` has ``num_frames + 1`` increasing integer byte
    offsets into the ``.jpgs`` member, starting at 0 and ending at its size; ``stride`` defaults to 1) and the
    ``.cls`` label index (within ``[-1, num_classes)`` when ``num_classes`` is given). Raises
    :class:`shards.format.SampleError` (a ``ValueError``) saying what is wrong, whatever the bytes; the frame
    bytes themselves are not read.
    """
    if raw.error is not None:
        raise SampleError(raw.error)
    if raw.frames is None:
        raise SampleError(f"lacks member(s) {raw.missing()}")
    missing = raw.missing()
    if missing:
        raise SampleError(f"lacks member(s) {missing}")
    return validate_sample(raw.members.get(META_EXT), raw.members.get(CLS_EXT), raw.frames.size,
                           num_classes=num_classes)


def open_shard(url: str, *, sequential: bool | None = None,
               filesystem: tuple[pafs.FileSystem, str] | None = None) -> tuple[Any, ShardReader]:
    """Open a shard through pyarrow.fs; return ``(file, reader)`` (close the file when done).

    ``sequential``: stream the file with large buffered reads instead of seeking (default: sequential for
    anything but the local file system).
    """
    fs, path = filesystem if filesystem is not None else storage.resolve(url)
    if sequential is None:
        sequential = not isinstance(fs, pafs.LocalFileSystem)
    if sequential:
        size = fs.get_file_info(path).size  # bounds every member size read from the (untrusted) headers
        f = fs.open_input_stream(path, compression=None, buffer_size=4 << 20)
        return f, ShardReader(f, url, seekable=False, size=size)
    f = fs.open_input_file(path)
    return f, ShardReader(f, url, seekable=True)


def scan_shard(url: str) -> list[tuple[str, int, int]]:
    """``(key, num_frames, stride)`` of every sample of a shard, reading only the metadata members.

    For planning evaluation windows when no manifest is at hand; raises ``ValueError`` on bad metadata.
    """
    f, reader = open_shard(url)
    out = []
    try:
        for raw in reader.samples():
            if META_EXT not in raw.members:
                raise ValueError(f"{url}: sample {raw.key!r} lacks its .{META_EXT} member")
            try:
                meta = json.loads(raw.members[META_EXT])
                out.append((raw.key, int(meta["num_frames"]), int(meta.get("stride", 1))))
            except (ValueError, TypeError, KeyError, RecursionError, UnicodeDecodeError) as exc:
                raise ValueError(f"{url}: sample {raw.key!r} has unreadable metadata ({exc})") from None
    finally:
        f.close()
    return out
