"""The one jinja2 environment: config-file settings, the caller's filters."""

from __future__ import annotations

import jinja2
import pytest

from gridctl.templating import build_environment


def test_the_environment_renders_config_text_as_written_and_refuses_a_missing_variable(tmp_path) -> None:
    (tmp_path / "a.conf.j2").write_text("{% if on %}\n  x = {{ v | up }} <&>\n{% endif %}\nend\n")
    env = build_environment(tmp_path, {"up": lambda v: str(v).upper()})
    assert env.get_template("a.conf.j2").render(on=True, v="a") == "  x = A <&>\nend\n"
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("a.conf.j2").render(on=True)
    assert build_environment().from_string("{{ 1 }}\n").render() == "1\n"
