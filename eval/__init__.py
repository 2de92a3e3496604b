"""Where the model side and the benchmark side meet: evaluation runs over a split -> predictions, and the
tables, charts and costs made from them.

The folder eval/ is the package ``mm_adapter.eval`` (mm_adapter/eval links here) and is imported under that name
only: one file, one import name.
"""

# `import eval` from the repository root would be a second name for the same files: refused.
if __name__ != "mm_adapter.eval":
    raise ImportError(f"{__name__}: this folder is the package mm_adapter.eval; import it under that name")
