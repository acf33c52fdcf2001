"""Configuration: a TOML file read into frozen dataclasses, `serve` flags on top.

Every key has a default, so no file at all is a valid configuration. Unknown keys and bad
values raise `ConfigError` naming the key, and the line in the file where it can be found.

The keys are declared once, in `schema.py`; reading (`reading.py`), the flag overrides
(`flags.py`), `check-config --print` and the reference in the README (`writing.py`) all come
from there. How a key's value is read and written is in `kinds.py`, the text forms of values
(addresses, names) in `values.py`.

Every dataclass of the configuration is named here: the `ray` runtime rebuilds a `Config`
from the class names (`cluster/ray_runtime.py:_decode_config`).
"""

from .flags import ServeFlag as ServeFlag
from .flags import apply_overrides as apply_overrides
from .flags import serve_flags as serve_flags
from .kinds import ConfigError as ConfigError
from .reading import load_config as load_config
from .reading import parse_config as parse_config
from .schema import AuthConfig as AuthConfig
from .schema import CallopsConfig as CallopsConfig
from .schema import Config as Config
from .schema import DialogConfig as DialogConfig
from .schema import EventsConfig as EventsConfig
from .schema import EventSubscription as EventSubscription
from .schema import HepConfig as HepConfig
from .schema import LimitsConfig as LimitsConfig
from .schema import ListenConfig as ListenConfig
from .schema import LogConfig as LogConfig
from .schema import MIConfig as MIConfig
from .schema import ProxySection as ProxySection
from .schema import RuntimeConfig as RuntimeConfig
from .schema import ScriptConfig as ScriptConfig
from .schema import TlsConfig as TlsConfig
from .schema import TransferConfig as TransferConfig
from .schema import WebSocketConfig as WebSocketConfig
from .values import CALLOPS_MODES as CALLOPS_MODES
from .values import DIGEST_ALGORITHMS as DIGEST_ALGORITHMS
from .values import MAX_CAPTURE_ID as MAX_CAPTURE_ID
from .values import RUNTIME_KINDS as RUNTIME_KINDS
from .values import TRANSPORTS as TRANSPORTS
from .values import CallopsMode as CallopsMode
from .values import HostPort as HostPort
from .values import ListenSocket as ListenSocket
from .values import RuntimeKind as RuntimeKind
from .values import Transport as Transport
from .values import parse_hep as parse_hep
from .values import parse_host_port as parse_host_port
from .values import parse_listen as parse_listen
from .writing import dump_config as dump_config
from .writing import reference as reference
