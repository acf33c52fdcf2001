"""The REST API on the management HTTP server: calls, operations on them (tracked), the
event stream (SSE) and the OpenAPI document. Errors are RFC 9457 problem details.

Built on `ControlApi` alone, so it runs the same on every runtime; the checks are those of
`sip.operations`, shared with the MI and the Python API.
"""

from .routes import RestState as RestState
from .routes import mount as mount
