"""Raw BSON streams of the MongoDB dumper: ``DocsReader`` (backup side) and ``iter_raw`` (restore
side) from drkit.dumpers.mongodb.oplog (pure logic, no server).

A backup stores the bytes the server sent and a restore inserts ``RawBSONDocument(raw)``, so no
value is ever decoded into Python and re-encoded on the way: every BSON type survives byte for
byte -- also the ones the test server cannot store (Decimal128, MinKey/MaxKey, Code with scope,
DBPointer, the deprecated undefined and symbol types, dates outside Python's datetime range).
"""

from __future__ import annotations

import io
import re
import struct
import uuid
from datetime import UTC, datetime

import bson
import pytest
from bson import (
    SON,
    Code,
    CodecOptions,
    DatetimeConversion,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.raw_bson import RawBSONDocument

from drkit.dumpers.mongodb.oplog import MAX_DOC, DocsReader, iter_raw
from drkit.errors import IntegrityError

OID = ObjectId("64b7f0c2a1b2c3d4e5f60718")


def cstring(s: str) -> bytes:
    return s.encode() + b"\x00"


def bstring(s: str) -> bytes:
    data = s.encode() + b"\x00"
    return struct.pack("<i", len(data)) + data


def document(*elements: bytes) -> bytes:
    body = b"".join(elements) + b"\x00"
    return struct.pack("<i", len(body) + 4) + body


def element(kind: int, key: str, value: bytes) -> bytes:
    return bytes([kind]) + cstring(key) + value


def hand_made() -> list[bytes]:
    """Documents pymongo cannot produce from Python values: DBPointer (0x0C), undefined (0x06),
    symbol (0x0E), duplicate keys, a string with an embedded NUL, ``_id`` not the first field
    (bson.encode moves it first)."""
    return [
        document(element(0x10, "b", struct.pack("<i", 1)), element(0x07, "_id", OID.binary),
                 element(0x10, "a", struct.pack("<i", 2))),
        document(element(0x07, "_id", OID.binary), element(0x0C, "ptr", bstring("app.users") + OID.binary)),
        document(element(0x06, "undef", b""), element(0x0E, "sym", bstring("a-symbol"))),
        document(element(0x10, "k", struct.pack("<i", 1)), element(0x10, "k", struct.pack("<i", 2))),
        document(element(0x02, "s", bstring("nul\x00inside"))),
    ]


SUBTYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x80, 0xFF]


def every_type() -> list[bytes]:
    """One document per group of BSON types, encoded by bson (field order as given)."""
    docs: list[dict | SON] = [
        SON([("z", 1), ("a", 2), ("m", 3), ("b", SON([("y", 1), ("_id", 2), ("x", 3)]))]),  # field order
        {"_id": 1, "i32": 2**31 - 1, "i32neg": -(2**31), "i64small": Int64(1), "i64": 2**31,
         "i64max": Int64(2**63 - 1), "i64min": Int64(-(2**63)), "dbl": 1.0, "negzero": -0.0,
         "nan": float("nan"), "inf": float("inf"), "tiny": 5e-324},
        {"_id": 2, "dec": Decimal128("1234567890.123456789012345678901234"), "decnan": Decimal128("NaN"),
         "decneg0": Decimal128("-0"), "decmax": Decimal128("9.999999999999999999999999999999999E+6144"),
         "decinf": Decimal128("-Infinity")},
        {"_id": 3, "min": MinKey(), "max": MaxKey(), "null": None, "t": True, "f": False},
        {"_id": 4, "code": Code("function () { return 1; }"),
         "scoped": Code("function () { return x + y; }", {"x": 1, "y": {"deep": [1, 2]}})},
        {"_id": 5, "ref": DBRef("users", OID), "refdb": DBRef("users", 7, "otherdb"),
         "refextra": DBRef("users", "k", "db", extra_field=True)},
        {"_id": 6, "nested": [[1, [2, [3, [4, []]]]], {"a": [{"b": [{"c": []}]}]}, [], {}],
         "doc": SON([("y", 1), ("x", {"w": 2, "v": [SON([("u", 3), ("t", 4)])]})])},
        {"_id": 7, **{f"bin{s}": Binary(bytes(range(17)) if s != 4 else uuid.UUID(int=42).bytes, s)
                      for s in SUBTYPES}, "emptybin": Binary(b"", 0)},
        {"_id": 8, "re": Regex("^a.*b$", "imsux"), "re2": Regex("[\\x00-\\x7f]+", ""),
         "re3": re.compile("x+y", re.IGNORECASE)},
        {"_id": 9, "ts": Timestamp(1_796_000_000, 17), "tsmin": Timestamp(0, 0),
         "tsmax": Timestamp(2**32 - 1, 2**32 - 1)},
        {"_id": 10, "dt": datetime(2026, 12, 7, 12, 0, 0, 123000, tzinfo=UTC),
         "epoch": datetime(1970, 1, 1, tzinfo=UTC), "before": datetime(1, 1, 1, tzinfo=UTC),
         "far_past": DatetimeMS(-(2**62)), "far_future": DatetimeMS(2**63 - 1), "one_past_max": DatetimeMS(253402300800000)},
        {"_id": 11, "str": "plain", "utf8": "Grüße, 世界, \U0001f600", "empty": ""},
        {},  # the smallest document: 5 bytes
    ]
    return [bson.encode(d) for d in docs]


def all_docs() -> list[bytes]:
    return every_type() + hand_made()


def read_all(reader: DocsReader, n: int) -> bytes:
    out = []
    while True:
        chunk = reader.read(n)
        if not chunk:
            return b"".join(out)
        assert len(chunk) <= n
        out.append(chunk)


class ShortReads(io.RawIOBase):
    """A raw stream whose ``readinto`` returns at most ``step`` bytes (as pipes and sockets may)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


# -- round trips -----------------------------------------------------------------------------------

def test_hand_made_documents_are_well_formed_bson():
    for raw in hand_made():
        assert bson.is_valid(raw)
    assert bson.decode(hand_made()[1])["ptr"] == DBRef("app.users", OID)  # how bson reads a DBPointer


def test_every_bson_type_round_trips_byte_for_byte():
    docs = all_docs()
    reader = DocsReader(RawBSONDocument(d) for d in docs)
    back = list(iter_raw(reader, "backup X stream data/app/things"))
    assert back == docs
    assert reader.count == len(docs) and reader.size == sum(map(len, docs))


def test_plain_bytes_are_accepted_as_documents_too():
    docs = all_docs()
    assert list(iter_raw(DocsReader(docs), "w")) == docs


def test_on_doc_sees_every_document_in_order():
    docs = [RawBSONDocument(d) for d in all_docs()]
    seen: list[RawBSONDocument] = []
    reader = DocsReader(docs, on_doc=seen.append)
    read_all(reader, 4096)
    assert [s.raw for s in seen] == [d.raw for d in docs]


def test_field_order_survives():
    raw = next(iter_raw(DocsReader(every_type()[:1]), "w"))
    assert list(RawBSONDocument(raw).keys()) == ["z", "a", "m", "b"]
    assert list(RawBSONDocument(raw)["b"].keys()) == ["y", "_id", "x"]
    raw = next(iter_raw(DocsReader(hand_made()[:1]), "w"))
    assert list(RawBSONDocument(raw).keys()) == ["b", "_id", "a"]


def test_types_decode_as_they_were_written():
    opts = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO, tz_aware=True)
    back = [bson.decode(r, codec_options=opts) for r in iter_raw(DocsReader(every_type()), "w")]
    ints = back[1]
    assert type(ints["i32"]) is int and type(ints["i64small"]) is Int64 and type(ints["dbl"]) is float
    assert bson.encode(ints)[4:] == every_type()[1][4:]  # int32 stayed int32, int64 stayed int64
    assert back[2]["dec"] == Decimal128("1234567890.123456789012345678901234")
    assert back[4]["scoped"].scope == {"x": 1, "y": {"deep": [1, 2]}}
    bins = {k: getattr(v, "subtype", None) for k, v in back[7].items() if k.startswith("bin")}
    assert bins == {f"bin{s}": (s or None) for s in SUBTYPES}  # subtype 0 decodes to bytes
    assert back[7]["bin0"] == bytes(range(17))
    assert back[10]["far_past"] == DatetimeMS(-(2**62)) and back[10]["far_future"] == DatetimeMS(2**63 - 1)
    assert back[10]["dt"] == datetime(2026, 12, 7, 12, 0, 0, 123000, tzinfo=UTC)
    assert isinstance(back[3]["min"], MinKey) and isinstance(back[3]["max"], MaxKey)
    assert back[9]["tsmax"] == Timestamp(2**32 - 1, 2**32 - 1)


@pytest.mark.parametrize("n", [1, 7, 4096])
def test_reading_in_odd_chunk_sizes_gives_identical_bytes(n):
    docs = all_docs()
    data = read_all(DocsReader(iter(docs)), n)
    assert data == b"".join(docs)
    assert list(iter_raw(io.BytesIO(data), "w")) == docs


@pytest.mark.parametrize("buffer_size", [1, 7, 4096])
def test_iter_raw_through_a_buffered_reader_of_any_buffer_size(buffer_size):
    docs = all_docs()
    fh = io.BufferedReader(DocsReader(docs), buffer_size=buffer_size)
    assert list(iter_raw(fh, "w")) == docs


@pytest.mark.parametrize("step", [1, 3, 7])
def test_iter_raw_over_a_buffered_stream_of_short_reads(step):
    """The restore reads through io.BufferedReader (repository.reader.open_stream), which fills
    every read(n) from a raw stream that returns fewer bytes at a time."""
    docs = all_docs()
    fh = io.BufferedReader(ShortReads(b"".join(docs), step), buffer_size=16)
    assert list(iter_raw(fh, "w")) == docs


def test_a_document_larger_than_a_server_allows_still_round_trips():
    big = bson.encode({"_id": 1, "blob": Binary(b"\xab" * (17 << 20))})  # > 16 MiB, < MAX_DOC
    small = bson.encode({"_id": 2})
    assert list(iter_raw(DocsReader([big, small]), "w")) == [big, small]


def test_empty_stream_holds_no_documents():
    reader = DocsReader([])
    assert reader.read(10) == b"" and reader.count == 0
    assert list(iter_raw(io.BytesIO(b""), "w")) == []


# -- what the restore's insert relies on -----------------------------------------------------------

def test_raw_bson_document_re_encodes_to_the_same_bytes():
    for raw in iter_raw(DocsReader(all_docs()), "w"):
        assert bson.encode(RawBSONDocument(raw)) == raw


def test_raw_bson_document_is_embedded_unchanged():
    """insert_many puts each document into the command's document sequence as it is."""
    for raw in all_docs():
        outer = bson.encode(SON([("doc", RawBSONDocument(raw))]))
        assert raw in outer


def test_decoding_would_not_round_trip_what_raw_keeps():
    """Why the dumper never decodes documents: bson rewrites a DBPointer as a DBRef document and
    a symbol as a string."""
    ptr, undef_sym = hand_made()[:2]
    assert bson.encode(bson.decode(ptr)) != ptr
    assert bson.encode(bson.decode(undef_sym)) != undef_sym


# -- damaged streams -------------------------------------------------------------------------------

def test_truncated_length_prefix_raises_naming_the_stream_and_offset():
    docs = every_type()[:2]
    data = b"".join(docs) + b"\x10\x00"
    with pytest.raises(IntegrityError) as exc:
        list(iter_raw(io.BytesIO(data), "backup B1 stream data/app/c"))
    msg = str(exc.value)
    assert "backup B1 stream data/app/c" in msg and "truncated" in msg and f"at byte {len(docs[0]) + len(docs[1])}" in msg


def test_truncated_body_raises():
    docs = every_type()[:3]
    data = b"".join(docs)[:-3]
    it = iter_raw(io.BytesIO(data), "slice S")
    assert next(it) == docs[0] and next(it) == docs[1]  # the documents before it are whole
    with pytest.raises(IntegrityError) as exc:
        next(it)
    assert "slice S" in str(exc.value) and f"at byte {len(docs[0]) + len(docs[1])}" in str(exc.value)


def test_torn_document_without_its_terminating_nul_raises():
    doc = bytearray(every_type()[3])
    doc[-1] = 0x01
    with pytest.raises(IntegrityError, match=r"slice T: truncated BSON document at byte 0"):
        list(iter_raw(io.BytesIO(bytes(doc) + every_type()[4]), "slice T"))


@pytest.mark.parametrize("length", [0, 4, -1, -(2**31), MAX_DOC + 1, 2**31 - 1])
def test_bad_length_raises_without_reading_the_body(length):
    head = struct.pack("<i", length)
    good = every_type()[0]
    with pytest.raises(IntegrityError) as exc:
        list(iter_raw(io.BytesIO(good + head + b"\x00" * 64), "backup B2 stream oplog.bson"))
    msg = str(exc.value)
    assert "backup B2 stream oplog.bson" in msg and f"bad BSON document length {length}" in msg
    assert f"at byte {len(good)}" in msg


def test_oversized_length_is_refused_before_allocating():
    class Huge(io.RawIOBase):
        """Claims a document of MAX_DOC + 1 bytes; reading its body would be the bug."""

        def __init__(self) -> None:
            self.head = struct.pack("<i", MAX_DOC + 1)
            self.reads: list[int] = []

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            self.reads.append(n)
            out, self.head = self.head[:n], self.head[n:]
            return out

    fh = Huge()
    with pytest.raises(IntegrityError, match="bad BSON document length"):
        list(iter_raw(fh, "w"))  # type: ignore[arg-type]
    assert fh.reads == [4]


def test_garbage_after_good_documents_is_detected():
    docs = every_type()[:2]
    with pytest.raises(IntegrityError):
        list(iter_raw(io.BytesIO(b"".join(docs) + b"\xff" * 9), "w"))


def test_stream_cut_anywhere_is_never_silently_short():
    """Every prefix of a stream either ends on a document boundary (the documents before it come
    back whole) or raises IntegrityError."""
    docs = every_type()[:4] + hand_made()[1:2]
    data = b"".join(docs)
    bounds = {0}
    for d in docs:
        bounds.add(max(bounds) + len(d))
    for cut in range(len(data)):
        fh = io.BufferedReader(io.BytesIO(data[:cut]))
        if cut in bounds:
            back = list(iter_raw(fh, "w"))
            assert b"".join(back) == data[:cut]
        else:
            with pytest.raises(IntegrityError):
                list(iter_raw(fh, "w"))


def test_iter_raw_reads_through_short_reads_of_an_unbuffered_stream() -> None:
    import io

    import bson

    from drkit.dumpers.mongodb.oplog import iter_raw

    docs = [bson.encode({"_id": i, "s": "x" * (i * 37)}) for i in range(20)]

    class Trickle(io.RawIOBase):  # at most 7 bytes per read, as a pipe or socket may give
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # noqa: ANN001
            n = min(7, len(b), len(self.data) - self.pos)
            b[:n] = self.data[self.pos:self.pos + n]
            self.pos += n
            return n

    assert list(iter_raw(Trickle(b"".join(docs)), "t")) == docs
