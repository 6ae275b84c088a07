"""Integration fixtures shared by every module: one S3 server of each kind per session."""

from cassandra_fixtures import fixture_cassandra_cluster  # noqa: F401
from mongo_fixtures import fixture_mongodb_server  # noqa: F401
from s3_fixtures import fixture_moto_server, fixture_versitygw_server  # noqa: F401
