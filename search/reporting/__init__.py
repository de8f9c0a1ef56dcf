"""The parts of search/report.py: reading runs, tables, importances, rendering."""
