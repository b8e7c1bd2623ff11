"""The runtime boundary: `aarm_runtime` stands alone, and refuses what it cannot verify.

In a fresh interpreter, importing `aarm_runtime`, loading a signed artifact,
refusing bad ones and deciding must never import `aarmc`, lark or z3 (a
gateway embeds the runtime without the compiler, and loading stays cheap).
The refusals themselves are exercised byte by byte in `test_artifact.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aarm_runtime import keys
from aarmc.compile.artifact import compile_policy, write_artifact
from aarmc.semantics.load import load_policy

SPEC = Path(__file__).parent.parent / "specs" / "mail-assistant"

SCRIPT = r"""
import json, sys
import aarm_runtime
from aarm_runtime import artifact, cose, dcbor, keys
from aarm_runtime.engine import Engine

path, pub, other = sys.argv[1], sys.argv[2], sys.argv[3]
trusted = [keys.load_verify_key(pub)]
data = open(path, "rb").read()
refused = {}

def refuse(name, blob, trust):
    try:
        Engine.load(blob, trusted_keys=trust)
    except artifact.ArtifactError as err:
        refused[name] = f"{type(err).__name__}: {err}"
    else:
        refused[name] = None

tampered = bytearray(data)
tampered[len(data) // 2] ^= 0x10
refuse("tampered", bytes(tampered), trusted)
refuse("wrong-key", data, [keys.load_verify_key(other)])
refuse("truncated", data[: len(data) - 7], trusted)
payload = cose.verify1(data, trusted, typ=cose.TYP_POLICY).payload
doc = dcbor.decode_strict(payload)
refuse("receipt-typed", cose.sign1(payload, keys.SigningKey.from_seed(bytes(range(32))), typ=cose.TYP_RECEIPT,
                                   cwt_claims={2: doc[1], 6: 1}), trusted)
doc[0] = 2
refuse("format-2", artifact.sign_payload(dcbor.encode(doc), keys.SigningKey.from_seed(bytes(range(32))),
                                         policy=doc[1], issued_at=1), trusted)

engine = Engine.load(path, trusted_keys=trusted)
decision = engine.decide({"tool": "db.query", "params": {"sql": "DROP TABLE users"}})
banned = sorted(m for m in sys.modules if m.split(".")[0] in ("aarmc", "lark", "z3"))
print(json.dumps({"banned": banned, "decision": decision.to_json(), "refused": refused,
                  "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def artifact_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("boundary")
    key = keys.SigningKey.from_seed(bytes(range(32)))
    other = keys.SigningKey.from_seed(bytes(32))
    policy = load_policy([SPEC]).policy
    path = tmp / "policy.aarmc"
    write_artifact(path, compile_policy(policy, key, validate=False).data)
    (tmp / "author.pub").write_text(key.verify_key.hex() + "\n")
    (tmp / "other.pub").write_text(other.verify_key.hex() + "\n")
    return path, tmp / "author.pub", tmp / "other.pub"


def _run(files) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # -I: isolated mode, so nothing from the current directory or user site sneaks in.
    out = subprocess.run([sys.executable, "-I", "-c", SCRIPT, *map(str, files)], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_importing_the_runtime_and_loading_an_artifact_imports_no_compiler(artifact_files):
    got = _run(artifact_files)
    assert got["banned"] == []
    assert {"cbor2", "nacl"} <= {m.split(".")[0] for m in got["modules"]}
    assert got["decision"]["decision"] == "deny" and got["decision"]["reason"] == "forbidden"
    assert got["decision"]["rules"] == ["no-drop"]


def test_bad_artifacts_are_refused_in_a_fresh_interpreter(artifact_files):
    refused = _run(artifact_files)["refused"]
    assert refused["tampered"] and refused["tampered"].startswith("ArtifactSignatureError")
    assert "is not among the 1 trusted key" in refused["wrong-key"]
    assert refused["truncated"].startswith("ArtifactSignatureError") and "not strictly encoded" in refused["truncated"]
    assert "typ is `application/aarm-receipt+cose`" in refused["receipt-typed"]
    assert refused["format-2"].startswith("UnsupportedFormatVersion")


def test_the_runtime_package_declares_only_its_own_dependencies():
    pyproject = (Path(__file__).parent.parent / "runtime" / "pyproject.toml").read_text()
    deps = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    names = {line.strip().strip('",').split(">")[0].split("<")[0].split("=")[0]
             for line in deps.splitlines() if line.strip().startswith('"')}
    assert names == {"cbor2", "pynacl"}


def test_no_runtime_module_evaluates_code():
    """Beyond the artifact path: no module of aarm_runtime calls eval, exec or compile."""
    import ast
    import aarm_runtime

    runtime = Path(aarm_runtime.__file__).parent
    modules = sorted(runtime.rglob("*.py"))
    assert len(modules) > 10
    for path in modules:
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile"), (path.name, node.lineno)
