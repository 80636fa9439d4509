"""Late offer (RFC 3261 section 13.2.1) through the switch, with real SIPp peers.

A SIPp phone (extension 1001) INVITEs without SDP; the switch offers to the trunk from its own
RTP port, offers to the phone in its 200, and takes the phone's answer from the ACK. Audio then
flows both ways between two test-owned RTP endpoints, through the switch.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

try:
    from peers import sipp
    from peers.ports import free_udp_tcp_port
    from peers.switchproc import SwitchProcess
except ImportError:  # pragma: no cover - run from the repository root
    from tests.peers import sipp
    from tests.peers.ports import free_udp_tcp_port
    from tests.peers.switchproc import SwitchProcess

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT),
]

OUT_NUMBER = "+905321234567"


def _body(msg: str) -> str:
    for sep in ("\r\n\r\n", "\n\n"):
        if sep in msg:
            return msg.split(sep, 1)[1]
    return ""


async def _sdp_port(workdir: Path, start: str, timeout: float = 10.0) -> int:
    """The m=audio port of the first received message starting with ``start`` in the SIPp
    message trace being written in ``workdir``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for log in workdir.glob("*_messages.log"):
            text = log.read_text(errors="replace")
            for part in text.split("message received")[1:]:
                msg = part.split("\n", 1)[1].lstrip("\n") if "\n" in part else part
                if msg.startswith(start):
                    m = re.search(r"^m=audio (\d+) ", msg, re.M)
                    if m:
                        return int(m.group(1))
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {start!r} with SDP in {workdir}")


async def test_late_offer_call_carries_audio_both_ways(tmp_path: Path) -> None:
    trunk_port = free_udp_tcp_port()
    sw = SwitchProcess(
        tmp_path / "sw", extensions=["1001"],
        trunks=[{"name": "pstn", "host": "127.0.0.1", "port": trunk_port}],
        routes=[{"pattern": "^\\+", "trunk": "pstn"}], auth={"algorithms": ["MD5"]},
    )
    with sw:
        async with sipp.RtpSink(echo=False) as far, sipp.RtpSink(echo=False) as near:
            uas = sipp.start("uas_answer", local_port=trunk_port, keys={"rtpport": far.port},
                             duration_ms=4000, workdir=tmp_path / "uas")
            await uas.wait_ready()
            caller = sipp.start(
                "t_uac_late_offer", sw.sip_port, service=OUT_NUMBER, auth_user="1001",
                auth_pass=sw.password("1001"), keys={"caller": "1001", "rtpport": near.port},
                duration_ms=3000, workdir=tmp_path / "uac",
            )
            # Once the switch has the ACK's answer, both sides' audio is relayed; each sink
            # sends to the switch port named in the SDP its SIPp peer received.
            near_dest = await _sdp_port(tmp_path / "uac", "SIP/2.0 200")
            far_dest = await _sdp_port(tmp_path / "uas", "INVITE sip:")
            await asyncio.sleep(0.3)
            await near.send_tone(1000, 1.0, payload_type=0, dest=("127.0.0.1", near_dest))
            await far.send_tone(600, 1.0, payload_type=0, dest=("127.0.0.1", far_dest))
            await near.wait_for(20, payload_type=0, timeout=5)
            await far.wait_for(20, payload_type=0, timeout=5)
            res = await caller.wait_async(20)
            uas_res = await uas.wait_async(20)
    log = sw.log()
    assert res.ok, res.describe() + log[-3000:]
    assert uas_res.ok, uas_res.describe()
    invites = res.sent("INVITE")
    assert invites and all("v=0" not in _body(m) for m in invites)
    ok = res.received("SIP/2.0 200")[0]
    offer = _body(ok)
    assert offer.startswith("v=0"), ok
    port = int(re.search(r"^m=audio (\d+) ", offer, re.M).group(1))  # type: ignore[union-attr]
    assert sw.rtp_range[0] <= port <= sw.rtp_range[1]
    # Audio sent by each side arrived at the other, from the switch's ports.
    assert far.count(0) >= 20 and near.count(0) >= 20
    for _ip, src in far.sources() | near.sources():
        assert sw.rtp_range[0] <= src <= sw.rtp_range[1]
    assert "Traceback" not in log
