"""``wait_for_endpoint`` gives up at once on an API key it could not send."""

from __future__ import annotations

from dataclasses import replace

from gridctl.provision.render import VerifyTarget
from gridctl.provision.verify import check_api_key, wait_for_endpoint


def test_a_key_with_a_control_character_is_reported_without_polling() -> None:
    target = VerifyTarget(
        url="http://127.0.0.1:9", health_path="/health", models=("m",), timeout=600.0, api_key_env="V_KEY"
    )
    slept: list[float] = []
    v = wait_for_endpoint(target, {"V_KEY": "k3y\x00"}, deadline=1e12, clock=lambda: 5.0, sleep=slept.append)
    why = "API key in $V_KEY contains a control character; set it to the key alone"
    assert not v.ok and v.error == f"http://127.0.0.1:9: {why}" and slept == []
    assert check_api_key(target, {"V_KEY": "k3y\x00"}) == why
    assert check_api_key(target, {"V_KEY": "k3y\n"}) is None


def test_verify_reaches_an_endpoint_behind_a_private_ca_and_mutual_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The site's tls_ca and client certificate reach provisioning's verify: up with them,
    not up (the reason named) without the client certificate."""
    import ssl

    from gridctl.core.inventory.model import TlsFiles
    from tests.daemon.upstream import Upstream
    from tests.routing.tls import make_ca, server_context

    ca = make_ca(tmp_path)
    context = server_context(ca, tmp_path, "127.0.0.1")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca.cert))
    server_context(ca, tmp_path, "client")
    site = Upstream(tls=context)
    try:
        files = TlsFiles(str(ca.cert), str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
        target = VerifyTarget(
            url=site.url,
            health_path="/health",
            models=("llama-3.1-8b-instruct",),
            timeout=5.0,
            api_key_env=None,
        )
        up = wait_for_endpoint(replace(target, tls=files), {}, deadline=1e12)
        assert up.ok and up.error is None
        moment = iter(range(100))  # a fake clock: one probe, then the time is up
        down = wait_for_endpoint(
            replace(target, tls=replace(files, cert=None, key=None)),
            {},
            deadline=1e12,
            clock=lambda: float(next(moment)) * 3,
            sleep=lambda s: None,
        )
        assert not down.ok and down.error is not None and site.url in down.error
    finally:
        site.close()
