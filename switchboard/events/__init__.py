"""Event delivery to outside subscribers: the JSON-RPC envelope, sinks and subscriptions.

This package knows event names and how to deliver bytes to a socket string; it does not know
what raises an event (the dialog and callops actors) nor who routes them (`actors/eventbus`).
"""

from typing import Final

from .envelope import encode_event as encode_event
from .sinks import SinkAddress as SinkAddress
from .sinks import parse_sink as parse_sink
from .subscriptions import Subscription as Subscription
from .subscriptions import SubscriptionTable as SubscriptionTable

# Names as OpenSIPS raises them (dialog module, callops module); the params of each are listed
# in spec/callops.md §8 and ecosystem.md §2.
E_DLG_STATE_CHANGED: Final = "E_DLG_STATE_CHANGED"
E_CALL_TRANSFER: Final = "E_CALL_TRANSFER"
E_CALL_HOLD: Final = "E_CALL_HOLD"

KNOWN_EVENTS: Final[tuple[str, ...]] = (E_DLG_STATE_CHANGED, E_CALL_TRANSFER, E_CALL_HOLD)
