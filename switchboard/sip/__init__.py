"""Sans-IO SIP: messages, URIs, transactions, dialogs and the proxy core.

Nothing in this package opens a socket, reads a clock or imports asyncio: time and
randomness come in as arguments, and what must be sent or armed comes out as values.
"""

from .errors import LocalProtocolError as LocalProtocolError
from .errors import ParseError as ParseError
from .errors import RemoteProtocolError as RemoteProtocolError
from .headers import CSeq as CSeq
from .headers import Via as Via
from .message import Request as Request
from .message import Response as Response
from .message import build_response as build_response
from .message import parse_message as parse_message
from .uri import NameAddr as NameAddr
from .uri import SipUri as SipUri
from .uri import parse_name_addr as parse_name_addr
from .uri import parse_uri as parse_uri
