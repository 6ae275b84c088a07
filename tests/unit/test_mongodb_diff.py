"""MongoDB ``$v: 2`` diff application (drkit.dumpers.mongodb.diff): every section, field order, edges.

Expected results follow MongoDB's document_diff_applier.cpp (see the module docstring); field order
is checked with ``list(doc.items())`` because dict equality ignores it.
"""

from __future__ import annotations

import copy

import pytest

from drkit.dumpers.mongodb.diff import DiffError, apply_diff
from drkit.errors import IntegrityError


def items(doc):
    """Field order all the way down (dicts as item lists, lists element-wise)."""
    if isinstance(doc, dict):
        return [(k, items(v)) for k, v in doc.items()]
    if isinstance(doc, list):
        return [items(v) for v in doc]
    return doc


def check(pre, diff, expected):
    before = copy.deepcopy(pre)
    out = apply_diff(pre, diff)
    assert items(out) == items(expected)
    assert items(pre) == items(before), "apply_diff mutated its input"
    return out


def test_delete_section_removes_fields_and_ignores_missing():
    check({"_id": 1, "a": 1, "b": 2}, {"d": {"a": False, "nope": False}}, {"_id": 1, "b": 2})


def test_update_existing_field_stays_in_place():
    check({"_id": 1, "a": 1, "b": 2, "c": 3}, {"u": {"b": "x"}}, {"_id": 1, "a": 1, "b": "x", "c": 3})


def test_update_of_missing_field_is_appended():
    check({"_id": 1, "a": 1}, {"u": {"z": 1, "a": 2}}, {"_id": 1, "a": 2, "z": 1})


def test_insert_appends_and_moves_an_existing_field_to_the_end():
    check({"_id": 1, "a": 1, "b": 2}, {"i": {"a": 10, "c": 3}}, {"_id": 1, "b": 2, "a": 10, "c": 3})


def test_appended_updates_come_before_inserts_each_in_diff_order():
    check(
        {"_id": 1, "keep": 0},
        {"u": {"u2": 2, "u1": 1}, "i": {"i2": 2, "i1": 1}},
        {"_id": 1, "keep": 0, "u2": 2, "u1": 1, "i2": 2, "i1": 1},
    )


def test_all_object_sections_together():
    check(
        {"_id": 1, "a": 1, "b": 2, "c": {"x": 1, "y": 2}, "d": "gone"},
        {"d": {"d": False}, "u": {"a": 10}, "i": {"b": 20}, "sc": {"u": {"y": 3}, "i": {"w": 4}}},
        {"_id": 1, "a": 10, "c": {"x": 1, "y": 3, "w": 4}, "b": 20},
    )


def test_nested_sub_diffs_recurse():
    check(
        {"_id": 1, "a": {"b": {"c": 1, "d": 2}, "e": 3}},
        {"sa": {"sb": {"d": {"c": False}, "i": {"n": 1}}}},
        {"_id": 1, "a": {"b": {"d": 2, "n": 1}, "e": 3}},
    )


def test_sub_diff_of_a_missing_field_does_nothing():
    check({"_id": 1}, {"smissing": {"u": {"x": 1}}}, {"_id": 1})


def test_sub_diff_on_a_field_of_another_type_sets_null():
    check({"_id": 1, "s": "str", "t": [1]}, {"ss": {"u": {"x": 1}}, "st": {"u": {"x": 1}}}, {"_id": 1, "s": None, "t": None})
    check({"_id": 1, "o": {"x": 1}}, {"so": {"a": True, "u0": 1}}, {"_id": 1, "o": None})


def test_array_truncate_with_l():
    check({"a": [1, 2, 3, 4]}, {"sa": {"a": True, "l": 2}}, {"a": [1, 2]})


def test_array_grow_with_l_pads_with_null():
    check({"a": [1]}, {"sa": {"a": True, "l": 3}}, {"a": [1, None, None]})


def test_array_element_update_in_range_and_past_the_end():
    check({"a": [1, 2, 3]}, {"sa": {"a": True, "u1": 20}}, {"a": [1, 20, 3]})
    check({"a": [1]}, {"sa": {"a": True, "u3": 9}}, {"a": [1, None, None, 9]})


def test_array_resize_and_update_together():
    check({"a": [1, 2, 3, 4]}, {"sa": {"a": True, "l": 3, "u0": 0, "u2": "two"}}, {"a": [0, 2, "two"]})
    check({"a": []}, {"sa": {"a": True, "l": 2, "u1": "x"}}, {"a": [None, "x"]})


def test_array_element_sub_diffs_object_and_array():
    check(
        {"a": [{"k": 1, "inner": [1, 2]}, {"k": 2}]},
        {"sa": {"a": True, "s0": {"u": {"k": 10}, "sinner": {"a": True, "l": 1}}, "s1": {"i": {"new": 1}}}},
        {"a": [{"k": 10, "inner": [1]}, {"k": 2, "new": 1}]},
    )


def test_array_element_sub_diff_on_a_missing_or_mismatched_element_gives_null():
    check({"a": [1]}, {"sa": {"a": True, "s0": {"u": {"x": 1}}, "s2": {"u": {"x": 1}}}}, {"a": [None, None, None]})


def test_values_from_the_pre_image_are_not_copied_but_input_is_untouched():
    pre = {"_id": 1, "a": {"x": [1, 2]}, "b": 1}
    out = check(pre, {"u": {"b": 2}}, {"_id": 1, "a": {"x": [1, 2]}, "b": 2})
    out["a"]["x"].append(3)  # unchanged sub-values are shared (documented)
    assert pre["a"]["x"] == [1, 2, 3]


@pytest.mark.parametrize(
    ("diff", "message"),
    [
        ({}, "non-empty"),
        ({"x": {"a": 1}}, "unexpected section 'x'"),
        ({"u": {"a": 1}, "d": {"b": False}}, "out of order"),
        ({"u": {"a": 1}, "i": {"a": 2}}, "duplicate field name"),
        ({"sa": {"u": {"x": 1}}, "u": {"b": 1}}, "after the sub-diff"),
        ({"u": 5}, "must be an object"),
        ({"b": {"bin": {"o": 0}}}, "binary diff section 'b'"),
        ({"sa": {}}, "empty"),
        ({"sa": {"a": False}}, "must be true"),
        ({"sa": {"a": True, "x1": 1}}, "'u<index>' or 's<index>'"),
        ({"sa": {"a": True, "u2": 1, "u1": 1}}, "must ascend"),
        ({"sa": {"a": True, "l": 1, "u3": 1}}, "beyond the new length"),
        ({"sa": {"a": True, "l": -1}}, "non-negative"),
        ({"sa": {"a": True, "s0": 5}}, "non-empty object"),
    ],
)
def test_malformed_diffs_are_refused_clearly(diff, message):
    with pytest.raises(DiffError, match=message) as exc:
        apply_diff({"_id": 1, "a": [1, 2, 3]}, diff)
    assert isinstance(exc.value, IntegrityError)


def test_pre_image_must_be_a_document():
    with pytest.raises(DiffError, match="pre-image must be a document"):
        apply_diff([1], {"u": {"a": 1}})  # type: ignore[arg-type]
