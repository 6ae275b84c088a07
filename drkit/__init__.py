"""drkit -- backup and disaster recovery for PostgreSQL, MongoDB, Cassandra and Redis."""

__version__ = "0.1.0"
