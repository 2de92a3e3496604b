"""Files the library writes and reads: atomic writes (``atomic``), reading strangers' checkpoints safely
(``safe_load``), the one text and JSON reader (``text``), a job's output folder and its lock
(``output_folder``), and progress lines (``progress``). Torch-free but for ``safe_load``.
"""
