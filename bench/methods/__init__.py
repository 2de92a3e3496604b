"""LLaMA-Adapter against the other ways to adapt the same model, on equal terms (issue 14 item 1, issue 25 item 4).

Every method trains on the same ScienceQA train split, prompt format, epochs, batch and schedule through the one
`train scienceqa` job, at seed 0, over a learning-rate grid (GRIDS in ``grid``, or `--grid`), chosen on val: the best
checkpoint of the best lr. The chosen run is evaluated on test once; `zero-shot` is the base itself, evaluated on
test with no training. With `--seeds 0 1 2` the chosen lr is then trained again with each further seed (seed 0 is
the search run itself) and each seed's run is evaluated on test once. Resumable: a run whose final adapter exists
is not trained again, a finished test evaluation is not redone. Two workers share the work on two cores: by
method (`--only`), by search lr (`--lr`: this value of the grid only; whoever finishes the search last tests it)
or by seed (`--seed N`: only seed N's run and test; `--seed 0`: only the search). `--records DIR` goes on from an
earlier machine's records (``records``: its runs' logs and tests' predictions, without weights): what they hold is
not trained or evaluated again.

    python -m bench.methods --data ../shared/data/scienceqa --out runs/methods --threads 1 --only llama-adapter lora

Prints one JSON line per run (method, lr, seed, best val accuracy, train seconds) and per test evaluation, then the
table of every method's seed-0 test so far (OUT/table.md, .json, .png, and costs.png: Avg against trainable
parameters), the same as the command below; the val of each lr tried, with whether the choice is interior to its
grid (OUT/search.md); and the seeds summary (OUT/seeds.md, .json: `bench/methods/seeds.py`):

    mm-adapter table runs/methods/*-test --problems ../shared/data/scienceqa/problems.json --bootstrap 1000 \\
        --mcnemar-against llama-adapter --costs --plot runs/methods/table.png --json runs/methods/table.json \\
        --cost-plot runs/methods/costs.png

The parts: the methods and their grids (``grid``), the search as it stands in OUT (``lr_search``), training and
testing each run (``runs``), the tables written to OUT (``reports``), the flags and the order of the work (``cli``),
the records kept of OUT (``records``).
"""
