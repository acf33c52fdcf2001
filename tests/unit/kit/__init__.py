"""The sans-IO test kit: what the unit tests share to drive the SIP core without sockets.

- `proxy`: a `Proxy` on a fake clock (`Net`), SIP written by hand as UAs write it, our signed
  Record-Route, Alice calling Bob step by step (`Call`), readers of what the proxy sent;
- `callops`: named user agents, a dialog through the proxy and its in-dialog requests, the call
  events the tests expect;
- `auth`: the client side of digest authentication;
- `message`: a parsed message read as the proxy reads it (only `ParseError` may come out);
- `store`: a stored snapshot and a dialog keeper over `Net`, for the dialog-store tests;
- `endpoint`: an endpoint that keeps what is sent through it.

Imported as `tests.unit.kit.<module>`; test modules import from here, never from each other.
"""
