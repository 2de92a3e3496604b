"""One config dataclass per job: the single source of the jobs' settings and of the command's flags.

Each job function (``mm_adapter.jobs.<job>``) takes one of these and returns a result object.
The command line generates its flags from the fields (help from the field docstrings), loads a
recipe with ``--config FILE`` (flags override it), and jobs with an output folder write the
resolved config there as ``config.yaml``: passing that file back reproduces the run. Torch-free.

One module per concern: ``training`` (train alpaca, train scienceqa), ``ablation`` (ablate scienceqa, which
trains a run per variant), ``evaluation`` (eval scienceqa), ``answering`` (generate, demo, serve),
``interop`` (convert, push), ``main_job`` (main) and ``plan`` (plan). The configs of the table and of the
data commands live beside the code they drive (``eval.config``, ``data.config``).

Option groups shared by several commands mean the same everywhere: ``--base``/``--dtype``/``--device``/
``--threads`` come from ``model.config.ModelOptions``, ``--data``/``--hf`` from ``data.config.ScienceQASource``.
"""
