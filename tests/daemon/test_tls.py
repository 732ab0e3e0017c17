"""The daemon's front door: https (and mutual TLS) with a test CA, the openai client as users
run it, tokens from a file of hashes rotated by SIGHUP, and the refusals off loopback."""

from __future__ import annotations

import hashlib
import shutil
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from gridctl.daemon.config import DaemonConfig
from gridctl.daemon.loading import load_listener_tls
from gridctl.daemon.server import Daemon
from gridctl.daemon.tokens import Tokens, hash_token
from gridctl.net.tls import RotatingContext
from tests.conftest import cli_env, run_cli
from tests.daemon.conftest import M8, start_daemon, write_inventory
from tests.daemon.upstream import Upstream
from tests.routing.tls import Ca, make_ca, server_context


@dataclass(frozen=True)
class Pki:
    ca: Ca
    other: Ca  # a CA nobody configured
    cert: Path  # the daemon's certificate (localhost, 127.0.0.1), signed by ca
    key: Path
    client_cert: Path  # a client's, signed by ca
    client_key: Path

    def trusting(self, ca: Ca | None = None, client: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str((ca or self.ca).cert))
        if client:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = make_ca(tmp_path, "daemon test CA"), make_ca(tmp_path, "another CA")
    server_context(ca, tmp_path, "localhost")  # writes localhost.crt and localhost.key
    server_context(ca, tmp_path, "client")  # a certificate without usage limits: a client's too
    return Pki(
        ca,
        other,
        tmp_path / "localhost.crt",
        tmp_path / "localhost.key",
        tmp_path / "client.crt",
        tmp_path / "client.key",
    )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Upstream, Path]]:
    up = Upstream(gap_s=0.0)
    sites = {
        "one": {"gpu": "H100", "gpus": 8, "capacity": 64, "cost": 1.0, "rtt_ms": 1.0, "endpoint": up.url}
    }
    try:
        yield up, write_inventory(tmp_path / "inventory", sites)
    finally:
        up.close()


def _client(url: str, verify: ssl.SSLContext, token: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=url + "/v1",
        api_key=token,
        max_retries=0,
        http_client=httpx.Client(verify=verify, timeout=10),
    )


def _stream_text(client: openai.OpenAI) -> str:
    stream = client.chat.completions.create(
        model=M8, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def test_the_openai_client_over_https_trusting_the_test_ca_and_refused_without(
    pki: Pki, site: tuple[Upstream, Path]
) -> None:
    up, inventory = site
    tls = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    d = start_daemon(inventory, "--region", "metro", *tls, tls=pki.trusting())
    try:
        assert d.url.startswith("https://")
        assert _stream_text(_client(d.url, pki.trusting())) == "héllo"
        assert len(up.seen) == 1
        with pytest.raises(openai.APIConnectionError) as refused:
            _client(d.url, pki.trusting(pki.other)).models.list()
        assert "CERTIFICATE_VERIFY_FAILED" in repr(refused.value.__cause__)
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            httpx.get(d.url.replace("https:", "http:") + "/healthz", timeout=5)
        assert len(up.seen) == 1
    finally:
        rc, err = d.stop()
    assert rc == 0 and f"listening on {d.url}" in err


def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki, site: tuple[Upstream, Path]) -> None:
    up, inventory = site
    tls = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-client-ca", str(pki.ca.cert))
    d = start_daemon(inventory, "--region", "metro", *tls, tls=pki.trusting(client=True))
    try:
        with pytest.raises(openai.APIConnectionError):
            _stream_text(_client(d.url, pki.trusting()))
        assert not up.seen  # refused in the handshake: nothing reached a site
        assert _stream_text(_client(d.url, pki.trusting(client=True))) == "héllo"
        assert len(up.seen) == 1
    finally:
        rc, _ = d.stop()
    assert rc == 0


def test_sighup_rotates_tokens_and_the_certificate_without_a_restart(
    pki: Pki, site: tuple[Upstream, Path], tmp_path: Path
) -> None:
    """Off loopback, with TLS and a tokens file: after SIGHUP the new token is in, the old one
    out, GRIDCTL_DAEMON_TOKEN still in, new connections get the new certificate; same pid."""
    _, inventory = site
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# ops team, 2026-05\n{hash_token('old-token')}\n\n")
    args = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tokens", str(tokens))
    env = cli_env(GRIDCTL_DAEMON_TOKEN="env-token")
    d = start_daemon(inventory, "--region", "metro", *args, host="0.0.0.0", env=env, tls=pki.trusting())

    def status(token: str, verify: ssl.SSLContext) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.get(d.url + "/grid/status", headers=headers, verify=verify, timeout=5).status_code

    try:
        trust = pki.trusting()
        assert [status(t, trust) for t in ("old-token", "new-token", "env-token")] == [200, 401, 200]
        with pytest.raises(openai.AuthenticationError):
            _client(d.url, trust, "new-token").models.list()
        # the new token's hash goes in, the old one's out; a certificate from another CA
        tokens.write_text(f"{hash_token('new-token')}  # rotated\n")
        newer = tmp_path / "newer"
        newer.mkdir()
        server_context(pki.other, newer, "localhost")
        shutil.copy(newer / "localhost.key", pki.key)
        shutil.copy(newer / "localhost.crt", pki.cert)
        d.proc.send_signal(signal.SIGHUP)
        other = pki.trusting(pki.other)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the tokens are reread before the certificate
            try:
                status("env-token", other)
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert [status(t, other) for t in ("old-token", "new-token", "env-token")] == [401, 200, 200]
        assert [m.id for m in _client(d.url, other, "new-token").models.list()] == [M8]
        with pytest.raises(httpx.ConnectError):  # the old CA no longer vouches for the daemon
            status("new-token", trust)
        pid = httpx.get(d.url + "/grid/status", headers={"Authorization": "Bearer new-token"}, verify=other)
        assert pid.json()["pid"] == d.proc.pid and d.proc.poll() is None
    finally:
        rc, err = d.stop()
    assert rc == 0, err[-3000:]
    assert "reloaded 1 token hashes" in err and "reloaded the TLS certificate" in err


def test_a_bad_file_at_reload_keeps_what_runs(pki: Pki, site: tuple[Upstream, Path], tmp_path: Path) -> None:
    _, inventory = site
    tokens = tmp_path / "tokens"
    tokens.write_text(hash_token("kept") + "\n")
    config = DaemonConfig(inventory, tls_cert=pki.cert, tls_key=pki.key, tokens_file=tokens)
    logged: list[str] = []
    daemon = Daemon(config, {}, logged.append)
    first = load_listener_tls(config)
    assert first is not None
    daemon.tls, daemon.tokens = RotatingContext(first), Tokens((bytes.fromhex(hash_token("kept")[7:]),))
    tokens.write_text("kept\n")  # a token itself, not its hash
    pki.key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    daemon.reload_front()
    assert daemon.tls.current is first and daemon.tokens.allows("Bearer kept")
    assert "tokens:1: expected sha256:<64 hex digits>, got a line that looks like a token itself" in logged[0]
    assert "keeping the running tokens" in logged[0] and "kept" not in logged[0].split("itself")[1]
    assert "keeping the running certificate" in logged[1] and str(pki.key) in logged[1]


def test_off_loopback_plain_http_needs_insecure_plaintext(site: tuple[Upstream, Path], pki: Pki) -> None:
    _, inventory = site
    env = cli_env(GRIDCTL_DAEMON_TOKEN="t0ken")
    r = run_cli("daemon", "run", "--listen", "0.0.0.0:0", inventory=inventory, env=env)
    assert r.rc == 2 and "refusing to listen on 0.0.0.0 in plain HTTP" in r.err
    assert "--tls-cert FILE --tls-key FILE" in r.err and "--insecure-plaintext" in r.err
    r = run_cli("daemon", "run", "--tls-cert", str(pki.cert), inventory=inventory, env=env)
    assert r.rc == 2 and "--tls-cert needs --tls-key" in r.err
    r = run_cli(
        "daemon", "run", "--tls-cert", str(pki.ca.cert), "--tls-key", str(pki.key), inventory=inventory
    )
    assert r.rc == 2 and "key values mismatch" in r.err and str(pki.ca.cert) in r.err, r.err
    d = start_daemon(inventory, "--region", "metro", "--insecure-plaintext", host="0.0.0.0", env=env)
    try:
        assert httpx.get(d.url + "/grid/status").status_code == 401
        assert httpx.get(d.url + "/grid/status", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    finally:
        rc, _ = d.stop()
    assert rc == 0


def test_token_hash_reads_stdin_and_matches_sha256sum() -> None:
    r = run_cli("daemon", "token-hash", input="s3cret\n")
    assert r.rc == 0 and r.out == hash_token("s3cret") + "\n"
    assert r.out == "sha256:" + hashlib.sha256(b"s3cret").hexdigest() + "\n"
    assert "s3cret" not in r.out + r.err
    bad = run_cli("daemon", "token-hash", input="two words\n")
    assert bad.rc == 2 and "one token on stdin" in bad.err
