"""What the models are fed: Alpaca records (``alpaca``), ScienceQA problems as training examples
(``problems``), per-problem image features (``features``), and where the problems come from (``config``).
"""
