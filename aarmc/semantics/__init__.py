"""The semantics stage: resolve names, check types, lower the AST to the IR."""
