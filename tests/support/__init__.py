"""The shared test kit: what the integration, interop and cluster suites, the fixtures of
tests/conftest.py, a few unit tests and the bench use (the SIP core's sans-IO kit is
tests/unit/kit).

- `ports`: free loopback ports (one at a time, or a block), waiting until one is bound;
- `server`: `python -m switchboard serve` as a subprocess, its output, MI calls, `dialog:list`;
- `mi`: a JSON-RPC client for the MI over HTTP (kept alive for the bench, one call a connection
  for the tests);
- `sipp`: the SIPp binary, a scenario run, its statistics CSV, its message trace, a test's runs
  waited for (caller first) or killed together;
- `udp`: a UDP socket on loopback with a reader thread (sinks and fake user agents);
- `events`: switchboard's events as a datagram subscriber receives them;
- `sip`: SIP requests written by hand for a socket (a dispatcher's OPTIONS ping);
- `hep`: HEP3 packets taken apart (a decoder independent of switchboard's encoder);
- `fake_api`: a fake node behind the MI (canned dialogs and statistics, calls recorded);
- `output`: a long output cut down for a failure message.

Imported as `tests.support.<module>` (the repository is the one import root); test modules
import from here, never from each other or from a conftest.
"""
