from .mongo import database, database_name, mongodb_uri

__all__ = ["database", "database_name", "mongodb_uri"]
