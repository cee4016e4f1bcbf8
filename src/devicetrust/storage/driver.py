"""Statements on every device ceremony's path, run on the database driver's own cursor.

SQLAlchemy still builds each statement, and compiles it once per dialect, so every statement has one definition.
What an execution skips is SQLAlchemy's per-execution machinery (cache lookup, execution context, result
metadata), which costs more than a primary-key lookup on SQLite and about as much as the round trip on
PostgreSQL. Values are converted here as the tables' types would convert them
(:class:`~devicetrust.storage.schema.UTCDateTime`, ``JSONBody``, booleans); errors are SQLAlchemy's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from devicetrust.storage.schema import UTCDateTime

__all__ = ["DriverStatement", "JsonText"]

#: SQLite's DBAPI takes named parameters (``:name``) as well as ``?``: both dialects then take one mapping
_SQLITE_NAMED = sqlite.dialect(paramstyle="named")

_Converter = Callable[[Any], Any]


class JsonText(str):
    """A JSON document already encoded, bound to a JSON column as it is (any other value is encoded)."""

    __slots__ = ()


def _sqlite_datetime(value: str | None) -> datetime | None:
    # stored as naive UTC text, "YYYY-MM-DD HH:MM:SS.ffffff" (SQLAlchemy's SQLite format)
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _postgres_datetime(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _json_text(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _boolean(value: object) -> bool | None:
    return None if value is None else bool(value)


def _result_converter(column_type: sa.types.TypeEngine[Any], dialect_name: str) -> _Converter | None:
    if isinstance(column_type, UTCDateTime):
        return _sqlite_datetime if dialect_name == "sqlite" else _postgres_datetime
    if isinstance(column_type, sa.JSON):
        # psycopg decodes JSONB itself
        return _json_text if dialect_name == "sqlite" else None
    if isinstance(column_type, sa.Boolean):
        return _boolean
    return None


def _sqlite_time_text(value: datetime) -> str:
    return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def _utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: storage takes timezone-aware datetimes")
    return value.astimezone(UTC)


def _json_param(value: object) -> object:
    # PostgreSQL casts the text: the compiled statement says ::JSONB
    return value if isinstance(value, JsonText) else json.dumps(value)


def _bind_converter(bind_type: sa.types.TypeEngine[Any], dialect_name: str) -> _Converter | None:
    if isinstance(bind_type, UTCDateTime):
        return _sqlite_time_text if dialect_name == "sqlite" else _utc
    if isinstance(bind_type, sa.JSON):
        return _json_param
    return None


def _cursor(conn: Connection, sql: str, parameters: object, many: bool) -> Any:
    driver = conn.connection.driver_connection
    if driver is None:  # a connection SQLAlchemy has already closed
        raise sa.exc.ResourceClosedError("this connection is closed")
    cursor = driver.cursor()
    # what listens to SQLAlchemy's statements (logging, tests counting them) hears these too
    listeners = conn.dispatch.before_cursor_execute
    if listeners:
        listeners(conn, cursor, sql, parameters, None, many)
    return cursor


class _Compiled:
    def __init__(self, statement: sa.ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None) -> None:
        compiled = statement.compile(
            dialect=_SQLITE_NAMED if dialect.name == "sqlite" else dialect,
            column_keys=list(column_keys) if column_keys is not None else None,
        )
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {statement!r}")
        self.sql = str(compiled)
        # values SQLAlchemy bound when the statement was built (literals such as ``id = 1``)
        self.fixed = {key: value for key, value in compiled.params.items() if value is not None}
        columns: list[sa.ColumnElement[Any]] = (
            list(statement.exported_columns) if isinstance(statement, sa.sql.expression.ReturnsRows) else []
        )
        self.bind_converters = [
            (name, convert)
            for name, bind in compiled.binds.items()
            if (convert := _bind_converter(bind.type, dialect.name)) is not None
        ]
        self.names = [str(column.key) for column in columns]
        self.converters = [(i, c) for i, col in enumerate(columns) if (c := _result_converter(col.type, dialect.name))]


class DriverStatement:
    """One statement, executed on the driver's cursor within the caller's transaction."""

    def __init__(self, statement: sa.ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = column_keys
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = _Compiled(self._statement, dialect, self._column_keys)
        return compiled

    @staticmethod
    def _parameters(compiled: _Compiled, values: Mapping[str, object]) -> dict[str, object]:
        parameters = {**compiled.fixed, **values}
        for name, convert in compiled.bind_converters:
            value = parameters.get(name)
            if value is not None:
                parameters[name] = convert(value)
        return parameters

    def rows(self, conn: Connection, values: Mapping[str, object]) -> list[SimpleNamespace]:
        """Run the statement with ``values``; its rows, each value converted as its column's type says."""
        dialect = conn.dialect
        compiled = self._compiled(dialect)
        parameters = self._parameters(compiled, values)
        cursor = _cursor(conn, compiled.sql, parameters, False)
        try:
            try:
                cursor.execute(compiled.sql, parameters)
                fetched = cursor.fetchall() if compiled.names else []
            except dialect.loaded_dbapi.Error as err:
                raise sa.exc.DBAPIError.instance(compiled.sql, parameters, err, dialect.loaded_dbapi.Error) from err
        finally:
            cursor.close()
        result = []
        for fetched_row in fetched:
            row = list(fetched_row)
            for index, convert in compiled.converters:
                row[index] = convert(row[index])
            result.append(SimpleNamespace(**dict(zip(compiled.names, row, strict=True))))
        return result

    def one_or_none(self, conn: Connection, values: Mapping[str, object]) -> SimpleNamespace | None:
        rows = self.rows(conn, values)
        if len(rows) > 1:
            raise sa.exc.MultipleResultsFound("more than one row where at most one was expected")
        return rows[0] if rows else None

    def execute_many(self, conn: Connection, values: Sequence[Mapping[str, object]]) -> None:
        """Run the statement once per mapping in ``values`` (no rows are read back)."""
        dialect = conn.dialect
        compiled = self._compiled(dialect)
        parameters = [self._parameters(compiled, each) for each in values]
        cursor = _cursor(conn, compiled.sql, parameters, True)
        try:
            cursor.executemany(compiled.sql, parameters)
        except dialect.loaded_dbapi.Error as err:
            raise sa.exc.DBAPIError.instance(compiled.sql, parameters, err, dialect.loaded_dbapi.Error) from err
        finally:
            cursor.close()
