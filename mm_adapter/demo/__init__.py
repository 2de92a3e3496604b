"""The demo: one image + question answered with option probabilities (``predictor``; the question and options
are checked as text by ``question``, torch-free), and the local web page that serves it (``server``; the page is
``page.html``, self-contained, no outside requests)."""
