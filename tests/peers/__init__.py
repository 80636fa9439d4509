"""Interop test harness: real third-party SIP peers (SIPp, baresip, pjsua2) driven from pytest.

Modules:
    ports       free_udp_tcp_port(), free_port_range(n)
    sipp        run/arun/start SIPp with tests/peers/scenarios/*.xml; RtpSink; pcap reader
    baresip     BaresipInstance (async, ctrl_tcp)
    pjsua       pjsua2 in a subprocess (register / call / answer with wav play + record)
    audio       tone WAVs, dominant_frequency, rms, G.711
    switchproc  run the switch (python -m switch run -c cfg.toml) with free ports

Import from test modules in tests/ as ``from peers import sipp`` (pytest puts tests/ on
sys.path because tests/ has no __init__.py). ``tests.peers`` is NOT reliable: the ``sippy``
package (a bench dependency) installs a top-level ``tests`` package into site-packages, which
wins over the namespace package tests/. Inside this package imports are relative.
"""
