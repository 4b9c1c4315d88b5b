"""Benchmarks and leaderboards.

- :mod:`dmarl.bench.spec`: benchmark gin files -> cells (algorithm x task/dataset x seed).
- :mod:`dmarl.bench.sweep`: run the cells as nested MLflow runs (local process pool or Ray).
- :mod:`dmarl.bench.stats`: IQM, bootstrap intervals, normalisation, probability of
  improvement, sample efficiency.
- :mod:`dmarl.bench.references`: fixed reference scores and papers' reported numbers.
- :mod:`dmarl.bench.leaderboard`: MLflow experiment -> markdown, CSV, HTML, plots, marl-eval JSON.
"""
