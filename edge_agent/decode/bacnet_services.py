"""BACnet service productions: what each confirmed, unconfirmed and ack service says.

Spec: ANSI/ASHRAE 135 "BACnet" clauses 13-17 (the service request and ACK productions: COV,
object access, ReadProperty(-Multiple), WriteProperty(-Multiple), ReadRange, remote device
management, PrivateTransfer, I-Am/I-Have, Who-Is/Who-Has, time synchronisation) and 21 (their
enumerations, in :mod:`edge_agent.decode.bacnet_tables`). A parser walks one production with a
:class:`~edge_agent.decode.bacnet_tags.TagReader` and fills the record ``f``; hostile bytes raise
the tag reader's ``Truncated`` or ``InvalidTag``, which ``bacnet.py`` turns into anomalies.
Lists of properties are bounded by ``BACNET_MAX_VALUES``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.decode.bacnet_tables import (
    BACNET_ENABLE_DISABLE,
    BACNET_ERROR_CLASSES,
    BACNET_ERROR_CODES,
    BACNET_RANGE_TYPES,
    BACNET_REINIT_STATES,
    BACNET_SEGMENTATION,
    BACNET_VENDORS,
)
from edge_agent.decode.bacnet_tags import (
    APP,
    BACNET_MAX_VALUES,
    OPEN,
    InvalidTag,
    TagReader,
    charstring,
    object_id,
    object_type_name,
    property_name,
    read_values,
    scalar,
)

Fields = dict[str, Any]


def _put_object(f: Fields, t: int, i: int) -> None:
    f["object_type_code"] = t
    f["object_type"] = object_type_name(t)
    f["instance_number"] = i


def _put_property(f: Fields, code: int) -> None:
    f["property_code"] = code
    f["property"] = property_name(code)


def _property_ref(r: TagReader, f: Fields, prop_tag: int) -> None:
    _put_property(f, r.ctx_uint(prop_tag))             # type: ignore[arg-type]
    idx = r.ctx_uint(prop_tag + 1, optional=True)
    if idx is not None:
        f["array_index"] = idx


def _read_property(r: TagReader, f: Fields) -> None:
    """15.5 ReadProperty-Request and, with [3] propertyValue, ReadProperty-ACK (15.5.1.3)."""
    _put_object(f, *r.ctx_object(0))
    _property_ref(r, f, 1)
    if r.more():
        f["value"] = r.value(3)


def _write_property(r: TagReader, f: Fields) -> None:
    """15.9 WriteProperty-Request: object, property, [index], value, [priority]."""
    _read_property(r, f)
    prio = r.ctx_uint(4, optional=True)
    if prio is not None:
        f["priority"] = prio


def _property_list(r: TagReader, f: Fields, obj: tuple[int, int], close: int, prop_tag: int,
                   with_value: bool) -> None:
    props = f.setdefault("properties", [])
    while not r.closing(close):
        p: Fields = {}
        _put_object(p, *obj)
        _property_ref(r, p, prop_tag)
        if with_value:
            p["value"] = r.value(prop_tag + 2)
            prio = r.ctx_uint(prop_tag + 3, optional=True)
            if prio is not None:
                p["priority"] = prio
        if len(props) < BACNET_MAX_VALUES:
            props.append(p)


def _read_property_multiple(r: TagReader, f: Fields) -> None:
    """15.7.1.1 ReadAccessSpecification list: object, [1] list of property references."""
    while r.more():
        obj = r.ctx_object(0)
        r.opening(1)
        _property_list(r, f, obj, 1, 0, False)


def _write_property_multiple(r: TagReader, f: Fields) -> None:
    """15.10.1.1 WriteAccessSpecification list: object, [1] list of property values."""
    while r.more():
        obj = r.ctx_object(0)
        r.opening(1)
        _property_list(r, f, obj, 1, 0, True)


def _read_property_multiple_ack(r: TagReader, f: Fields) -> None:
    """15.7.1.3 ReadAccessResult list: values ([4]) or errors ([5]) per property."""
    props = f.setdefault("properties", [])
    while r.more():
        obj = r.ctx_object(0)
        r.opening(1)
        while not r.closing(1):
            p: Fields = {}
            _put_object(p, *obj)
            _property_ref(r, p, 2)
            if r.opening(4, optional=True):
                vals, r.off = read_values(r.b, r.off, r.end, 4)
                p["value"] = scalar(vals)
            else:
                r.opening(5)
                error_pair(r, p)
                if not r.closing(5):
                    raise InvalidTag
            if len(props) < BACNET_MAX_VALUES:
                props.append(p)


def error_pair(r: TagReader, f: Fields) -> None:
    cls = r.app(9)
    code = r.app(9)
    f["error_class_code"] = cls
    f["error_class"] = BACNET_ERROR_CLASSES.get(cls, "unknown")
    f["error_code"] = code
    f["error"] = BACNET_ERROR_CODES.get(code, "unknown")


def first_property(f: Fields) -> None:
    """A multiple-property record also names its first object and property at the top."""
    props = f.get("properties")
    if props:
        for k in ("object_type_code", "object_type", "instance_number", "property_code",
                  "property"):
            f[k] = props[0][k]


def _i_am(r: TagReader, f: Fields) -> None:
    """16.10 I-Am: device identifier, max APDU, segmentation supported, vendor id."""
    t, i = object_id(r.b, *_app_span(r, 12))
    _put_object(f, t, i)
    f["max_apdu"] = r.app(2)
    seg = r.app(9)
    f["segmentation_code"] = seg
    f["segmentation"] = BACNET_SEGMENTATION.get(seg, "unknown")
    vid = f["vendor_id"] = r.app(2)
    f["vendor"] = BACNET_VENDORS.get(vid, "unknown")


def _app_span(r: TagReader, want: int) -> tuple[int, int]:
    tn, cls, n, p = r.peek()
    if cls != APP or tn != want:
        raise InvalidTag
    r.off = p + n
    return p, n


def _i_have(r: TagReader, f: Fields) -> None:
    """16.9 I-Have: device identifier, object identifier, object name."""
    t, i = object_id(r.b, *_app_span(r, 12))
    f["device_type"], f["device_instance"] = object_type_name(t), i
    _put_object(f, *object_id(r.b, *_app_span(r, 12)))
    f["object_name"] = r.app(7)


def _who_is(r: TagReader, f: Fields) -> None:
    """16.10.1 Who-Is: optional device instance range."""
    low = r.ctx_uint(0, optional=True)
    if low is not None:
        f["range_low"] = low
        f["range_high"] = r.ctx_uint(1)


def _who_has(r: TagReader, f: Fields) -> None:
    """16.9.1 Who-Has: optional range, then [2] object identifier or [3] object name."""
    _who_is(r, f)
    span = r.ctx(2, optional=True)
    if span is not None:
        _put_object(f, *object_id(r.b, *span))
    else:
        p, n = r.ctx(3)             # type: ignore[misc]
        f["object_name"] = charstring(r.b, p, n)


def _device_communication_control(r: TagReader, f: Fields) -> None:
    """16.1 DeviceCommunicationControl: [0] minutes, [1] enable-disable, [2] password."""
    minutes = r.ctx_uint(0, optional=True)
    if minutes is not None:
        f["time_duration"] = minutes
    state = f["enable_disable_code"] = r.ctx_uint(1)
    f["enable_disable"] = BACNET_ENABLE_DISABLE.get(state, "unknown")  # type: ignore[arg-type]
    # The password itself stays off the record: records travel further than the plant.
    f["password_present"] = r.ctx(2, optional=True) is not None


def _reinitialize_device(r: TagReader, f: Fields) -> None:
    """16.4 ReinitializeDevice: [0] reinitialized state, [1] password."""
    state = f["reinitialized_state_code"] = r.ctx_uint(0)
    f["reinitialized_state"] = BACNET_REINIT_STATES.get(state, "unknown")  # type: ignore
    f["password_present"] = r.ctx(1, optional=True) is not None


def _time_synchronization(r: TagReader, f: Fields) -> None:
    """16.7/16.8 (UTC)TimeSynchronization: date, time."""
    f["time"] = f"{r.app(10)}T{r.app(11)}"


def _subscribe_cov(r: TagReader, f: Fields) -> None:
    """13.14 SubscribeCOV: [0] process id, [1] monitored object, [2] confirmed, [3] lifetime."""
    f["subscriber_process_id"] = r.ctx_uint(0)
    _put_object(f, *r.ctx_object(1))


def _cov_notification(r: TagReader, f: Fields) -> None:
    """13.6/13.7 COVNotification: process, initiating device, object, time left, values."""
    f["subscriber_process_id"] = r.ctx_uint(0)
    f["device_instance"] = r.ctx_object(1)[1]
    _put_object(f, *r.ctx_object(2))
    f["time_remaining"] = r.ctx_uint(3)
    r.opening(4)
    _property_list(r, f, (f["object_type_code"], f["instance_number"]), 4, 0, True)


def _object_first(r: TagReader, f: Fields) -> None:
    """Services whose request opens with an application-tagged object identifier."""
    _put_object(f, *object_id(r.b, *_app_span(r, 12)))


def _create_object(r: TagReader, f: Fields) -> None:
    """15.3 CreateObject: [0] (object type [0] or identifier [1]), [1] initial values."""
    r.opening(0)
    span = r.ctx(1, optional=True)
    if span is not None:
        _put_object(f, *object_id(r.b, *span))
    else:
        t = r.ctx_uint(0)
        f["object_type_code"], f["object_type"] = t, object_type_name(t)  # type: ignore[arg-type]
    if not r.closing(0):
        raise InvalidTag


def _read_range(r: TagReader, f: Fields) -> None:
    """15.8.1.1 ReadRange-Request: [0] object, [1] property, [2] array index, then the range
    by position [3], by sequence number [6] or by time [7], each ending with a signed count."""
    _put_object(f, *r.ctx_object(0))
    _property_ref(r, f, 1)
    if not r.more():
        return
    tn, cls, _, _ = r.peek()
    name = BACNET_RANGE_TYPES.get(tn)
    if cls != OPEN or name is None:
        raise InvalidTag
    f["range_type"] = name
    vals = r.value(tn)
    if isinstance(vals, list) and vals and isinstance(vals[-1], int):
        f["count"] = vals[-1]


def _read_range_ack(r: TagReader, f: Fields) -> None:
    """15.8.1.3 ReadRange-ACK: [0] object, [1] property, [2] array index, result flags ..."""
    _put_object(f, *r.ctx_object(0))
    _property_ref(r, f, 1)


def _private_transfer(r: TagReader, f: Fields) -> None:
    """16.2/16.3 PrivateTransfer: [0] vendor id, [1] service number."""
    vid = f["vendor_id"] = r.ctx_uint(0)
    f["vendor"] = BACNET_VENDORS.get(vid, "unknown")  # type: ignore[arg-type]
    f["service_number"] = r.ctx_uint(1)


Service = Callable[[TagReader, Fields], None]

# Service request productions by confirmed service choice
BACNET_CONFIRMED_PARSERS: dict[int, Service] = {
    1: _cov_notification, 5: _subscribe_cov, 6: _object_first, 7: _object_first,
    10: _create_object, 11: _object_first, 12: _read_property, 14: _read_property_multiple,
    15: _write_property, 16: _write_property_multiple, 17: _device_communication_control,
    18: _private_transfer, 20: _reinitialize_device, 26: _read_range, 28: _subscribe_cov,
}
# Service ACK productions by confirmed service choice
BACNET_ACK_PARSERS: dict[int, Service] = {
    10: _object_first, 12: _read_property, 14: _read_property_multiple_ack, 18: _private_transfer,
    26: _read_range_ack,
}
BACNET_UNCONFIRMED_PARSERS: dict[int, Service] = {
    0: _i_am, 1: _i_have, 2: _cov_notification, 4: _private_transfer, 6: _time_synchronization,
    7: _who_has, 8: _who_is, 9: _time_synchronization,
}
