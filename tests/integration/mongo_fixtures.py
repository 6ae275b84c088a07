"""A MongoDB-wire test server (FerretDB with an oplog, see drkit.sandbox.mongodb), shared per session.

Import ``fixture_mongodb_server`` (``from mongo_fixtures import fixture_mongodb_server``, this
directory is on sys.path like pgenv) into a test module or conftest.py to get the session
fixture ``mongodb_server``.  A server that cannot start (or be built) FAILS the tests that need
it; nothing here skips.  ``$DRKIT_MONGODB_SERVER=mongod`` (with ``$DRKIT_MONGOD``) runs the same
tests against a real mongod replica set of one; ``$DRKIT_TEST_MONGO_URL`` (a replica set's URI,
credentials included if it needs them: it is a test setting) runs them against that server
instead, starting nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pymongo
import pytest
from pgenv import workdir

from drkit.sandbox.mongodb import MongoInstance, start_mongodb


class ExternalMongo:
    """A server the test run did not start (``$DRKIT_TEST_MONGO_URL``): the same face as
    MongoInstance for the tests; stop() leaves it running."""

    kind = "external"

    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, **kwargs: object) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.url, **kwargs)

    def stop(self) -> None:
        pass


@pytest.fixture(scope="session", name="mongodb_server")
def fixture_mongodb_server() -> Iterator[MongoInstance | ExternalMongo]:
    external = os.environ.get("DRKIT_TEST_MONGO_URL")
    if external:
        yield ExternalMongo(external)
        return
    root = workdir("mongodb")
    server = start_mongodb(root)
    try:
        yield server
    finally:
        server.stop()
        if not os.environ.get("DRKIT_KEEP_TEST_DIRS"):
            shutil.rmtree(root, ignore_errors=True)
