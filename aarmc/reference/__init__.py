"""The reference interpreter: LANGUAGE.md §5 read literally, the oracle for every fast engine.

>>> from aarmc.reference import decide, SessionFileError
"""

from aarmc.reference.context import SessionFileError
from aarmc.reference.decide import RuleTruth, decide, explain

__all__ = ["RuleTruth", "SessionFileError", "decide", "explain"]
