"""What the models are fed: Alpaca records (``alpaca``; what a file is, from its first bytes: ``peek``), ScienceQA problems as training examples
(``problems``), per-problem image features (``features``), and where the problems come from (``config``).
"""
