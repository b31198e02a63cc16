"""The report: report.json's document and its console rendering."""
