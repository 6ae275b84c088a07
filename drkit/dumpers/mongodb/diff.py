"""Apply MongoDB's ``$v: 2`` delta updates ("document diffs") to a document, in pure Python.

MongoDB 5.0+ writes an update's oplog entry as ``{"$v": 2, "diff": {...}}``.  The semantics here
follow MongoDB's own applier and reader (github:mongodb/mongo):

- ``src/mongo/db/update/document_diff_serialization.h`` / ``.cpp`` -- the format:
  ``DocumentDiffReader::DocumentDiffReader`` (sections ``d``, ``u``, ``i``, ``b``, ``s<field>``, in
  that order, each at most once, sub-diffs last; an empty diff is an error),
  ``ArrayDiffReader::ArrayDiffReader`` / ``ArrayDiffReader::next`` (an array diff starts with
  ``a: true``, then an optional int ``l`` (new length), then ``u<index>`` / ``s<index>`` entries in
  ascending index order), ``getReader`` (a sub-diff is an array diff when its first field is ``a``);
- ``src/mongo/db/update/document_diff_applier.cpp`` -- the result:
  ``buildObjDiffTables`` and ``DiffApplier::applyDiffToObject``: the pre-image's fields are walked
  in order; a ``d`` field is dropped; a ``u`` field that exists is replaced *in place*; an ``i``
  field's old value (if any) is dropped and the field appended; afterwards every ``u`` field that
  did not exist and every ``i`` field are appended at the end, updates first, each group in diff
  order.  A sub-diff on a field of the matching type (object / array) recurses; on a field of
  another type the field becomes ``null`` (idempotent oplog application: a later entry rewrites
  it); a sub-diff on a *missing* field does nothing (it is not created).
  ``DiffApplier::applyDiffToArray`` and ``appendNewValueForArrayIndex``: elements past ``l`` are
  truncated; up to ``l`` (or the last modified index) missing elements are padded with ``null``;
  ``u<i>`` sets element i (appending when the array is shorter); ``s<i>`` on a missing element or
  an element of the wrong type gives ``null``.

The ``b`` section (binary diffs of BinData values, written by MongoDB 8.0+) is not supported: a
diff containing it raises :class:`DiffError` rather than being half applied.  Malformed diffs raise
:class:`DiffError` (an :class:`~drkit.errors.IntegrityError`: the recorded entry is not what
MongoDB writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drkit.errors import IntegrityError

_SECTION_ORDER = {"d": 1, "u": 2, "i": 3, "b": 4, "s": 5}


class DiffError(IntegrityError):
    """A ``$v: 2`` diff that is malformed or uses a section drkit does not apply."""


def is_array_diff(diff: Mapping[str, Any]) -> bool:
    return next(iter(diff), None) == "a"


def _parse_object_diff(diff: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Field → (kind, value) with kind in d/u/i/s, plus insertion order preserved by the dict."""
    if not isinstance(diff, Mapping):
        raise DiffError(f"$v:2 diff: expected an object diff, got {type(diff).__name__}")
    if not diff:
        raise DiffError("$v:2 diff: expected the diff to be non-empty")
    table: dict[str, tuple[str, Any]] = {}
    prev = 0
    in_subdiffs = False
    for key, value in diff.items():
        section = key[:1]
        if in_subdiffs:
            if section != "s":
                raise DiffError(f"$v:2 diff: unexpected section {key!r} after the sub-diff sections")
        else:
            order = _SECTION_ORDER.get(section, 0)
            if order == 0 or (order < 5 and len(key) != 1):
                raise DiffError(f"$v:2 diff: unexpected section {key!r} in document diff")
            if order <= prev:
                raise DiffError(f"$v:2 diff: section {key!r} out of order or repeated")
            prev = order
            if section == "b":
                raise DiffError(
                    "$v:2 diff: binary diff section 'b' (MongoDB 8.0+) is not supported by drkit's replay"
                )
        if not isinstance(value, Mapping):
            raise DiffError(f"$v:2 diff: section {key!r} must be an object, got {type(value).__name__}")
        if section == "s":
            in_subdiffs = True
            entries: list[tuple[str, tuple[str, Any]]] = [(key[1:], ("s", value))]
            if not value:
                raise DiffError(f"$v:2 diff: sub-diff {key!r} is empty")
        elif section == "d":
            entries = [(f, ("d", None)) for f in value]
        else:
            entries = [(f, (section, v)) for f, v in value.items()]
        for field, mod in entries:
            if field in table:
                raise DiffError(f"$v:2 diff: duplicate field name in diff: {field!r}")
            table[field] = mod
    return table


def _apply_sub(value: Any, present: bool, sub: Mapping[str, Any]) -> Any:
    """A sub-diff applied to one value (a field's or an array element's)."""
    if not present:
        return None
    if is_array_diff(sub):
        if isinstance(value, list):
            return _apply_array(value, sub)
    elif isinstance(value, Mapping):
        return _apply_object(value, sub)
    return None  # type mismatch: a later entry rewrites it (MongoDB appends null)


def _apply_object(pre: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    table = _parse_object_diff(diff)
    out: dict[str, Any] = {}
    updated_in_place: set[str] = set()
    for field, value in pre.items():
        mod = table.get(field)
        if mod is None:
            out[field] = value
            continue
        kind, new = mod
        if kind == "u":
            out[field] = new
            updated_in_place.add(field)
        elif kind == "s":
            out[field] = _apply_sub(value, True, new)
        # "d": dropped; "i": dropped here, appended below
    for kind_wanted in ("u", "i"):
        for field, (kind, new) in table.items():
            if kind == kind_wanted and field not in updated_in_place:
                out[field] = new
    return out


def _parse_array_diff(diff: Mapping[str, Any]) -> tuple[int | None, list[tuple[int, str, Any]]]:
    items = iter(diff.items())
    first = next(items, None)
    if first is None or first[0] != "a":
        raise DiffError("$v:2 diff: an array diff must start with the array header 'a'")
    if first[1] is not True:
        raise DiffError(f"$v:2 diff: array header 'a' must be true, got {first[1]!r}")
    size: int | None = None
    mods: list[tuple[int, str, Any]] = []
    for key, value in items:
        if key == "l" and size is None and not mods:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DiffError(f"$v:2 diff: array resize 'l' must be a non-negative int32, got {value!r}")
            size = value
            continue
        if len(key) < 2 or key[0] not in "us" or not key[1:].isdigit() or not key[1:].isascii():
            raise DiffError(f"$v:2 diff: expected 'u<index>' or 's<index>' in an array diff, got {key!r}")
        idx = int(key[1:])
        if mods and idx <= mods[-1][0]:
            raise DiffError(f"$v:2 diff: array diff indexes must ascend, got {key!r} after index {mods[-1][0]}")
        if key[0] == "s" and (not isinstance(value, Mapping) or not value):
            raise DiffError(f"$v:2 diff: array sub-diff {key!r} must be a non-empty object")
        mods.append((idx, key[0], value))
    if size is not None and mods and mods[-1][0] >= size:
        raise DiffError(f"$v:2 diff: array diff modifies index {mods[-1][0]} beyond the new length {size}")
    return size, mods


def _apply_array(pre: list[Any], diff: Mapping[str, Any]) -> list[Any]:
    size, mods = _parse_array_diff(diff)
    by_index = {idx: (kind, value) for idx, kind, value in mods}
    limit = len(pre) if size is None else min(size, len(pre))
    out: list[Any] = []
    for idx in range(limit):
        mod = by_index.get(idx)
        if mod is None:
            out.append(pre[idx])
        elif mod[0] == "u":
            out.append(mod[1])
        else:
            out.append(_apply_sub(pre[idx], True, mod[1]))
    end = size if size is not None else max(len(pre), (mods[-1][0] + 1) if mods else 0)
    for idx in range(limit, end):
        mod = by_index.get(idx)
        if mod is None:
            out.append(None)
        elif mod[0] == "u":
            out.append(mod[1])
        else:
            out.append(None)  # sub-diff of an element the pre-image does not have
    return out


def apply_diff(doc: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    """The document ``doc`` after the ``$v: 2`` diff ``diff`` (the entry's ``o.diff``).

    Returns a new dict; ``doc`` is not mutated (unchanged sub-values are shared).
    """
    if not isinstance(doc, Mapping):
        raise DiffError(f"$v:2 diff: the pre-image must be a document, got {type(doc).__name__}")
    return _apply_object(doc, diff)
