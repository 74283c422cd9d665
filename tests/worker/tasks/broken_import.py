"""A package that fails to import."""

raise ImportError("broken_import cannot be imported on purpose")
