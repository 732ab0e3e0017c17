"""``wait_for_endpoint`` gives up at once on an API key it could not send."""

from __future__ import annotations

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
