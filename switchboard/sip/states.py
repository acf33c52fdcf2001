"""The state machines of the SIP core as tables: (state, event) → next state (after h11's
`_state.py`).

Each table is a plain dict of dicts beside the enums it uses: the four RFC 3261 §17
transactions (with the RFC 6026 Accepted state), an INVITE dialog as a proxy tracks it, a
transfer of a dialog and the implicit subscription its REFER creates (RFC 3515), and the hold
re-INVITE of one leg. The machines in `transaction.py`, `dialog.py` and `callops.py`
move only through `transition`; what they do on the way (send, arm a timer, report an event)
stays with them.

An event missing from a state's row is illegal in that state: `transition` raises
`LocalProtocolError` naming the machine, the state and the event. An input the RFC says to
absorb (a retransmission, a late answer) has an entry that keeps the state, with the reason
beside it. Timers appear as events of their own (RFC names): a timer of zero on a reliable
transport (D, I, J, K) is fired at once by its machine.

Knows nothing of messages, timers or dialogs: only the names of states and events. Enums are
`IntEnum`s so that a lookup hashes in C (a plain `Enum` hashes in Python, on the hot path).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from .errors import LocalProtocolError

S = TypeVar("S", bound=enum.IntEnum)
E = TypeVar("E", bound=enum.IntEnum)


def transition(machine: str, table: Mapping[S, Mapping[E, S]], state: S, event: E) -> S:
    """The state `event` moves `state` to, in `table` (the machine called `machine`)."""
    try:
        return table[state][event]
    except KeyError:
        raise LocalProtocolError(
            f"{machine}: {event.name} is not allowed in state {state.name}") from None


# -- transactions (RFC 3261 §17, RFC 6026) ---------------------------------------------------


class TransactionState(enum.IntEnum):
    CALLING = 1
    TRYING = 2
    PROCEEDING = 3
    COMPLETED = 4
    CONFIRMED = 5
    ACCEPTED = 6
    TERMINATED = 7


class TransactionEvent(enum.IntEnum):
    """What a transaction is fed: a request copy or an ACK from the peer (server side), a
    response by its class (from the TU on the server side, from the peer on the client side),
    a timer, a transport failure, or `SETTLE` (the TU saw the 2xx acknowledged end to end)."""

    REQUEST = 1
    ACK = 2
    PROVISIONAL = 3
    SUCCESS = 4  # 2xx
    FAILURE = 5  # 300-699
    TIMER_A = 6
    TIMER_B = 7
    TIMER_D = 8
    TIMER_E = 9
    TIMER_F = 10
    TIMER_G = 11
    TIMER_H = 12
    TIMER_I = 13
    TIMER_J = 14
    TIMER_K = 15
    TIMER_L = 16
    TIMER_M = 17
    TRANSPORT_ERROR = 18
    SETTLE = 19


_T = TransactionState
_X = TransactionEvent

# §17.2.1 (Figure 7) with RFC 6026 §7.1. Responses come from the TU (the proxy core).
INVITE_SERVER: dict[TransactionState, dict[TransactionEvent, TransactionState]] = {
    _T.PROCEEDING: {
        _X.REQUEST: _T.PROCEEDING,  # a copy of the INVITE: the last provisional is resent
        _X.ACK: _T.PROCEEDING,  # absorbed: no final response yet, so nothing it acknowledges
        _X.PROVISIONAL: _T.PROCEEDING,
        _X.SUCCESS: _T.ACCEPTED,
        _X.FAILURE: _T.COMPLETED,
    },
    _T.COMPLETED: {
        _X.REQUEST: _T.COMPLETED,  # a copy of the INVITE: the final response is resent
        _X.ACK: _T.CONFIRMED,
        # Absorbed: upstream has its final response; a later provisional or non-2xx is not
        # forwarded (§16.7 step 5), and a 2xx cannot follow a non-2xx on one transaction.
        _X.PROVISIONAL: _T.COMPLETED,
        _X.SUCCESS: _T.COMPLETED,
        _X.FAILURE: _T.COMPLETED,
        _X.TIMER_G: _T.COMPLETED,  # resend the final response
        _X.TIMER_H: _T.TERMINATED,  # no ACK ever came
    },
    _T.CONFIRMED: {
        # Absorbed: Confirmed is there to soak up copies of the ACK (and of the INVITE);
        # late answers from downstream as in Completed.
        _X.REQUEST: _T.CONFIRMED,
        _X.ACK: _T.CONFIRMED,
        _X.PROVISIONAL: _T.CONFIRMED,
        _X.SUCCESS: _T.CONFIRMED,
        _X.FAILURE: _T.CONFIRMED,
        _X.TIMER_I: _T.TERMINATED,
    },
    _T.ACCEPTED: {
        _X.REQUEST: _T.ACCEPTED,  # absorbed: copies of the INVITE (RFC 6026 §7.1)
        _X.SUCCESS: _T.ACCEPTED,  # a 2xx retransmission from downstream passes through
        # Absorbed: after a final response only 2xx go upstream (§16.7 step 5).
        _X.PROVISIONAL: _T.ACCEPTED,
        _X.FAILURE: _T.ACCEPTED,
        _X.TIMER_L: _T.TERMINATED,
        _X.SETTLE: _T.ACCEPTED,  # the 2xx was acknowledged: timer L is cut to T4
        # No ACK: in Accepted the TU relays the 2xx's ACK itself (RFC 6026 §8.7).
    },
    _T.TERMINATED: {
        # Absorbed: the transaction is over (on a reliable transport, as soon as its final
        # response went), but late answers from downstream still reach it.
        _X.PROVISIONAL: _T.TERMINATED,
        _X.SUCCESS: _T.TERMINATED,
        _X.FAILURE: _T.TERMINATED,
        _X.SETTLE: _T.TERMINATED,  # its wait ended already
    },
}

# §17.2.2 (Figure 8).
NON_INVITE_SERVER: dict[TransactionState, dict[TransactionEvent, TransactionState]] = {
    _T.TRYING: {
        _X.REQUEST: _T.TRYING,  # absorbed: "discarded" until the TU answers
        _X.PROVISIONAL: _T.PROCEEDING,
        _X.SUCCESS: _T.COMPLETED,
        _X.FAILURE: _T.COMPLETED,
    },
    _T.PROCEEDING: {
        _X.REQUEST: _T.PROCEEDING,  # a copy of the request: the last provisional is resent
        _X.PROVISIONAL: _T.PROCEEDING,
        _X.SUCCESS: _T.COMPLETED,
        _X.FAILURE: _T.COMPLETED,
    },
    _T.COMPLETED: {
        _X.REQUEST: _T.COMPLETED,  # a copy of the request: the final response is resent
        # Absorbed: late answers from downstream, or a second final; after a final response
        # only a 2xx to an INVITE is forwarded (§16.7 step 5).
        _X.PROVISIONAL: _T.COMPLETED,
        _X.SUCCESS: _T.COMPLETED,
        _X.FAILURE: _T.COMPLETED,
        _X.TIMER_J: _T.TERMINATED,
    },
    _T.TERMINATED: {
        # Absorbed: late answers, as in Completed.
        _X.PROVISIONAL: _T.TERMINATED,
        _X.SUCCESS: _T.TERMINATED,
        _X.FAILURE: _T.TERMINATED,
    },
}

# §17.1.1 (Figure 5) with RFC 6026 §7.2. Responses come from the peer.
INVITE_CLIENT: dict[TransactionState, dict[TransactionEvent, TransactionState]] = {
    _T.CALLING: {
        _X.PROVISIONAL: _T.PROCEEDING,
        _X.SUCCESS: _T.ACCEPTED,
        _X.FAILURE: _T.COMPLETED,
        _X.TIMER_A: _T.CALLING,  # retransmit the INVITE
        _X.TIMER_B: _T.TERMINATED,  # timeout: the TU is told
        _X.TRANSPORT_ERROR: _T.TERMINATED,  # §17.1.4: as a timeout
    },
    _T.PROCEEDING: {
        _X.PROVISIONAL: _T.PROCEEDING,
        _X.SUCCESS: _T.ACCEPTED,
        _X.FAILURE: _T.COMPLETED,
        _X.TRANSPORT_ERROR: _T.TERMINATED,
    },
    _T.COMPLETED: {
        _X.FAILURE: _T.COMPLETED,  # a copy of the final response: the ACK is resent
        # Absorbed: a late provisional; a 2xx after the non-2xx we acknowledged.
        _X.PROVISIONAL: _T.COMPLETED,
        _X.SUCCESS: _T.COMPLETED,
        _X.TIMER_D: _T.TERMINATED,
        _X.TRANSPORT_ERROR: _T.COMPLETED,  # absorbed: an answer came, nothing left to fail
    },
    _T.ACCEPTED: {
        _X.SUCCESS: _T.ACCEPTED,  # 2xx copies go to the TU (RFC 6026 §7.2)
        # Absorbed: a late provisional, or a non-2xx after the 2xx (RFC 6026 §7.2).
        _X.PROVISIONAL: _T.ACCEPTED,
        _X.FAILURE: _T.ACCEPTED,
        _X.TIMER_M: _T.TERMINATED,
        _X.SETTLE: _T.ACCEPTED,  # the 2xx was acknowledged: timer M is cut to T4
        _X.TRANSPORT_ERROR: _T.ACCEPTED,  # absorbed, as in Completed
    },
    _T.TERMINATED: {
        _X.SETTLE: _T.TERMINATED,  # absorbed: its wait ended already
        # Absorbed: the give-up timer of a CANCEL (RFC 3261 §9.1) may outlive it.
        _X.TRANSPORT_ERROR: _T.TERMINATED,
    },
}

# §17.1.2 (Figure 6).
NON_INVITE_CLIENT: dict[TransactionState, dict[TransactionEvent, TransactionState]] = {
    _T.TRYING: {
        _X.PROVISIONAL: _T.PROCEEDING,
        _X.SUCCESS: _T.COMPLETED,
        _X.FAILURE: _T.COMPLETED,
        _X.TIMER_E: _T.TRYING,  # retransmit
        _X.TIMER_F: _T.TERMINATED,  # timeout: the TU is told
        _X.TRANSPORT_ERROR: _T.TERMINATED,
    },
    _T.PROCEEDING: {
        _X.PROVISIONAL: _T.PROCEEDING,
        _X.SUCCESS: _T.COMPLETED,
        _X.FAILURE: _T.COMPLETED,
        _X.TIMER_E: _T.PROCEEDING,  # retransmit, every T2
        _X.TIMER_F: _T.TERMINATED,
        _X.TRANSPORT_ERROR: _T.TERMINATED,
    },
    _T.COMPLETED: {
        # Absorbed: copies of the final response (and a late provisional).
        _X.PROVISIONAL: _T.COMPLETED,
        _X.SUCCESS: _T.COMPLETED,
        _X.FAILURE: _T.COMPLETED,
        _X.TIMER_K: _T.TERMINATED,
        _X.TRANSPORT_ERROR: _T.COMPLETED,  # absorbed: an answer came, nothing left to fail
    },
    _T.TERMINATED: {
        _X.TRANSPORT_ERROR: _T.TERMINATED,  # absorbed, as in Completed
    },
}


# -- dialogs (RFC 3261 §12, the OpenSIPS dialog module's states) -------------------------------


class DialogState(enum.IntEnum):
    """The OpenSIPS numbers, which the events and the MI carry."""

    UNCONFIRMED = 1
    EARLY = 2
    CONFIRMED_NA = 3  # answered, not acknowledged yet
    CONFIRMED = 4
    DELETED = 5


class DialogEvent(enum.IntEnum):
    """Answers to the initial INVITE by class, in-dialog requests that move the dialog, and
    `END` (the proxy ends the dialog itself: CANCEL or BYE of its own, failure, timeout)."""

    TRYING = 1  # 100, or a provisional without a To tag: no early dialog (§12.1)
    PROVISIONAL = 2  # 101-199 with a To tag: the early dialog
    SUCCESS = 3  # 2xx
    FAILURE = 4  # 300-699
    ACK = 5
    BYE = 6
    END = 7


_D = DialogState
_V = DialogEvent

DIALOG: dict[DialogState, dict[DialogEvent, DialogState]] = {
    _D.UNCONFIRMED: {
        _V.TRYING: _D.UNCONFIRMED,
        _V.PROVISIONAL: _D.EARLY,
        _V.SUCCESS: _D.CONFIRMED_NA,
        _V.FAILURE: _D.DELETED,
        _V.ACK: _D.UNCONFIRMED,  # absorbed: there is no 2xx for it to acknowledge yet
        _V.BYE: _D.DELETED,
        _V.END: _D.DELETED,
    },
    _D.EARLY: {
        _V.TRYING: _D.EARLY,
        _V.PROVISIONAL: _D.EARLY,  # another provisional: the callee's leg is updated
        _V.SUCCESS: _D.CONFIRMED_NA,
        _V.FAILURE: _D.DELETED,
        _V.ACK: _D.EARLY,  # absorbed, as in Unconfirmed
        _V.BYE: _D.DELETED,
        _V.END: _D.DELETED,
    },
    _D.CONFIRMED_NA: {
        # Absorbed: the first 2xx decided; later answers (copies of it, or another branch's)
        # leave the dialog as it is.
        _V.TRYING: _D.CONFIRMED_NA,
        _V.PROVISIONAL: _D.CONFIRMED_NA,
        _V.SUCCESS: _D.CONFIRMED_NA,
        _V.FAILURE: _D.CONFIRMED_NA,
        _V.ACK: _D.CONFIRMED,
        _V.BYE: _D.DELETED,
        _V.END: _D.DELETED,
    },
    _D.CONFIRMED: {
        _V.TRYING: _D.CONFIRMED,  # absorbed, as in Confirmed-NA
        _V.PROVISIONAL: _D.CONFIRMED,
        _V.SUCCESS: _D.CONFIRMED,
        _V.FAILURE: _D.CONFIRMED,
        _V.ACK: _D.CONFIRMED,  # a copy of the ACK, or the ACK of a re-INVITE
        _V.BYE: _D.DELETED,
        _V.END: _D.DELETED,
    },
    _D.DELETED: {
        # Absorbed: a deleted dialog is kept a while only so that late messages still match.
        # Not END: the proxy ends only a dialog that is still active.
        _V.TRYING: _D.DELETED,
        _V.PROVISIONAL: _D.DELETED,
        _V.SUCCESS: _D.DELETED,
        _V.FAILURE: _D.DELETED,
        _V.ACK: _D.DELETED,
        _V.BYE: _D.DELETED,
    },
}


# -- a transfer of one dialog (call operations: REFER, RFC 3515) -----------------------------


class TransferState(enum.IntEnum):
    IDLE = 1  # no transfer running: one may start
    REFERRING = 2  # our REFER went out; the new call it asks for has not been seen
    LINKED = 3  # the new call was seen; its final answer is awaited
    # The new call was answered: the old call ends at the transferee's last NOTIFY (or
    # after a grace time). A new transfer may start.
    SUCCEEDED = 4
    # A transfer succeeded, and since then another new call took this dialog over (by
    # Replaces, or the script's call_blind_replace): its answer is awaited, and the old
    # call still ends at the last NOTIFY of the transfer that succeeded.
    RELINKED = 5


class TransferEvent(enum.IntEnum):
    START = 1  # a REFER is being sent
    UNSENT = 2  # ... and could not be
    REFUSED = 3  # the REFER got a non-2xx final answer
    OVERDUE = 4  # the new call did not come in time
    LINK = 5  # a new call for this dialog was seen
    CLAIM = 6  # a new call took this dialog over, naming the leg it replaces
    ANSWERED = 7  # the new call got a 2xx
    FAILED = 8  # the new call failed
    FINAL_NOTIFY = 9  # the transferee's last NOTIFY (Subscription-State: terminated)


_R = TransferState
_F = TransferEvent

# Busy states (REFERRING, LINKED, RELINKED) have no START: a second transfer is refused.
TRANSFER: dict[TransferState, dict[TransferEvent, TransferState]] = {
    _R.IDLE: {
        _F.START: _R.REFERRING,
        _F.REFUSED: _R.IDLE,  # absorbed: the transfer already ended
        _F.OVERDUE: _R.IDLE,  # absorbed: it ended before its new call was due
        _F.LINK: _R.IDLE,  # a late (or unasked-for) new call: reported, the dialog stays free
        _F.CLAIM: _R.LINKED,
        _F.ANSWERED: _R.SUCCEEDED,
        _F.FAILED: _R.IDLE,
        _F.FINAL_NOTIFY: _R.IDLE,
    },
    _R.REFERRING: {
        _F.UNSENT: _R.IDLE,
        _F.REFUSED: _R.IDLE,
        _F.OVERDUE: _R.IDLE,
        _F.LINK: _R.LINKED,
        _F.CLAIM: _R.LINKED,
        _F.ANSWERED: _R.SUCCEEDED,
        _F.FAILED: _R.IDLE,
        # The transferee is done with the REFER: the dialog is free even if its new call
        # never reached us (or lost the match parameter on the way).
        _F.FINAL_NOTIFY: _R.IDLE,
    },
    _R.LINKED: {
        # No OVERDUE: linking the new call cancels that timer.
        _F.REFUSED: _R.IDLE,
        _F.LINK: _R.LINKED,
        _F.CLAIM: _R.LINKED,
        _F.ANSWERED: _R.SUCCEEDED,
        _F.FAILED: _R.IDLE,
        _F.FINAL_NOTIFY: _R.IDLE,
    },
    _R.SUCCEEDED: {
        _F.START: _R.REFERRING,
        _F.REFUSED: _R.SUCCEEDED,  # absorbed, as in Idle
        _F.OVERDUE: _R.SUCCEEDED,  # absorbed, as in Idle
        _F.LINK: _R.SUCCEEDED,  # reported, as in Idle
        _F.CLAIM: _R.RELINKED,
        _F.ANSWERED: _R.SUCCEEDED,
        _F.FAILED: _R.SUCCEEDED,  # a late failure changes nothing: one new call answered
        _F.FINAL_NOTIFY: _R.SUCCEEDED,  # the old call ends now
    },
    _R.RELINKED: {
        _F.REFUSED: _R.SUCCEEDED,
        _F.LINK: _R.RELINKED,
        _F.CLAIM: _R.RELINKED,
        _F.ANSWERED: _R.SUCCEEDED,
        _F.FAILED: _R.SUCCEEDED,
        _F.FINAL_NOTIFY: _R.SUCCEEDED,  # the old call ends now
    },
}


class SubscriptionState(enum.IntEnum):
    """The implicit subscription a REFER of ours creates (RFC 3515 §2.4.4), as the proxy,
    which answers its NOTIFYs in the other party's place, sees it."""

    NONE = 1  # no subscription whose NOTIFYs we answer
    ACTIVE = 2
    TERMINATED = 3  # the transferee's last NOTIFY came


class SubscriptionEvent(enum.IntEnum):
    SUBSCRIBED = 1  # our REFER went out, and we answer its NOTIFYs
    UNSUBSCRIBED = 2  # our REFER went out; its NOTIFYs are the script's (manual mode)
    UNSENT = 3  # a REFER could not be sent
    GIVEN_UP = 4  # the transfer failed before the transferee ended the subscription
    FINAL_NOTIFY = 5


_B = SubscriptionState
_U = SubscriptionEvent

SUBSCRIPTION: dict[SubscriptionState, dict[SubscriptionEvent, SubscriptionState]] = {
    _B.NONE: {
        _U.SUBSCRIBED: _B.ACTIVE,
        _U.UNSUBSCRIBED: _B.NONE,
        _U.UNSENT: _B.NONE,
        _U.GIVEN_UP: _B.NONE,
        _U.FINAL_NOTIFY: _B.TERMINATED,  # the script hands it over (call_transfer_notify)
    },
    _B.ACTIVE: {
        _U.SUBSCRIBED: _B.ACTIVE,
        _U.UNSUBSCRIBED: _B.NONE,
        _U.UNSENT: _B.ACTIVE,  # the earlier transfer's subscription goes on
        _U.GIVEN_UP: _B.NONE,
        _U.FINAL_NOTIFY: _B.TERMINATED,
    },
    _B.TERMINATED: {
        _U.SUBSCRIBED: _B.ACTIVE,
        _U.UNSUBSCRIBED: _B.NONE,
        _U.UNSENT: _B.NONE,  # a new transfer was started: the old end is forgotten
        _U.GIVEN_UP: _B.TERMINATED,  # it ended already
        _U.FINAL_NOTIFY: _B.TERMINATED,  # another terminating NOTIFY: answered all the same
    },
}


# -- the hold re-INVITE of one leg (RFC 3264 offers, RFC 3261 §14) -----------------------------


class HoldState(enum.IntEnum):
    IDLE = 1  # no re-INVITE of ours in flight toward the leg: an offer may be made
    OFFERING = 2  # our re-INVITE is out; its answer is awaited
    BACKING_OFF = 3  # it met glare (491): a retry waits (RFC 3261 §14.1)


class HoldEvent(enum.IntEnum):
    OFFER = 1  # a hold or unhold re-INVITE is being sent
    UNSENT = 2  # ... and could not be
    ANSWERED = 3  # a final answer (2xx or not) that ends the offer
    GLARE = 4  # a 491 with retries left
    RETRY = 5  # the back-off is over: the offer is sent again
    ABANDONED = 6  # the back-off is over but the dialog has ended


_H = HoldState
_O = HoldEvent

HOLD: dict[HoldState, dict[HoldEvent, HoldState]] = {
    _H.IDLE: {
        _O.OFFER: _H.OFFERING,
    },
    _H.OFFERING: {
        # No OFFER: one re-INVITE at a time (a second one is refused with 491).
        _O.UNSENT: _H.IDLE,
        _O.ANSWERED: _H.IDLE,
        _O.GLARE: _H.BACKING_OFF,
    },
    _H.BACKING_OFF: {
        _O.RETRY: _H.OFFERING,
        _O.ABANDONED: _H.IDLE,
    },
}
