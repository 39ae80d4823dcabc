"""python -m mindllm.eval RUN [RUN ...]: a report card for any course run, each number beside its baselines.

    lm.py       loss, perplexity and bits per byte on the run's held-out batches (every task; per byte for
                language models)
    cloze.py    the multiple-choice items, built from the held-out part of a language model's own corpus
    choice.py   scoring options by the model's log-likelihood (MMLU/HellaSwag style: acc and acc_norm)
    card.py     one run: trained and untrained model through every part, the results as one dict
    report.py   eval.md / eval.json and the side-by-side table of several runs
    __main__.py the command line

What a task's own final test reports (accuracy, BLEU, word F1, ...) is named by its task module (HEADLINE in
mindllm/tasks/*.py), so nothing here knows any architecture or task by name.
"""
PARTS = ("perplexity", "cloze", "task")
