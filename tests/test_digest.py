"""Tests for sip.digest: RFC 7616 vectors, client/server round trips and hostile input."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.digest import (
    AuthResult,
    DigestClient,
    DigestServer,
    StoredHA1,
    choose_challenge,
    compute_response,
    hash_a1,
    parse_auth_header,
)

# RFC 7616 section 3.9.1 worked example.
RFC_USER = "Mufasa"
RFC_PASSWORD = "Circle of Life"
RFC_REALM = "http-auth@example.org"
RFC_URI = "/dir/index.html"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_RESPONSE = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}

REALM = "softswitch"
USERS = {"1001": "secret1001", "1002": "s3cr3t"}
T0 = 1000.0


def password_for(user: str) -> str | None:
    return USERS.get(user)


def server(**kwargs: Any) -> DigestServer:
    return DigestServer(REALM, b"test-secret", **kwargs)


def challenge_for(srv: DigestServer, algorithm: str, now: float = T0) -> str:
    for value in srv.challenges(now):
        if f"algorithm={algorithm}," in value:
            return value
    raise AssertionError(f"no {algorithm} challenge")


def answer(
    challenge: str,
    *,
    user: str = "1001",
    password: str = "secret1001",
    method: str = "REGISTER",
    uri: str = "sip:127.0.0.1:5060",
    nc: int = 1,
    cnonce: str = "0a4f113b",
    body: bytes = b"",
) -> str:
    return DigestClient.answer(
        challenge,
        method=method,
        uri=uri,
        username=user,
        password=password,
        cnonce=cnonce,
        nc=nc,
        body=body,
    )


def replace_param(header: str, name: str, new_value: str) -> str:
    """Rebuild a Digest header with one parameter's (unquoted) value replaced."""
    _, params = parse_auth_header(header)
    assert name in params
    params[name] = new_value
    return "Digest " + ", ".join(
        f'{k}="{v}"' if k not in ("qop", "nc", "algorithm") else f"{k}={v}"
        for k, v in params.items()
    )


# -- RFC test vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_vectors_compute_response(algorithm: str) -> None:
    got = compute_response(
        algorithm=algorithm,
        username=RFC_USER,
        realm=RFC_REALM,
        password=RFC_PASSWORD,
        method="GET",
        uri=RFC_URI,
        nonce=RFC_NONCE,
        qop="auth",
        nc="00000001",
        cnonce=RFC_CNONCE,
    )
    assert got == RFC_RESPONSE[algorithm]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_vectors_through_client(algorithm: str) -> None:
    challenge = (
        f'Digest realm="{RFC_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
    )
    value = DigestClient.answer(
        challenge,
        method="GET",
        uri=RFC_URI,
        username=RFC_USER,
        password=RFC_PASSWORD,
        cnonce=RFC_CNONCE,
        nc=1,
    )
    scheme, params = parse_auth_header(value)
    assert scheme == "Digest"
    assert params["response"] == RFC_RESPONSE[algorithm]
    assert params["qop"] == "auth"
    assert params["nc"] == "00000001"
    assert params["opaque"] == RFC_OPAQUE
    assert params["algorithm"] == algorithm
    assert params["username"] == RFC_USER
    assert params["uri"] == RFC_URI


def test_rfc2617_md5_vector() -> None:
    # RFC 2617 section 3.5 example.
    got = compute_response(
        algorithm="MD5",
        username="Mufasa",
        realm="testrealm@host.com",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert got == "6629fae49393a05397450978507c4ef1"


def test_rfc2069_form_is_hash_of_ha1_nonce_ha2() -> None:
    import hashlib

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5("Mufasa:testrealm@host.com:Circle Of Life")
    ha2 = md5("GET:/dir/index.html")
    expected = md5(f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}")
    got = compute_response(
        algorithm="MD5",
        username="Mufasa",
        realm="testrealm@host.com",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop=None,
        nc=None,
        cnonce=None,
    )
    assert got == expected


# -- challenges ------------------------------------------------------------------------------


def test_challenges_in_configured_order_sha256_first_by_default() -> None:
    assert [
        parse_auth_header(v)[1]["algorithm"] for v in DigestServer(REALM, b"k").challenges(T0)
    ] == ["SHA-256", "MD5"]
    srv = DigestServer(REALM, b"k", algorithms=("MD5", "SHA-256"))
    values = srv.challenges(T0)
    assert len(values) == 2
    parsed = [parse_auth_header(v) for v in values]
    assert [p["algorithm"] for _, p in parsed] == ["MD5", "SHA-256"]
    for scheme, params in parsed:
        assert scheme == "Digest"
        assert params["realm"] == REALM
        assert params["qop"] == "auth"
        assert params["nonce"] and params["opaque"]
        assert "stale" not in params
    assert values[0].startswith('Digest realm="softswitch", nonce="')


def test_stale_challenge_flag() -> None:
    values = server().challenges(T0, stale=True)
    assert all(parse_auth_header(v)[1]["stale"] == "true" for v in values)


def test_nonces_are_unique() -> None:
    srv = server()
    nonces = {parse_auth_header(srv.challenges(T0)[0])[1]["nonce"] for _ in range(50)}
    assert len(nonces) == 50


def test_constructor_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError):
        DigestServer(REALM, b"k", algorithms=("SHA-512",))
    with pytest.raises(ValueError):
        DigestServer(REALM, b"k", algorithms=())


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_round_trip_qop_auth(algorithm: str) -> None:
    srv = server()
    value = answer(challenge_for(srv, algorithm))
    assert f"algorithm={algorithm}" in value
    assert "qop=auth" in value and "nc=00000001" in value
    result = srv.verify(value, "REGISTER", password_for, T0 + 1)
    assert result == AuthResult(ok=True, username="1001", stale=False, reason="ok")


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_round_trip_without_qop(algorithm: str) -> None:
    srv = server()
    challenge = challenge_for(srv, algorithm).replace(', qop="auth"', "")
    value = answer(challenge)
    _, params = parse_auth_header(value)
    assert "qop" not in params and "nc" not in params and "cnonce" not in params
    assert srv.verify(value, "REGISTER", password_for, T0 + 1).ok
    # No nonce count to detect replays with, so the nonce is single-use (and only stale).
    again = srv.verify(value, "REGISTER", password_for, T0 + 2)
    assert not again.ok and again.stale


def test_challenge_without_algorithm_means_md5() -> None:
    srv = server()
    challenge = challenge_for(srv, "MD5").replace("algorithm=MD5, ", "")
    value = answer(challenge)
    assert "algorithm" not in parse_auth_header(value)[1]
    assert srv.verify(value, "REGISTER", password_for, T0).ok
    # ...and a server that does not accept MD5 refuses it.
    sha_only = DigestServer(REALM, b"test-secret", algorithms=("SHA-256",))
    result = sha_only.verify(value, "REGISTER", password_for, T0)
    assert not result.ok and result.reason == "unsupported algorithm"


@pytest.mark.parametrize("algorithm", ["SHA-256-sess", "MD5-sess"])
def test_sess_algorithms(algorithm: str) -> None:
    srv = server(algorithms=(algorithm,))
    value = answer(srv.challenges(T0)[0])
    assert srv.verify(value, "INVITE", password_for, T0).ok is False  # method is covered
    assert srv.verify(value, "REGISTER", password_for, T0).ok
    # A server not configured for -sess rejects it clearly.
    plain = server()
    result = plain.verify(value, "REGISTER", password_for, T0)
    assert not result.ok and result.reason == "unsupported algorithm"


def test_sess_differs_from_plain() -> None:
    def response(algorithm: str) -> str:
        return compute_response(
            algorithm=algorithm,
            username="u",
            realm="r",
            password="p",
            method="M",
            uri="sip:x",
            nonce="n",
            qop="auth",
            nc="00000001",
            cnonce="c",
        )

    assert response("MD5") != response("MD5-sess")
    assert response("SHA-256") != response("SHA-256-sess")


def test_auth_int_covers_body() -> None:
    srv = server()
    challenge = challenge_for(srv, "SHA-256").replace('qop="auth"', 'qop="auth-int"')
    value = answer(challenge, body=b"v=0\r\n")
    assert "qop=auth-int" in value
    assert srv.verify(value, "REGISTER", password_for, T0, body=b"v=0\r\n").ok
    bad = srv.verify(value, "REGISTER", password_for, T0, body=b"v=1\r\n")
    assert not bad.ok and bad.reason == "bad credentials"


def test_uri_is_not_compared_with_request_uri_but_is_covered() -> None:
    srv = server()
    value = answer(challenge_for(srv, "SHA-256"), uri="sip:127.0.0.1:5060")
    assert srv.verify(value, "REGISTER", password_for, T0).ok
    tampered = replace_param(value, "uri", "sip:evil.example.com")
    result = srv.verify(tampered, "REGISTER", password_for, T0)
    assert not result.ok and result.reason == "bad credentials"


def test_method_is_covered() -> None:
    srv = server()
    value = answer(challenge_for(srv, "MD5"), method="INVITE")
    result = srv.verify(value, "BYE", password_for, T0)
    assert not result.ok and result.reason == "bad credentials"


def test_uppercase_hex_response_accepted() -> None:
    srv = server()
    value = answer(challenge_for(srv, "SHA-256"))
    response = parse_auth_header(value)[1]["response"]
    assert srv.verify(value.replace(response, response.upper()), "REGISTER", password_for, T0).ok


@given(
    user=st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
    password=st.text(max_size=20),
    uri=st.text(min_size=1, max_size=30),
)
@settings(max_examples=60, deadline=None)
def test_round_trip_arbitrary_credentials(user: str, password: str, uri: str) -> None:
    srv = server()
    value = answer(challenge_for(srv, "SHA-256"), user=user, password=password, uri=uri)
    result = srv.verify(value, "REGISTER", {user: password}.get, T0)
    assert result.ok, result
    assert result.username == user


# -- failures --------------------------------------------------------------------------------


def test_stale_on_expiry_with_good_credentials() -> None:
    srv = server(nonce_lifetime=300.0)
    value = answer(challenge_for(srv, "SHA-256"))
    assert srv.verify(value, "REGISTER", password_for, T0 + 299.0).ok
    value2 = answer(challenge_for(srv, "SHA-256"))
    result = srv.verify(value2, "REGISTER", password_for, T0 + 301.0)
    assert result == AuthResult(ok=False, username="1001", stale=True, reason="stale nonce")


def test_expired_nonce_with_bad_password_is_not_stale() -> None:
    srv = server(nonce_lifetime=300.0)
    value = answer(challenge_for(srv, "SHA-256"), password="wrong")
    result = srv.verify(value, "REGISTER", password_for, T0 + 301.0)
    assert not result.ok and not result.stale and result.reason == "bad credentials"


def test_nonce_from_the_future_is_stale() -> None:
    srv = server()
    value = answer(challenge_for(srv, "SHA-256", now=T0 + 100))
    result = srv.verify(value, "REGISTER", password_for, T0)
    assert not result.ok and result.stale


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
def test_stored_ha1_verifies_like_the_password(algorithm: str) -> None:
    stored = {u: StoredHA1({a: hash_a1(a, u, REALM, p) for a in ("MD5", "SHA-256")})
              for u, p in USERS.items()}
    assert stored["1001"].get("MD5") == hashlib.md5(b"1001:softswitch:secret1001").hexdigest()
    srv = server(algorithms=(algorithm,))
    good = answer(challenge_for(srv, algorithm))
    assert srv.verify(good, "REGISTER", stored.get, T0).ok
    bad = answer(challenge_for(srv, algorithm), password="secret1002")
    assert srv.verify(bad, "REGISTER", stored.get, T0).reason == "bad credentials"


def test_stored_ha1_without_the_algorithm_fails() -> None:
    srv = server()
    only_md5 = StoredHA1({"MD5": hash_a1("MD5", "1001", REALM, "secret1001")})
    value = answer(challenge_for(srv, "SHA-256"))
    result = srv.verify(value, "REGISTER", lambda _: only_md5, T0)
    assert not result.ok and result.reason == "no stored HA1 for the algorithm"


def test_bad_password() -> None:
    srv = server()
    value = answer(challenge_for(srv, "MD5"), password="nope")
    result = srv.verify(value, "REGISTER", password_for, T0)
    assert result == AuthResult(ok=False, username="1001", stale=False, reason="bad credentials")


def test_unknown_user() -> None:
    srv = server()
    value = answer(challenge_for(srv, "SHA-256"), user="9999")
    result = srv.verify(value, "REGISTER", password_for, T0)
    assert result == AuthResult(ok=False, username="9999", stale=False, reason="unknown user")


def test_forged_nonce() -> None:
    srv = server()
    challenge = challenge_for(srv, "SHA-256")
    nonce = parse_auth_header(challenge)[1]["nonce"]
    # Flip one character of the MAC part, and re-answer so the response itself is "correct".
    flipped = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
    for forged in (flipped, "x" * len(nonce), "abc", nonce + "A", nonce[:-1] + "!"):
        value = answer(challenge.replace(nonce, forged))
        result = srv.verify(value, "REGISTER", password_for, T0)
        assert not result.ok and not result.stale and result.reason == "invalid nonce", forged


def test_nonce_from_other_secret_or_realm_rejected() -> None:
    other_secret = DigestServer(REALM, b"other-secret")
    value = answer(challenge_for(other_secret, "SHA-256"))
    assert server().verify(value, "REGISTER", password_for, T0).reason == "invalid nonce"
    # Same secret, other realm: the nonce is bound to the realm too.
    other_realm = DigestServer("elsewhere", b"test-secret")
    challenge = challenge_for(other_realm, "SHA-256").replace("elsewhere", REALM)
    challenge = challenge.replace(parse_auth_header(challenge)[1]["opaque"], server().opaque)
    result = server().verify(answer(challenge), "REGISTER", password_for, T0)
    assert result.reason == "invalid nonce"


def test_replayed_nc_rejected_and_higher_nc_accepted() -> None:
    srv = server()
    challenge = challenge_for(srv, "SHA-256")
    first = answer(challenge, nc=1)
    assert srv.verify(first, "REGISTER", password_for, T0).ok
    replay = srv.verify(first, "REGISTER", password_for, T0 + 1)
    assert replay == AuthResult(ok=False, username="1001", stale=False, reason="nonce count replay")
    assert srv.verify(answer(challenge, nc=3), "REGISTER", password_for, T0 + 2).ok
    assert not srv.verify(answer(challenge, nc=2), "REGISTER", password_for, T0 + 3).ok
    assert srv.verify(answer(challenge, nc=4), "REGISTER", password_for, T0 + 4).ok


def test_failed_attempt_does_not_advance_nc() -> None:
    srv = server()
    challenge = challenge_for(srv, "SHA-256")
    bogus = answer(challenge, nc=0xFFFFFFFF, password="wrong")
    assert not srv.verify(bogus, "REGISTER", password_for, T0).ok
    assert srv.verify(answer(challenge, nc=1), "REGISTER", password_for, T0).ok


def test_nc_zero_and_malformed_nc_rejected() -> None:
    srv = server()
    challenge = challenge_for(srv, "SHA-256")
    value = answer(challenge)
    for bad_nc in ("00000000", "1_0", "zz", "123456789", "\u0661"):
        result = srv.verify(replace_param(value, "nc", bad_nc), "REGISTER", password_for, T0)
        assert not result.ok and result.reason == "malformed nc", bad_nc


def test_wrong_realm() -> None:
    srv = server()
    challenge = challenge_for(srv, "SHA-256").replace(f'realm="{REALM}"', 'realm="other"')
    result = srv.verify(answer(challenge), "REGISTER", password_for, T0)
    assert result == AuthResult(ok=False, username="1001", stale=False, reason="wrong realm")


def test_opaque_mismatch_rejected_and_absent_opaque_tolerated() -> None:
    srv = server()
    challenge = challenge_for(srv, "SHA-256")
    opaque = parse_auth_header(challenge)[1]["opaque"]
    bad = answer(challenge.replace(opaque, "tampered"))
    assert srv.verify(bad, "REGISTER", password_for, T0).reason == "opaque mismatch"
    without = answer(challenge.replace(f', opaque="{opaque}"', ""))
    assert "opaque" not in without
    assert srv.verify(without, "REGISTER", password_for, T0).ok


def test_missing_fields() -> None:
    srv = server()
    value = answer(challenge_for(srv, "SHA-256"))
    _, params = parse_auth_header(value)
    for name in ("username", "realm", "nonce", "uri", "response", "nc", "cnonce"):
        reduced = {k: v for k, v in params.items() if k != name}
        header = "Digest " + ", ".join(f'{k}="{v}"' for k, v in reduced.items())
        result = srv.verify(header, "REGISTER", password_for, T0)
        assert not result.ok and "missing parameter" in result.reason, name


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Digest",
        "Basic dXNlcjpwYXNz",
        'Digest username="1001',
        "Digest username",
        "Digest username=",
        'Digest username="a" realm="b"',
        'Digest username="a", username="b"',
        "Digest =x",
        'Digest username="a\\',
        "Digest, , ,",
        "Digest\x00",
        'Digest username="1001", realm="softswitch", nonce="x", uri="u", response="\u00e9"',
        'Digest username="\udcff", realm="softswitch", nonce="x", uri="u", response="r"',
    ],
)
def test_malformed_headers_fail_cleanly(header: str) -> None:
    result = server().verify(header, "REGISTER", password_for, T0)
    assert result.ok is False and result.stale is False and result.reason


def test_nc_table_is_bounded_and_eviction_fails_safe() -> None:
    srv = server(max_tracked_nonces=10)
    first_challenge = challenge_for(srv, "SHA-256")
    assert srv.verify(answer(first_challenge), "REGISTER", password_for, T0).ok
    for i in range(30):
        value = answer(challenge_for(srv, "SHA-256", now=T0 + i))
        assert srv.verify(value, "REGISTER", password_for, T0 + i).ok
        assert srv.tracked_nonces <= 10
    # The first nonce was evicted while fresh: replaying it must not be accepted.
    replay = srv.verify(answer(first_challenge), "REGISTER", password_for, T0 + 31)
    assert not replay.ok and replay.stale
    # Later, fresh nonces still work.
    value = answer(challenge_for(srv, "SHA-256", now=T0 + 40))
    assert srv.verify(value, "REGISTER", password_for, T0 + 40).ok


def test_expired_nonces_are_pruned() -> None:
    srv = server(nonce_lifetime=10.0)
    for i in range(20):
        value = answer(challenge_for(srv, "SHA-256", now=T0 + i * 20))
        assert srv.verify(value, "REGISTER", password_for, T0 + i * 20).ok
    assert srv.tracked_nonces <= 2


# -- parse_auth_header ----------------------------------------------------------------------


def test_parse_quoted_escapes_and_case() -> None:
    scheme, params = parse_auth_header(
        'digest  USERNAME="a\\"b\\\\c" ,Realm = "x, y",nonce=abc==,'
        "  algorithm=SHA-256 , qop=auth,nc=00000001"
    )
    assert scheme == "Digest"
    assert params == {
        "username": 'a"b\\c',
        "realm": "x, y",
        "nonce": "abc==",
        "algorithm": "SHA-256",
        "qop": "auth",
        "nc": "00000001",
    }


def test_username_with_quotes_round_trips() -> None:
    srv = server()
    user = 'we"ird\\user'
    value = answer(challenge_for(srv, "MD5"), user=user, password="pw")
    assert parse_auth_header(value)[1]["username"] == user
    assert srv.verify(value, "REGISTER", {user: "pw"}.get, T0).ok


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        'Digest a="b',
        "Digest a",
        "Digest a=",
        "Digest a=b c=d",
        'Digest a=b"c"',
        "(x",
        "Digest a=1, A=2",
    ],
)
def test_parse_rejects_with_value_error(value: str) -> None:
    with pytest.raises(ValueError):
        parse_auth_header(value)


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_parse_only_raises_value_error(value: str) -> None:
    try:
        parse_auth_header(value)
    except ValueError:
        pass


# -- hostile input to verify() ---------------------------------------------------------------


def _valid_header() -> tuple[DigestServer, str]:
    srv = server()
    return srv, answer(challenge_for(srv, "SHA-256"))


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_verify_never_raises_on_random_text(value: str) -> None:
    srv = server()
    for candidate in (value, "Digest " + value):
        result = srv.verify(candidate, "REGISTER", password_for, T0)
        assert isinstance(result, AuthResult)
        assert not result.ok


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "username",
                    "realm",
                    "nonce",
                    "uri",
                    "response",
                    "qop",
                    "nc",
                    "cnonce",
                    "algorithm",
                    "opaque",
                    "userhash",
                    "x",
                ]
            ),
            st.text(max_size=40),
            st.booleans(),
        ),
        max_size=12,
    )
)
@settings(max_examples=300, deadline=None)
def test_verify_never_raises_on_random_params(items: list[tuple[str, str, bool]]) -> None:
    srv = server()
    parts = []
    for name, value, quoted in items:
        if quoted:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{name}="{escaped}"')
        else:
            parts.append(f"{name}={value}")
    result = srv.verify("Digest " + ", ".join(parts), "REGISTER", password_for, T0)
    assert isinstance(result, AuthResult)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_verify_never_raises_on_mutated_valid_header(data: st.DataObject) -> None:
    srv, value = _valid_header()
    pos = data.draw(st.integers(min_value=0, max_value=len(value)))
    cut = data.draw(st.integers(min_value=0, max_value=5))
    insert = data.draw(st.text(max_size=5))
    mutated = value[:pos] + insert + value[pos + cut :]
    result = srv.verify(mutated, "REGISTER", password_for, T0)
    assert isinstance(result, AuthResult)
    if mutated != value and not result.ok:
        assert result.reason


# -- client and challenge selection ----------------------------------------------------------


def test_choose_challenge_prefers_sha256() -> None:
    md5 = 'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"'
    sha = 'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"'
    junk = 'Digest realm="r", nonce="n3", algorithm=SHA-512-256, qop="auth"'
    basic = 'Basic realm="r"'
    assert choose_challenge([md5, sha]) == sha
    assert choose_challenge([junk, basic, md5, sha]) == sha
    assert choose_challenge([junk, md5, 'Digest realm="r']) == md5
    assert choose_challenge(['Digest realm="r", nonce="n"']) == 'Digest realm="r", nonce="n"'
    assert choose_challenge([junk, basic]) is None
    assert choose_challenge([]) is None
    assert choose_challenge(['Digest realm="r", nonce="n", qop="auth-conf"']) is None


def test_choose_challenge_answers_our_server() -> None:
    srv = server()
    chosen = choose_challenge(list(reversed(srv.challenges(T0))))
    assert chosen is not None and "algorithm=SHA-256" in chosen
    assert srv.verify(answer(chosen), "REGISTER", password_for, T0).ok


def test_client_rejects_unsupported_challenges() -> None:
    for bad in (
        'Basic realm="r"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest nonce="n"',
        'Digest realm="r", nonce="n", qop="auth-conf"',
        'Digest realm="r',
    ):
        with pytest.raises(ValueError):
            answer(bad)
    with pytest.raises(ValueError):
        answer('Digest realm="r", nonce="n"', nc=0)


def test_client_prefers_auth_over_auth_int() -> None:
    value = answer('Digest realm="r", nonce="n", qop="auth-int,auth"')
    assert parse_auth_header(value)[1]["qop"] == "auth"
