"""switchboard's benchmark suite, run with `python -m bench` (see bench/README.md).

Modules: `systems` (start/stop each proxy under test, find its processes), `sipp` (SIPp
command lines and output parsing), `proc` (CPU and memory from /proc), `callrate` (the stepped
call-rate measurement and the clean-step rule), `report` (JSON, markdown, plots), `suite`
(the command line and progress display).
"""
