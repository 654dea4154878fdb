"""Evaluation: run suites of cases through the gateway, score the answers, keep the results in
the ledger database, report them, and turn them into a route.

suite.py      suite files (a YAML header, then JSONL cases) -> validated Suite
scorers.py    score one answer against one case (reusing hedge.validators)
stats.py      Wilson intervals, exact McNemar, percentiles (pure)
figures.py    per-candidate and per-tag figures, paired comparisons (pure)
store.py      eval_runs and eval_results in the ledger's database (SQLite or PostgreSQL)
targets.py    where requests go: the Gateway in this process, or a running hedge over HTTP
runner.py     cases through a target: concurrency, retries, resume
progress.py   the progress bar
report_text.py, report_html.py   the figures for a terminal and as one self-contained HTML file
recommend.py  the cheapest route per successful outcome that meets an accuracy floor
cli.py        `hedge eval`'s command line (light: imported by every `hedge` command)
commands.py   what each `hedge eval` form does
suites/       the built-in suites (data)
"""
