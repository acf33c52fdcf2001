"""What the driver, the controller and the workers of the `ray` runtime send each other.

Payloads between the actors are msgpack (`switchboard.readout`), never pickle: the service
spec every actor is started with (the configuration tree as tagged maps), a worker's start
error, a call operation on its way to the worker that owns the dialog, and the kinds of item
a worker's ordered batch carries besides its events. What the controller answers its callers (lists,
dicts, `CommandError`) is the public API and travels the way Ray carries any return value.

Knows nothing of Ray itself: this module only encodes and decodes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from ... import config as config_module
from ...config import Config, ListenSocket, MIConfig
from ...readout import pack as _pack
from ...readout import unpack as _unpack
from ...script import ScriptError
from ...sip.operations import (
    AttendedTransfer,
    BlindTransfer,
    EndCall,
    Headers,
    HoldChange,
    Operation,
)

# What a worker's batch carries besides events (whose names start with "E_"): its core's
# `RemoteDialogs` calls, [key, new_callid, destination] and [key, new_callid, destination,
# status, reason, ok].
LINK: Final = "@link"
ANSWER: Final = "@answer"
# A worker's batch item with its dialogs' state: [wall time, [[dialog id, Call-ID, msgpack
# snapshot], ...], [ids of dialogs that ended]]; sent every `worker.SNAPSHOT_INTERVAL`
# seconds when something changed.
SNAPSHOTS: Final = "@snapshots"


def _encode_config(obj: Any) -> Any:
    """A configuration tree (frozen dataclasses of `switchboard.config`, tuples, scalars) as
    msgpack-able data; `_decode_config` rebuilds it."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"@": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = _encode_config(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple | list):
        return [_encode_config(v) for v in obj]
    return obj


def _decode_config(data: Any) -> Any:
    if isinstance(data, dict) and "@" in data:
        cls = getattr(config_module, str(data["@"]), None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"not a configuration class: {data['@']!r}")
        return cls(**{k: _decode_config(v) for k, v in data.items() if k != "@"})
    if isinstance(data, list):
        return tuple(_decode_config(v) for v in data)
    return data


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What the controller and the workers are started with: the worker count (0 = one per
    CPU of the cluster), the static subscriptions, and the configuration each worker builds
    itself from (`local.build_worker`), without the MI part (the driver serves the MI)."""

    workers: int
    subscriptions: tuple[tuple[str, str], ...]  # static (event, socket) pairs
    config: Config

    @classmethod
    def from_config(cls, config: Config) -> ServiceSpec:
        return cls(
            workers=config.runtime.workers,
            subscriptions=tuple((s.event, s.socket) for s in config.events.static_subscriptions()),
            config=dataclasses.replace(config, mi=MIConfig(http=None, token="")),
        )

    def sockets(self, index: int) -> list[ListenSocket]:
        """Worker `index` listens on each base port + index (port 0 stays 0: a free port)."""
        return [dataclasses.replace(s, port=s.port + index if s.port else 0)
                for s in self.config.listen.sockets]

    def pack(self) -> bytes:
        return _pack({"workers": self.workers,
                      "subscriptions": [list(s) for s in self.subscriptions],
                      "config": _encode_config(self.config)})

    @classmethod
    def unpack(cls, data: bytes) -> ServiceSpec:
        raw = _unpack(data)
        config = _decode_config(raw["config"])
        if not isinstance(config, Config):
            raise ValueError("the service spec carries no configuration")
        return cls(
            workers=int(raw["workers"]),
            subscriptions=tuple((str(e), str(s)) for e, s in raw["subscriptions"]),
            config=config,
        )


def start_error(exc: BaseException) -> dict[str, Any]:
    """Why an actor did not start, as `{"error": {"kind": "os" | "script" | "", "message"}}`
    (what `ready` answers); `raise_start_error` raises it again in the driver."""
    kind = "os" if isinstance(exc, OSError) else "script" if isinstance(exc, ScriptError) else ""
    # The cause often holds the useful part ("[Errno 98] Address already in use").
    parts: list[str] = [] if kind else [type(exc).__name__]
    current: BaseException | None = exc
    while current is not None and len(parts) < 5:
        text = str(current)
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    return {"error": {"kind": kind, "message": ": ".join(parts)}}


def raise_start_error(error: dict[str, Any]) -> None:
    """Raise what `serve` documents for a start error an actor reported."""
    message = str(error.get("message", "unknown error"))
    kind = error.get("kind")
    if kind == "os":
        raise OSError(message)
    if kind == "script":
        raise ScriptError(message)
    raise RuntimeError(message)


def pack_operation(op: Operation) -> bytes:
    """A call operation as msgpack, to cross to the controller or a worker unchanged (its
    values are compiled classes, which pickle cannot rebuild)."""
    if isinstance(op, BlindTransfer):
        fields: list[Any] = ["blind", op.call_id, op.leg, op.destination]
    elif isinstance(op, AttendedTransfer):
        fields = ["attended", op.call_id, op.leg, op.transfer_callid, op.transfer_leg,
                  op.destination, op.from_tag, op.to_tag]
    elif isinstance(op, HoldChange):
        fields = ["hold", op.call_id, op.hold, op.leg, op.caller_headers, op.callee_headers]
    else:
        fields = ["end", op.key, op.extra_headers]
    # Last, so each kind's fields keep their places.
    fields.append(op.operation_id)
    return _pack(fields)


def _headers(items: Any) -> Headers:
    return tuple((str(name), str(value)) for name, value in items)


def unpack_operation(data: bytes) -> Operation:
    """The operation `pack_operation` packed, as it was (nothing is checked again)."""
    kind, *f, operation_id = _unpack(data)
    if kind == "blind":
        return BlindTransfer(f[0], f[1], f[2], operation_id)
    if kind == "attended":
        return AttendedTransfer(f[0], f[1], f[2], f[3], f[4], f[5], f[6], operation_id)
    if kind == "hold":
        return HoldChange(f[0], bool(f[1]), f[2], _headers(f[3]), _headers(f[4]),
                          operation_id)
    if kind == "end":
        return EndCall(f[0], _headers(f[1]), operation_id)
    raise ValueError(f"not a call operation: {kind!r}")
