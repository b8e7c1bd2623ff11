"""`aarmc verify` and `aarmc timeline` end to end on a real log."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from aarmc.cli import cli
from test_receipt_log import KEY_A, KEY_B, write_sample_log


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def keys(tmp_path: Path) -> list[str]:
    out = []
    for name, key in (("a.pub", KEY_A), ("b.pub", KEY_B)):
        path = tmp_path / name
        path.write_text(key.verify_key.hex() + "\n")
        out += ["--key", str(path)]
    return out


def test_verify_a_closed_log_is_complete_and_a_flipped_byte_is_not(tmp_path):
    log = tmp_path / "r.log"
    write_sample_log(log)
    ok = run("verify", log, *keys(tmp_path))
    assert ok.exit_code == 0 and "COMPLETE" in ok.output, ok.output
    data = bytearray(log.read_bytes())
    data[len(data) // 3] ^= 0xFF
    log.write_bytes(bytes(data))
    bad = run("verify", log, *keys(tmp_path), "--format", "json")
    assert bad.exit_code == 1
    assert json.loads(bad.output)["status"] != "COMPLETE"


def test_verify_without_the_rotated_in_key_still_verifies_and_without_any_key_refuses(tmp_path):
    log = tmp_path / "r.log"
    write_sample_log(log)
    only_a = run("verify", log, *keys(tmp_path)[:2])
    assert only_a.exit_code == 0, only_a.output  # the rotation record introduces key B
    assert run("verify", log).exit_code == 2  # --key is required


def test_timeline_reconstructs_sessions(tmp_path):
    log = tmp_path / "r.log"
    write_sample_log(log)
    human = run("timeline", log, *keys(tmp_path))
    assert human.exit_code == 0, human.output
    assert "sess-alice" in human.output and "sess-bob" in human.output
    # The close record counts the checkpoints before it; `verify` also counts the sealing one after it.
    closed = [line for line in human.output.splitlines() if "log closed" in line]
    assert len(closed) == 1 and "checkpoint(s) before this record, then the sealing one" in closed[0], closed
    only = run("timeline", log, *keys(tmp_path), "--session", "sess-bob", "--format", "json")
    assert only.exit_code == 0
    assert "sess-alice" not in only.output and "sess-bob" in only.output
