"""Training checkpoints that a SIGKILL cannot corrupt and a resume can continue exactly: the checkpoint folder,
written, listed and read back with its files checked (``format``), and resuming a run from one, after checking it
fits the live model, optimizer and scheduler (``resume``).
"""
