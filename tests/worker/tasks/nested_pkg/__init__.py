"""A package whose task lives in a submodule that the package does not import."""
