"""The management interface: command registry, JSON-RPC dispatch, HTTP server and client.

The MI translates JSON-RPC calls (OpenSIPS `mi_http` conventions) into `ControlApi` calls;
it holds no call state of its own. The HTTP server lives in `switchboard.mi.http` and is not
imported here, so the CLI client starts without loading aiohttp.
"""

from .registry import Command as Command
from .registry import CommandContext as CommandContext
from .registry import Params as Params
from .registry import Registry as Registry
