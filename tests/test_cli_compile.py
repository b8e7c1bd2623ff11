"""`aarmc keygen`, `aarmc compile`, `aarmc inspect` and `aarmc eval` on an artifact, end to end."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from aarmc.cli import cli

ROOT = Path(__file__).resolve().parents[1]
MAIL = ROOT / "specs" / "mail-assistant"
EXAMPLES = ROOT / "examples"


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("compiled")
    key = d / "k.key"
    assert run("keygen", key).exit_code == 0
    out = d / "mail.aarmc"
    result = run("compile", MAIL, "-o", out, "--key", key)
    assert result.exit_code == 0, result.output
    assert "proved to decide exactly as the source" in result.output
    return d, key, Path(str(key) + ".pub"), out


def test_keygen_writes_a_private_key_readable_only_by_its_owner(tmp_path):
    key = tmp_path / "a.key"
    result = run("keygen", key)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    again = run("keygen", key)
    assert again.exit_code == 2 and key.read_bytes()  # never overwrites


def test_compile_refuses_a_key_file_others_can_read(tmp_path):
    key = tmp_path / "a.key"
    run("keygen", key)
    os.chmod(key, 0o644)
    result = run("compile", MAIL, "-o", tmp_path / "p.aarmc", "--key", key)
    assert result.exit_code == 2 and "chmod 600" in result.output
    assert not (tmp_path / "p.aarmc").exists()


def test_compile_needs_a_key_or_the_unsafe_flag(tmp_path):
    result = run("compile", MAIL, "-o", tmp_path / "p.aarmc")
    assert result.exit_code == 2 and "no signing key" in result.output
    unsigned = run("compile", MAIL, "-o", tmp_path / "p.aarmc", "--unsafe-unsigned")
    assert unsigned.exit_code == 0 and "UNSIGNED" in unsigned.output


def test_compile_refuses_a_policy_with_errors(tmp_path):
    bad = tmp_path / "bad.aarm"
    bad.write_text('policy "p" version "1"\ndefault deny\nallow "r" no.such_tool\n')
    result = run("compile", bad, "-o", tmp_path / "p.aarmc", "--unsafe-unsigned")
    assert result.exit_code == 1 and "AARM-E0212" in result.output
    assert not (tmp_path / "p.aarmc").exists()


@pytest.mark.parametrize("action", ["injected-send.action.json", "legit-send.action.json"])
def test_eval_on_the_artifact_equals_the_reference(compiled, action):
    _, _, pub, out = compiled
    args = ["--action", EXAMPLES / action, "--session", EXAMPLES / "injected-send.session.json",
            "--format", "json"]
    from_artifact = run("eval", out, "--key", pub, *args)
    from_source = run("eval", MAIL, *args)
    assert from_artifact.exit_code == 0 and from_source.exit_code == 0, from_artifact.output
    assert json.loads(from_artifact.output) == json.loads(from_source.output)


def test_eval_refuses_a_tampered_artifact_or_a_wrong_key(compiled, tmp_path):
    _, _, pub, out = compiled
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "t.aarmc"
    tampered.write_bytes(bytes(data))
    action = ["--action", EXAMPLES / "legit-send.action.json"]
    result = run("eval", tampered, "--key", pub, *action)
    assert result.exit_code == 2 and "was not loaded" in result.output
    other = tmp_path / "other.key"
    run("keygen", other)
    wrong = run("eval", out, "--key", str(other) + ".pub", *action)
    assert wrong.exit_code == 2 and "was not loaded" in wrong.output


def test_inspect_shows_the_proof_and_the_signature(compiled):
    _, _, pub, out = compiled
    result = run("inspect", out, "--key", pub, "--format", "json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["policy"] == "mail-assistant"
    assert info["translation_validation"]["proved_by_solver"] == len(info["tools"])
    assert info["signature"].startswith("verified")
