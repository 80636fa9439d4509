"""Interop: the destination policy and tenant limits on a real phone's calls (SIPp).

* A SIPp phone (extension 1001, tenant "default", policy ``scope = "national"`` with the
  default premium-rate block) dials a Turkish premium-rate number and a Spanish number: each
  gets 403 "Destination Not Allowed" after authenticating, and the trunk (a SIPp UAS) never
  sees an INVITE for them; the same phone then calls a Turkish mobile number, which reaches
  the trunk and is answered.
* ``[limits] "tenant:default" = { max_concurrent = 1 }`` applies to phones' own calls: while
  one call is up a second gets 503, and once it has ended a third goes through (the slot is
  given back at the end of the call).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_interop_media import OUT_NUMBER, EmbeddedSwitch, no_switch_errors, start_trunk

try:
    from peers import sipp
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import sipp

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)]

PREMIUM = "+909001234567"  # TR 900: phonenumbers PREMIUM_RATE
ABROAD = "+34912345678"    # valid, routable, but international for a TR national-only tenant


def _expect(status: int, tmp_path: Path) -> Path:
    """uac_auth_notfound, expecting ``status`` as the final answer instead of 404/480."""
    return sipp.render_scenario("uac_auth_notfound", tmp_path, {
        'response="404"': f'response="{status}"', '<recv response="480"/>':
        f'<recv response="{status}"/>'})


async def _call(sw: EmbeddedSwitch, scenario: str | Path, number: str, tmp_path: Path,
                duration_ms: int = 300) -> sipp.SippResult:
    return await sipp.arun(scenario, sw.sip_port, service=number, auth_user="1001",
                           auth_pass=sw.passwords["1001"], keys={"caller": "1001"},
                           duration_ms=duration_ms, workdir=tmp_path, timeout=30)


@pytest.mark.timeout(120)
async def test_phone_dialling_blocked_numbers_gets_403_and_trunk_sees_nothing(
        tmp_path: Path) -> None:
    extra = {"policy": {"default": {"scope": "national"}}}
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink)
        try:
            await uas.wait_ready()
            refused = [await _call(sw, _expect(403, tmp_path), number, tmp_path)
                       for number in (PREMIUM, ABROAD)]
            allowed = await _call(sw, "uac_auth_call", OUT_NUMBER, tmp_path)
            uas_res = await uas.wait_async(15)
        finally:
            uas.stop()
        audit = [e for e in sw.sw.audit.recent if e["action"] == "call"]
        for res in refused:
            res.check()
            finals = res.received("SIP/2.0 403")
            assert finals and "Destination Not Allowed" in finals[-1].splitlines()[0], \
                res.describe()
        allowed.check()
        assert uas_res.ok, uas_res.describe() + sw.diag()
        invites = uas_res.received("INVITE")
        assert len(invites) == 1 and OUT_NUMBER in invites[0].splitlines()[0], invites
        assert not [e for e in sw.events if e.name == "leg-initiated" and any(
            n in str(e.data.get("target", "")) + str(e.data.get("destination", ""))
            for n in (PREMIUM, ABROAD))]
        assert [(e["result"], e["destination"], e["caller"], e["source_ip"])
                for e in audit] == [("denied", PREMIUM, "1001", "127.0.0.1"),
                                    ("denied", ABROAD, "1001", "127.0.0.1")]
        assert audit[0]["reason"] == "premium-rate numbers are blocked"
        assert audit[1]["reason"] == "international numbers are not allowed"
        no_switch_errors(sw)


@pytest.mark.timeout(120)
async def test_tenant_concurrency_limit_applies_to_phone_calls(tmp_path: Path) -> None:
    extra = {"limits": {"tenant:default": {"max_concurrent": 1}}}
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw, sipp.RtpSink() as sink:
        uas = sipp.start("uas_answer", local_port=sw.trunk_port, keys={"rtpport": sink.port},
                         workdir=tmp_path, calls=2)
        try:
            await uas.wait_ready()
            first = asyncio.create_task(_call(sw, "uac_auth_call", OUT_NUMBER, tmp_path,
                                              duration_ms=4000))
            await sw.wait_event("bridged", timeout=20)
            limiter = sw.sw.limits.get("tenant:default")
            assert limiter is not None and limiter.active == 1
            second = await _call(sw, _expect(503, tmp_path), OUT_NUMBER, tmp_path)
            first_res = await first
            for _ in range(100):  # bounded: the slot comes back when the call's BYE is done
                if limiter.active == 0:
                    break
                await asyncio.sleep(0.05)
            third = await _call(sw, "uac_auth_call", OUT_NUMBER, tmp_path)
            uas_res = await uas.wait_async(15)
        finally:
            uas.stop()
        first_res.check()
        second.check()
        final = second.received("SIP/2.0 503")
        assert final and "Call Limit Exceeded" in final[-1].splitlines()[0], second.describe()
        third.check()
        assert uas_res.ok, uas_res.describe() + sw.diag()
        assert len(uas_res.received("INVITE")) == 2  # the refused call never reached it
        assert limiter.active == 0
        no_switch_errors(sw)
