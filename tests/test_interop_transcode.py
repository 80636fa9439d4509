"""PCMU <-> PCMA transcoding through the switch, with real SIPp peers.

The caller (SIPp, extension 1001) offers only PCMU; the trunk (SIPp UAS) accepts only PCMA.
The switch offers the trunk both laws, answers the caller in PCMU, and the relay converts the
audio each way. Test-owned RTP endpoints stand behind both SDPs and check what arrives: the
payload type the receiver negotiated and the tone the other side sent.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

try:
    from peers import audio, sipp
    from peers.ports import free_udp_tcp_port
    from peers.switchproc import SwitchProcess
except ImportError:  # pragma: no cover - run from the repository root
    from tests.peers import audio, sipp
    from tests.peers.ports import free_udp_tcp_port
    from tests.peers.switchproc import SwitchProcess

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT),
]

OUT_NUMBER = "+905321234567"


async def _sdp_port(workdir: Path, start: str, timeout: float = 10.0) -> int:
    """The m=audio port of the first received message starting with ``start`` in the SIPp
    message trace being written in ``workdir``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for log in workdir.glob("*_messages.log"):
            for part in log.read_text(errors="replace").split("message received")[1:]:
                msg = part.split("\n", 1)[1].lstrip("\n") if "\n" in part else part
                if msg.startswith(start):
                    m = re.search(r"^m=audio (\d+) ", msg, re.M)
                    if m:
                        return int(m.group(1))
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {start!r} with SDP in {workdir}")


async def test_pcmu_caller_and_pcma_trunk_hear_each_other(tmp_path: Path) -> None:
    trunk_port = free_udp_tcp_port()
    caller_scn = sipp.render_scenario("uac_auth_call", tmp_path / "uac", {
        "m=audio [media_port] RTP/AVP 8 0 101": "m=audio [rtpport] RTP/AVP 0 101",
        "      a=rtpmap:8 PCMA/8000\n": "",
    })
    trunk_scn = sipp.render_scenario("uas_answer", tmp_path / "uas", {
        "RTP/AVP 8 0 101": "RTP/AVP 8 101",
        "      a=rtpmap:0 PCMU/8000\n": "",
    })
    sw = SwitchProcess(
        tmp_path / "sw", extensions=["1001"],
        trunks=[{"name": "pstn", "host": "127.0.0.1", "port": trunk_port}],
        routes=[{"pattern": "^\\+", "trunk": "pstn"}], auth={"algorithms": ["MD5"]},
    )
    with sw:
        async with sipp.RtpSink() as near, sipp.RtpSink() as far:
            uas = sipp.start(trunk_scn, local_port=trunk_port, keys={"rtpport": far.port},
                             workdir=tmp_path / "uas")
            await uas.wait_ready()
            caller = sipp.start(
                caller_scn, sw.sip_port, service=OUT_NUMBER, auth_user="1001",
                auth_pass=sw.password("1001"), keys={"caller": "1001", "rtpport": near.port},
                duration_ms=3000, workdir=tmp_path / "uac",
            )
            near_dest = await _sdp_port(tmp_path / "uac", "SIP/2.0 200")
            far_dest = await _sdp_port(tmp_path / "uas", "INVITE sip:")
            await asyncio.sleep(0.2)
            await asyncio.gather(
                near.send_tone(1000, 1.0, payload_type=0, dest=("127.0.0.1", near_dest)),
                far.send_tone(600, 1.0, payload_type=8, dest=("127.0.0.1", far_dest)),
            )
            await far.wait_for(40, timeout=5)
            await near.wait_for(40, timeout=5)
            res = await caller.wait_async(20)
            uas_res = await uas.wait_async(20)
    log = sw.log()
    assert res.ok, res.describe() + log[-3000:]
    assert uas_res.ok, uas_res.describe()
    # The trunk was offered both laws; each side heard only the law it negotiated.
    offer_b = uas_res.received("INVITE")[0]
    assert re.search(r"^a=rtpmap:8 PCMA/8000", offer_b, re.M), offer_b
    assert far.payload_types() == {8}, far.payload_types()
    assert near.payload_types() == {0}, near.payload_types()
    # ... and the other side's tone, converted (a mis-decoded law is loud noise, not a tone).
    assert abs(audio.dominant_frequency(far.audio(8), 8000) - 1000) < 10
    assert abs(audio.dominant_frequency(near.audio(0), 8000) - 600) < 10
    assert "Traceback" not in log
