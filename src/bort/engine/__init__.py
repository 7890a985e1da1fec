"""The one training engine and the objectives it trains; it knows nothing of corpora, tasks or the search."""
