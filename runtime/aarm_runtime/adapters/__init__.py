"""Adapters from agent frameworks' tool interfaces to the `Guard` (AARM's SDK architecture).

Each adapter imports its framework only inside its own module, behind an
optional extra, so that importing `aarm_runtime` never imports a framework:

    langchain.py   LangChain tools (`langchain-core`): `guard_tool`, `guard_tools`, `guarded_tool`
"""
