"""The Mongo-style queries and projections of CHIME/FRB's views, tested on a Work's JSON form
(catalog.compat.chime renders it): equality, comparisons, ``$in``/``$nin``, ``$exists``, dotted
paths, the one ``$expr`` form the clients send, and inclusive or exclusive projections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from catalog.errors import InvalidInput

# Query operators of views (and the one ``$expr`` form, ``{"$gte": ["$attempt", "$retries"]}``).
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: bool(a == b), "$ne": lambda a, b: bool(a != b),
    "$gt": lambda a, b: bool(a > b), "$gte": lambda a, b: bool(a >= b),
    "$lt": lambda a, b: bool(a < b), "$lte": lambda a, b: bool(a <= b),
}
SET_OPERATORS = ("$in", "$nin")


def _field(document: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


def _compare(operator: str, value: Any, operand: Any) -> bool:
    if operator in ("$eq", "$ne"):
        return COMPARISONS[operator](value, operand)
    numbers = (int, float)
    if isinstance(value, bool) or isinstance(operand, bool):
        return False
    if isinstance(value, numbers) and isinstance(operand, numbers) or \
            isinstance(value, str) and isinstance(operand, str):
        return COMPARISONS[operator](value, operand)
    return False  # as Mongo: values of different kinds (or null) never compare


def check_query(query: Any, where: str = "query") -> None:
    """Refuse (400) any operator a view does not know, before anything is read."""
    if not isinstance(query, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    for key, condition in query.items():
        if key == "$expr":
            _expression(condition)
            continue
        if not isinstance(key, str) or key.startswith("$") or not key:
            raise InvalidInput(f"{where}: unknown operator {key!r}; a view takes fields with "
                               "values, $in, $nin, $eq, $ne, $gt, $gte, $lt, $lte and one $expr")
        if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
            for operator, operand in condition.items():
                if operator in SET_OPERATORS:
                    if not isinstance(operand, list):
                        raise InvalidInput(f"{where}: {key} {operator} takes a list")
                elif operator not in COMPARISONS:
                    raise InvalidInput(f"{where}: unknown operator {operator!r} on {key!r}; "
                                       "known: $in, $nin, $eq, $ne, $gt, $gte, $lt, $lte")


def _expression(expression: Any) -> tuple[str, Any, Any]:
    """``{"$gte": ["$attempt", "$retries"]}`` and its kin: a comparison of two operands."""
    if isinstance(expression, dict) and len(expression) == 1:
        operator, operands = next(iter(expression.items()))
        if operator in COMPARISONS and isinstance(operands, list) and len(operands) == 2:
            return operator, operands[0], operands[1]
    raise InvalidInput("$expr takes one comparison of two operands, such as "
                       '{"$gte": ["$attempt", "$retries"]}')


def _operand(work: dict[str, Any], operand: Any) -> Any:
    if isinstance(operand, str) and operand.startswith("$"):
        return _field(work, operand[1:])
    return operand


def matches(work: dict[str, Any], query: dict[str, Any]) -> bool:
    """Whether ``work`` meets a (checked) Mongo-style query; a list field equals a value it
    holds, as in Mongo."""
    for key, condition in query.items():
        if key == "$expr":
            operator, left, right = _expression(condition)
            if not _compare(operator, _operand(work, left), _operand(work, right)):
                return False
            continue
        value = _field(work, key)
        candidates = value if isinstance(value, list) else [value]
        if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
            for operator, operand in condition.items():
                if operator == "$in":
                    ok = any(c in operand for c in candidates) or value in operand
                elif operator == "$nin":
                    ok = not any(c in operand for c in candidates) and value not in operand
                else:
                    ok = any(_compare(operator, c, operand) for c in candidates) or \
                        _compare(operator, value, operand)
                if not ok:
                    return False
        elif value != condition and condition not in candidates:
            return False
    return True


def project(work: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any]:
    """Mongo's projection: fields included (dotted paths too) or excluded, never both."""
    fields = {k: bool(v) for k, v in projection.items() if k != "_id"}
    if not fields:
        return work
    if len(set(fields.values())) > 1:
        raise InvalidInput("a projection includes fields or excludes them, not both")
    if not next(iter(fields.values())):
        return {k: v for k, v in work.items() if k not in fields}
    projected: dict[str, Any] = {}
    for path in fields:
        value = _field(work, path)
        parts = path.split(".")
        if value is None and not _has(work, parts):
            continue
        target = projected
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return projected


def _has(document: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(document, dict) or part not in document:
            return False
        document = document[part]
    return True


def eq_values(query: dict[str, Any], key: str) -> list[Any] | None:
    """The values ``key`` must take when the query says so plainly (equality or $in)."""
    if key not in query:
        return None
    condition = query[key]
    if isinstance(condition, dict):
        if set(condition) == {"$in"} and isinstance(condition["$in"], list):
            return list(condition["$in"])
        if set(condition) == {"$eq"}:
            return [condition["$eq"]]
        return None
    return [condition]
