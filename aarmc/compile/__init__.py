"""`aarmc compile`: IR → decision table → signed artifact, proved equal to its source.

    table.py      build_table(policy) -> DecisionTable            (the content)
    artifact.py   compile_policy(policy, key, ...) -> CompileResult (encode, prove, sign)
                  write_artifact(path, data)
    validate.py   validate_payload(policy, payload) -> ValidationReport (Z3, per tool)
    inspect.py    describe_artifact(data, trusted_keys) -> dict, render_artifact(info) -> str

The format itself is defined by its consumer, `aarm_runtime.artifact`
(documented in docs/artifact.md).
"""

from aarmc.compile.artifact import CompileResult, compile_policy, write_artifact
from aarmc.compile.validate import TranslationValidationError, ValidationReport

__all__ = ["CompileResult", "TranslationValidationError", "ValidationReport", "compile_policy", "write_artifact"]
