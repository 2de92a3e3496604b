"""Running a trained model: sampling settings (``config``), text generation (``generate``), option scoring
of multiple-choice prompts (``scoring``), and the one loader of a base with any method's adapter
(``loading``).
"""
