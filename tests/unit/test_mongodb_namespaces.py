"""MongoDB namespace filtering and renaming (drkit.dumpers.mongodb.namespaces)."""

from __future__ import annotations

import pytest

from drkit.dumpers.mongodb.namespaces import Namespaces
from drkit.errors import ConfigError


def test_empty_include_wants_every_user_namespace():
    ns = Namespaces()
    assert ns.wanted("sales.orders")
    assert ns.wanted("sales.orders.archive.2024")
    assert ns.wanted("admin.appdata")
    assert ns.wants_db("sales")


@pytest.mark.parametrize(
    "name",
    ["local.oplog.rs", "local.startup_log", "config.transactions", "config.system.sessions", "admin.system.users",
     "admin.system.roles", "admin.system.version", "sales.system.profile", "sales.system.views"],
)
def test_system_namespaces_are_never_wanted(name):
    assert not Namespaces().wanted(name)
    assert not Namespaces(include=["*"]).wanted(name)


def test_stored_functions_and_timeseries_buckets_are_wanted():
    ns = Namespaces()
    assert ns.wanted("sales.system.js")
    assert ns.wanted("metrics.system.buckets.weather")


def test_local_and_config_databases_are_never_wanted():
    assert not Namespaces().wants_db("local")
    assert not Namespaces(include=["local"]).wants_db("config")
    assert not Namespaces().wanted("local")


def test_include_database_and_collection_patterns():
    ns = Namespaces(include=["sales", "hr.people"])
    assert ns.wanted("sales.orders")
    assert ns.wanted("hr.people")
    assert not ns.wanted("hr.salaries")
    assert not ns.wanted("other.x")
    assert ns.wants_db("hr")
    assert not ns.wants_db("other")


def test_star_never_crosses_the_first_dot_but_matches_dots_in_collection_names():
    ns = Namespaces(include=["s*.orders*"])
    assert ns.wanted("sales.orders")
    assert ns.wanted("shop.orders.2024.q1")
    assert not ns.wanted("sales.items")
    assert not ns.wanted("x.sales.orders")  # db 'x', collection 'sales.orders'
    # '*' in the db part does not match a dot: 'a*' cannot reach into the collection
    assert not Namespaces(include=["a*"]).wanted("b.a1")
    # other fnmatch characters are literal
    assert not Namespaces(include=["db.a?"]).wanted("db.ab")
    assert Namespaces(include=["db.a?"]).wanted("db.a?")


def test_exclude_wins_over_include():
    ns = Namespaces(include=["sales"], exclude=["sales.tmp*"])
    assert ns.wanted("sales.orders")
    assert not ns.wanted("sales.tmp_import")
    assert ns.wants_db("sales")
    assert not Namespaces(include=["sales"], exclude=["sales"]).wants_db("sales")
    assert not Namespaces(exclude=["sal*"]).wanted("sales.orders")


def test_whole_db_questions():
    assert Namespaces().whole_db_target("sales") == "sales"
    assert Namespaces(include=["sales"]).whole_db_target("sales") == "sales"
    assert Namespaces(include=["sales.*"]).whole_db_target("sales") == "sales"
    assert Namespaces(include=["sales.orders"]).whole_db_target("sales") is None
    assert Namespaces(exclude=["sales.tmp"]).whole_db_target("sales") is None
    assert Namespaces(exclude=["sales.tmp"]).whole_db_target("hr") == "hr"
    assert Namespaces(include=["hr"]).whole_db_target("sales") is None


@pytest.mark.parametrize(
    ("ns_from", "ns_to", "source", "expected"),
    [
        ("prod.*", "staging.*", "prod.orders", "staging.orders"),
        ("prod.*", "staging.*", "prod.orders.2024", "staging.orders.2024"),
        ("prod.*", "staging.*", "other.orders", "other.orders"),
        ("a.users", "b.people", "a.users", "b.people"),
        ("a.users", "b.people", "a.usersx", "a.usersx"),
        ("*.orders", "*.orders_copy", "shop.orders", "shop.orders_copy"),
        ("p*.c*", "q*.d*", "prod.coll", "qrod.doll"),
        ("*.*", "restore_*.*", "sales.orders", "restore_sales.orders"),
        ("prod", "staging", "prod.x.y", "staging.x.y"),
    ],
)
def test_renames(ns_from, ns_to, source, expected):
    ns = Namespaces(ns_from=ns_from, ns_to=ns_to)
    assert ns.target(source) == expected
    if expected != source:
        assert ns.source(expected) == source


def test_identity_without_rename():
    ns = Namespaces()
    assert ns.target("a.b") == "a.b"
    assert ns.target_db("a") == "a"
    assert ns.source("a.b") == "a.b"


def test_target_db_for_whole_database_renames():
    assert Namespaces(ns_from="prod.*", ns_to="staging.*").target_db("prod") == "staging"
    assert Namespaces(ns_from="*.*", ns_to="r_*.*").target_db("sales") == "r_sales"
    assert Namespaces(ns_from="prod.*", ns_to="staging.*").target_db("other") == "other"
    partial = Namespaces(ns_from="a.users", ns_to="b.people")
    assert partial.whole_db_target("a") is None
    assert partial.whole_db_target("c") == "c"
    with pytest.raises(ConfigError, match="do not map database 'a' as a whole"):
        partial.target_db("a")
    assert Namespaces(ns_from="prod.*", ns_to="staging.x_*").whole_db_target("prod") is None


def test_source_of_a_target_not_produced_by_the_rename():
    ns = Namespaces(ns_from="a.users", ns_to="b.people")
    assert ns.source("b.other") == "b.other"
    assert ns.source("a.users") is None  # a.users is renamed away: nothing lands on it


def test_star_count_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"1 '\*' wildcard\(s\) but --ns-to 'staging.x' has 0"):
        Namespaces(ns_from="prod.*", ns_to="staging.x")
    with pytest.raises(ConfigError, match="wildcard"):
        Namespaces(ns_from="a.b", ns_to="*.b")


@pytest.mark.parametrize("ns_to", ["local.*", "config.x", "admin.users", "admin"])
def test_rename_into_reserved_databases_is_refused(ns_to):
    ns_from = "prod.*" if "*" in ns_to or "." not in ns_to else "prod.x"
    with pytest.raises(ConfigError, match="refuses"):
        Namespaces(ns_from=ns_from, ns_to=ns_to)


def test_wildcard_rename_landing_in_admin_is_refused_at_target_time():
    ns = Namespaces(ns_from="*.x", ns_to="*.y")
    assert ns.target("prod.x") == "prod.y"
    with pytest.raises(ConfigError, match="into the 'admin' database"):
        ns.target("admin.x")


def test_ns_from_and_ns_to_go_together():
    with pytest.raises(ConfigError, match="go together"):
        Namespaces(ns_from="a.*")
    with pytest.raises(ConfigError, match="go together"):
        Namespaces(ns_to="a.*")


@pytest.mark.parametrize("pattern", ["", ".coll", "db.", "db.$cmd", "d$b", "db.co\x00ll", "my db.x"])
def test_bad_patterns_name_the_pattern(pattern):
    with pytest.raises(ConfigError) as exc:
        Namespaces(include=[pattern])
    assert repr(pattern) in str(exc.value) or "empty" in str(exc.value)
    with pytest.raises(ConfigError):
        Namespaces(exclude=[pattern])
    with pytest.raises(ConfigError):
        Namespaces(ns_from=pattern or "", ns_to="x.*")


def test_a_single_string_is_not_a_pattern_list():
    with pytest.raises(ConfigError, match="lists of patterns"):
        Namespaces(include="sales")  # type: ignore[arg-type]
