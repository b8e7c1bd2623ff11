"""The syntax stage: grammar → Lark tree → typed AST, and the canonical printer.

Lark trees and tokens never leave this package.
"""
