"""Bot Framework models to and from plain JSON, with msrest's exact rules but none of its cost on the hot path.

msrest builds a Serializer/Deserializer per call, copies every attribute description, runs validation
and, for a request body, deserialises the model back into itself before serialising it. Per turn that was
most of this bot's CPU (the inbound activity, its conversation reference, the reply and its card).

The botbuilder schema models are plain Autorest models: no flattened keys, no `additional_properties`
attribute, no polymorphism, no validation rules (`tests/test_wire.py` checks that this still holds). For
such models this module applies the same rules as msrest, from a plan computed once per class:

- `to_json(model)`: `Model.serialize()` / `Serializer.body()`: None attributes left out, enums by value,
  `object` attributes copied the way `serialize_object` does (a nested model inside them is serialised,
  anything unknown becomes `str()`), dates by msrest's own functions. A value that is not a model where the
  schema wants one (msrest's request body would first rebuild it into a model) goes through msrest itself.
- `from_json(cls, data)`: `cls.deserialize(data)`: exact REST keys, strings/booleans/numbers coerced as
  msrest does, `object` attributes deep-copied, unknown keys kept in `additional_properties` (which
  `TeamsActivityHandler` reads to recognise Teams members), dates parsed by msrest's own functions.

`tests/test_wire.py` compares both directions with msrest on hand-picked and generated activities.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from msrest.exceptions import DeserializationError
from msrest.serialization import Deserializer, Model, Serializer

M = TypeVar("M", bound=Model)
Json = dict[str, Any]
_Convert = Callable[[Any], Any]


class _NeedsMsrest(Exception):
    """A value msrest would rebuild first (e.g. a dict where the schema wants a model)."""


@dataclass(frozen=True)
class _Plan:
    dump: tuple[tuple[str, str, _Convert], ...]  # (attribute, key, to JSON)
    load: tuple[tuple[str, str, _Convert], ...]  # (attribute, key, from JSON)
    keys: frozenset[str]
    plain: bool  # False: a shape this module does not reproduce (flattened keys, validation...): msrest does it


# ---- to JSON -----------------------------------------------------------------------------------------------


def _dump_str(value: Any) -> Any:
    if type(value) is str:
        return value
    try:  # msrest: "If I received an enum, return its value"
        return value.value
    except AttributeError:
        return str(value)


def _dump_object(value: Any) -> Any:
    """msrest's `serialize_object`: JSON data copied, nested models serialised, anything else as str()."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {_dump_str(k): _dump_object(v) for k, v in value.items()}
    if kind is list:
        return [_dump_object(v) for v in value]
    if isinstance(value, Model):
        return to_json(value)
    if kind is datetime.datetime:
        return Serializer.serialize_iso(value)
    if kind in (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal):
        return _MSREST_SERIALIZER.serialize_object(value)
    return str(value)


def _dump_model(value: Any) -> Any:
    if not isinstance(value, Model):
        raise _NeedsMsrest(type(value).__name__)
    return to_json(value)


def _dumper(data_type: Any, models: dict[str, type]) -> _Convert:
    if not isinstance(data_type, str):  # one teams model names a class instead of a type string
        return _dump_model
    if data_type == "str":
        return _dump_str
    if data_type in ("int", "long"):
        return int
    if data_type == "float":
        return float
    if data_type == "bool":
        return bool
    if data_type == "object":
        return _dump_object
    if data_type[:1] == "[" and data_type[-1:] == "]":
        item = _dumper(data_type[1:-1], models)

        def dump_list(value: Any) -> Any:
            if isinstance(value, str):
                raise _NeedsMsrest("a string where a list belongs")
            return [None if v is None else item(v) for v in value]

        return dump_list
    if data_type[:1] == "{" and data_type[-1:] == "}":
        entry = _dumper(data_type[1:-1], models)
        return lambda value: {_dump_str(k): None if v is None else entry(v) for k, v in value.items()}
    model = models.get(data_type)
    if isinstance(model, type) and issubclass(model, Model):
        return _dump_model
    msrest = Serializer(models)  # dates, bytes, decimals, enums: rare, msrest's own code
    return lambda value: msrest.serialize_data(value, data_type)


def to_json(model: Model) -> Json:
    """The JSON msrest would send for `model` (see the module docstring)."""
    plan = _plan(type(model))
    if not plan.plain:
        serialized: Json = model.serialize()
        return serialized
    out: Json = {}
    for attr, key, dump in plan.dump:
        value = getattr(model, attr, None)
        if value is not None:
            out[key] = dump(value)
    return out


def request_body(model: Model) -> Json:
    """What the SDK's connector puts in a request body for `model`: `to_json`, or msrest where it must
    rebuild a model first (a dict or other value where the schema wants a model)."""
    try:
        return to_json(model)
    except _NeedsMsrest:
        body: Json = Serializer(_models_of(type(model))).body(model, type(model).__name__)
        return body


# ---- from JSON ---------------------------------------------------------------------------------------------


def _load_str(value: Any) -> Any:
    if type(value) is str or isinstance(value, Enum):
        return value
    return str(value)


def _load_bool(value: Any) -> bool:
    if value in (True, False, 1, 0):
        return bool(value)
    if isinstance(value, str):
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
    raise DeserializationError(f"Invalid boolean value: {value}")


def _load_object(value: Any) -> Any:
    """msrest's `deserialize_object`: a deep copy of JSON data; anything else is refused."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {k: _load_object(v) for k, v in value.items()}
    if kind is list:
        return [_load_object(v) for v in value]
    if isinstance(value, str):
        return _load_str(value)
    raise DeserializationError(f"Cannot deserialize generic object with type: {kind}")


def _loader(data_type: Any, models: dict[str, type]) -> _Convert:
    if not isinstance(data_type, str):
        return _model_loader(data_type)
    if data_type == "str":
        return _load_str
    if data_type == "bool":
        return _load_bool
    if data_type == "int":
        return int
    if data_type == "float":
        return float
    if data_type == "object":
        return _load_object
    if data_type[:1] == "[" and data_type[-1:] == "]":
        item = _loader(data_type[1:-1], models)

        def load_list(value: Any) -> Any:
            if not isinstance(value, list | set):
                raise DeserializationError(f"Cannot deserialize as [{data_type[1:-1]}] an object of type {type(value)}")
            return [None if v is None else item(v) for v in value]

        return load_list
    if data_type[:1] == "{" and data_type[-1:] == "}":
        entry = _loader(data_type[1:-1], models)

        def load_dict(value: Any) -> Any:
            if isinstance(value, list):
                return {x["key"]: None if x["value"] is None else entry(x["value"]) for x in value}
            return {k: None if v is None else entry(v) for k, v in value.items()}

        return load_dict
    model = models.get(data_type)
    if isinstance(model, type) and issubclass(model, Model):
        return _model_loader(model)
    msrest = Deserializer(models)  # dates, bytes, decimals, enums: rare, msrest's own code
    return lambda value: msrest.deserialize_data(value, data_type)


def _model_loader(model: type[Model]) -> _Convert:
    def load(value: Any) -> Any:
        if isinstance(value, dict):
            return from_json(model, value)
        if isinstance(value, model):
            return value
        raise DeserializationError(f"Unable to deserialize to object: {model.__name__}")

    return load


def from_json(cls: type[M], data: Json) -> M:
    """`cls().deserialize(data)`, the same model msrest builds (see the module docstring)."""
    plan = _plan(cls)
    if not plan.plain:
        return cls.deserialize(data)
    try:
        values = {attr: None if (raw := data.get(key)) is None else load(raw) for attr, key, load in plan.load}
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # e.g. a string where an object belongs
        raise DeserializationError(f"Unable to deserialize to object: {cls.__name__} ({exc})") from exc
    model = cls(**values)
    if data.keys() - plan.keys:
        model.additional_properties = {k: v for k, v in data.items() if k not in plan.keys}
    return model


# ---- plans -------------------------------------------------------------------------------------------------


def _models_of(cls: type[Model]) -> dict[str, type]:
    return dict(cls._infer_class_models())


def _is_plain(cls: type[Model]) -> bool:
    """Whether msrest's handling of `cls` is what this module reproduces."""
    attributes = cls._attribute_map
    return (not getattr(cls, "_validation", None) and not getattr(cls, "_subtype_map", None)
            and "additional_properties" not in attributes
            and all(d["key"] and "." not in d["key"] for d in attributes.values()))


_PLANS: dict[type[Model], _Plan] = {}


def _plan(cls: type[Model]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _make_plan(cls)
    return plan


def _make_plan(cls: type[Model]) -> _Plan:
    models = _models_of(cls)
    dump, load = [], []
    for attr, description in cls._attribute_map.items():
        key, data_type = description["key"], description["type"]
        dump.append((attr, key, _dumper(data_type, models)))
        load.append((attr, key, _loader(data_type, models)))
    return _Plan(tuple(dump), tuple(load), frozenset(k for _, k, _ in load), _is_plain(cls))


_MSREST_SERIALIZER = Serializer()
