"""The ScienceQA benchmark side, which knows nothing of adapters: records, prompts, metrics, reports and the
generated sets.

The folder scienceqa/ is the package ``mm_adapter.scienceqa`` (mm_adapter/scienceqa links here) and is imported
under that name only: one file, one import name.
"""

# `import scienceqa` from the repository root would be a second name for the same files: refused.
if __name__ != "mm_adapter.scienceqa":
    raise ImportError(f"{__name__}: this folder is the package mm_adapter.scienceqa; import it under that name")
