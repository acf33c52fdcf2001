"""Call events raised by the call operations (`callops`), below the proxy so its event list
can hold them without knowing the layer that raises them.

The OpenSIPS-shaped parameters (`E_CALL_TRANSFER`, `E_CALL_HOLD`) are what the events carry;
dialog state changes are `dialog.DialogStateChanged`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CallEvent:
    name: str
    params: dict[str, Any]
