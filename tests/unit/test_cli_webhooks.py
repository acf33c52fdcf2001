"""`serve` and `check-config` refuse webhooks without a secret to sign their requests with,
before anything is started."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from switchboard.cli import main


def test_serve_refuses_a_webhook_flag_without_a_secret() -> None:
    result = CliRunner().invoke(main, ["serve", "--event-webhook", "http://127.0.0.1:9/h"])
    assert result.exit_code == 2
    assert "events.webhook_secret" in result.output


def test_serve_refuses_a_bad_webhook_url() -> None:
    result = CliRunner().invoke(main, ["serve", "--event-webhook", "http://u:p@127.0.0.1/h"])
    assert result.exit_code == 2
    assert "--event-webhook" in result.output and "credentials" in result.output


def test_check_config_wants_the_secret_of_its_webhooks(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text('[[events.subscribe]]\nevent = "E_CALL_HOLD"\n'
                    'socket = "https://hooks.example/sb"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert "events.webhook_secret" in result.output
    path.write_text(path.read_text() + '[events]\nwebhook_secret = "k"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
