"""What the call operations (`callops`) report, as values: a transfer started, linked to its
new call, notified by the transferee, ended; a hold or unhold re-INVITE sent and answered.

They sit below the proxy so its event list can hold them without knowing the layer that
raises them. The OpenSIPS-shaped parameters (`E_CALL_TRANSFER`, `E_CALL_HOLD`) are made from
them in one place, at the edge (`switchboard/events/opensips.py`); dialog state changes are
`dialog.DialogStateChanged`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every event ends with `operation_id`: the id of the tracked operation that caused it (the
# REST API's), None for an untracked one or for what no operation caused.


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """The REFER went out to `leg` of `call_id`."""

    call_id: str
    leg: str
    transfer_callid: str
    destination: str
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class TransferLinked:
    """The new call `transfer_callid` was seen and linked to `call_id`."""

    call_id: str
    leg: str
    transfer_callid: str
    destination: str
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class TransferNotified:
    """The transferee reported on its new call (a NOTIFY's sipfrag status line)."""

    call_id: str
    leg: str
    transfer_callid: str
    status: str
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """The transfer is over: the new call answered (`ok`), or it failed (`status` says why,
    "" when the REFER could not even be sent)."""

    call_id: str
    leg: str
    transfer_callid: str
    destination: str
    ok: bool
    status: str
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class HoldStarted:
    """A hold or unhold re-INVITE (`action`) went out to `leg`."""

    call_id: str
    leg: str
    action: str
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class HoldAnswered:
    """It was answered (`ok`: a 2xx), or it failed or could not be sent; `status` is the
    answer's status line ("" when none came)."""

    call_id: str
    leg: str
    action: str
    ok: bool
    status: str = ""
    operation_id: str | None = None


CallEvent = (TransferStarted | TransferLinked | TransferNotified | TransferEnded | HoldStarted
             | HoldAnswered)
