"""The report: figures (matplotlib, PNG) and one self-contained, offline HTML page."""
